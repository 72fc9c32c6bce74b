"""edge-export tiles end to end on rendered washers: split, train, calibrate, export, package."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnxruntime as ort  # noqa: E402

from benchmarks.impeller_tiles import evaluate_package  # noqa: E402
from edge.acquisition.synthetic import write_synthetic_dataset  # noqa: E402
from edge.inference.package import load_package  # noqa: E402
from edge.preprocess.transform import PreprocessSpec, Preprocessor  # noqa: E402
from export.cli import main as export_main  # noqa: E402
from export.images import read_image  # noqa: E402
from export.tile_augment import cam_guided_crop, shifted_tile  # noqa: E402
from export.tile_data import Part, TileLayout, normalised_batch  # noqa: E402
from export.tile_export import calibrate_threshold  # noqa: E402
from export.tile_nets import SqueezeNet11, TileClassifierGraph, build_tile_classifier  # noqa: E402
from export.tile_training import TileSamples, dilate_labels, expand_minority  # noqa: E402

TILE_PX = 32


@pytest.fixture(scope="module")
def washers(tmp_path_factory) -> Path:
    """Class folders good/ (10 parts) and chip/, pit/, scratch/, stain/ (5 parts each) of 128 px washers."""
    root = tmp_path_factory.mktemp("rendered")
    rendered = write_synthetic_dataset(root / "data", good_train=0, good_test=10, defective_per_kind=5, size_px=128)
    return rendered / "test"


def _export(arguments: list[str]) -> tuple[int, dict | None]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = export_main(["tiles", *arguments])
    return code, json.loads(stdout.getvalue()) if code == 0 else None


@pytest.fixture(scope="module")
def full(washers, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("model") / "washer_tiles"
    code, summary = _export([
        "--data", str(washers), "--out", str(out), "--tile-size", str(TILE_PX), "--epochs", "2",
        "--threads", "2", "--no-progress", "--model-version", "3",
    ])
    assert code == 0
    return out, summary


@pytest.fixture(scope="module")
def plain(washers, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("model") / "washer_plain"
    code, summary = _export([
        "--data", str(washers), "--out", str(out), "--tile-size", str(TILE_PX), "--epochs", "1", "--plain",
        "--no-unwrap", "--arch", "squeezenet1_1", "--threads", "2", "--no-progress",
    ])
    assert code == 0
    return out, summary


def test_description_follows_contract(full):
    out, _ = full
    description = json.loads((out / "model.json").read_text())
    assert description["kind"] == "tile_classifier"
    assert description["version"] == "3"
    assert description["preprocess"]["input_size"] == [TILE_PX, TILE_PX]
    assert description["preprocess"]["color_order"] == "RGB"
    assert description["preprocess"]["normalization"] == "tf"

    ring = description["ring"]
    assert ring["search"] is not None
    assert ring["unwrap"]["radial_px"] == TILE_PX
    assert ring["unwrap"]["angular_px"] % (TILE_PX // 2) == 0
    assert ring["tiles"] == {"tile_height_px": TILE_PX, "tile_width_px": TILE_PX, "stride_px": TILE_PX // 2}

    thresholds = description["thresholds"]
    assert thresholds["image"]["value"] == thresholds["pixel"]["value"]
    assert thresholds["image"]["method"] == thresholds["pixel"]["method"]
    assert description["onnx"]["opset"] == 17
    assert description["onnx"]["outputs"] == ["defect_probability", "cam"]
    assert description["onnx"]["export_parity"]["max_probability_error"] <= 1e-4


def test_package_loads(full):
    out, _ = full
    package = load_package(out)
    assert package.kind == "tile_classifier"
    assert package.sha256 == json.loads((out / "model.json").read_text())["onnx"]["sha256"]


def test_summary_reports_split_and_training(full):
    _, summary = full
    assert summary["method"] == "sdd-cnn"
    assert summary["images"] == {"chip": 5, "good": 10, "pit": 5, "scratch": 5, "stain": 5}
    assert summary["split"] == {"train": 18, "validation": 6, "test": 6}
    assert summary["skipped_images"] == 0
    training = summary["training"]
    assert training["coarse_epochs"] >= 1
    assert 1 <= training["epochs_to_converge"] <= training["epochs_run"] <= 2
    assert training["tiles"]["good"] == training["tiles"]["defect"]
    for split in ("validation", "test"):
        assert 0.0 <= summary[split]["accuracy"] <= 1.0
        assert set(summary[split]) >= {"escape_rate", "false_reject_rate", "confusion_matrix"}


def test_calibration_passes_no_validation_defect(full):
    _, summary = full
    assert summary["validation"]["escape_rate"] == 0.0


def test_onnx_dynamic_tile_batch(full, washers):
    out, _ = full
    description = json.loads((out / "model.json").read_text())
    spec = PreprocessSpec.from_dict(description["preprocess"])
    layout = TileLayout.from_ring_section(description["ring"], TILE_PX)
    tiles, strip, origins = layout.cut(read_image(sorted((washers / "chip").glob("*.png"))[0]))
    assert strip.shape[0] == TILE_PX
    assert len(origins) == len(tiles) == strip.shape[1] // (TILE_PX // 2)

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    for count in (1, len(tiles)):
        probability, cam = session.run(None, {"tiles": normalised_batch(tiles[:count], Preprocessor(spec)).numpy()})
        assert probability.shape == (count,)
        assert cam.shape == (count, TILE_PX // 16, TILE_PX // 16)
        assert np.all((probability >= 0) & (probability <= 1))
        assert np.all(cam >= 0)


def test_tiles_match_daemon_preprocessing(full, washers):
    ring_input = pytest.importorskip("edge.preprocess.ring_input")
    out, _ = full
    description = json.loads((out / "model.json").read_text())
    spec = PreprocessSpec.from_dict(description["preprocess"])
    image = read_image(sorted((washers / "pit").glob("*.png"))[0])

    daemon = ring_input.RingPreprocessor(ring_input.RingSection.from_dict(description["ring"]), spec)(image)
    tiles, _, origins = TileLayout.from_ring_section(description["ring"], TILE_PX).cut(image)
    assert daemon.tile_origins == origins
    np.testing.assert_array_equal(daemon.tensor, normalised_batch(tiles, Preprocessor(spec)).numpy())


def test_plain_whole_frame_package(plain):
    out, summary = plain
    description = json.loads((out / "model.json").read_text())
    assert description["ring"] == {"search": None, "unwrap": None, "tiles": None}
    assert description["network"]["arch"] == "squeezenet1_1"
    assert description["preprocess"]["normalization"] == "imagenet"
    assert summary["method"] == "plain"
    assert summary["tiles_per_part"] == 1
    assert summary["training"]["coarse_epochs"] == 0


def test_existing_package_needs_force(full, washers, capsys):
    out, _ = full
    code = export_main(["tiles", "--data", str(washers), "--out", str(out), "--no-progress"])
    assert code == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "is missing"),
        ("no_good", "is missing (class folders: chip)"),
        ("no_defect", "no defective class folder"),
        ("few_images", "too few for a 3:1:1"),
    ],
)
def test_data_errors_name_fix(layout, message, washers, tmp_path, capsys):
    data = tmp_path / "data"
    if layout != "missing":
        data.mkdir()
    if layout in ("no_defect", "few_images"):
        shutil.copytree(washers / "good", data / "good")
    if layout in ("no_good", "few_images"):
        (data / "chip").mkdir()
        for path in sorted((washers / "chip").glob("*.png"))[:3]:
            shutil.copy(path, data / "chip" / path.name)

    code = export_main(["tiles", "--data", str(data), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert message in capsys.readouterr().err


def test_threshold_passes_no_defect():
    scores = np.array([0.1, 0.3, 0.6, 0.5, 0.9])
    labels = np.array([0, 0, 0, 1, 1])
    threshold = calibrate_threshold(scores, labels)
    assert threshold == pytest.approx(0.4)
    assert np.all(scores[labels == 1] >= threshold)


def test_threshold_without_good_below():
    assert calibrate_threshold(np.array([0.8, 0.2]), np.array([0, 1])) == pytest.approx(0.2)


def test_dilation_keeps_top_tile():
    tiles = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    parts = [Part(Path("good.png"), "good", 0, tiles), Part(Path("chip.png"), "chip", 1, tiles)]
    dilation = dilate_labels(parts, [np.full(4, 0.9), np.array([0.1, 0.4, 0.2, 0.3])])
    assert dilation.counts() == {"good_tiles": 4, "defect_tiles": 1, "dropped_defect_part_tiles": 3}
    assert dilation.sources[-1] == (1, 1)
    assert list(dilation.flat_index) == [0, 1, 2, 3, 5]


def test_expansion_balances_classes():
    rng = np.random.default_rng(0)
    strip = rng.integers(0, 255, (8, 32, 3), dtype=np.uint8)
    tiles = np.stack([strip[:, :8]] * 5)
    samples = TileSamples(tiles, np.array([0, 0, 0, 0, 1]))
    part = Part(Path("chip.png"), "chip", 1, tiles[:1], strip, [(0, 0)])
    expanded = expand_minority(samples, [(0, 0)] * 5, [part], rng)
    assert expanded.count(0) == expanded.count(1) == 4


def test_shift_wraps_at_seam():
    strip = np.arange(10, dtype=np.uint8)[np.newaxis, :, np.newaxis].repeat(2, axis=0)
    shifted = shifted_tile(strip, (0, 8), strip[:, 8:10], 1)
    assert shifted[0, :, 0].tolist() == [9, 0]


def test_crop_follows_activation():
    rng = np.random.default_rng(0)
    tile = np.zeros((32, 32, 3), dtype=np.uint8)
    tile[:16, :16] = 255
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[0, 0] = 1.0
    crop = cam_guided_crop(tile, cam, rng)
    assert crop.shape == tile.shape
    assert crop[0, 0, 0] == 255


def test_squeezenet_torchvision_keys():
    keys = set(SqueezeNet11().state_dict())
    assert {"features.0.weight", "features.3.squeeze.weight", "features.12.expand3x3.bias",
            "classifier.1.weight"} <= keys
    assert len(keys) == 52


def test_squeezenet_weights_load(tmp_path):
    path = tmp_path / "squeezenet1_1.pth"
    reference = SqueezeNet11()
    torch.save(reference.state_dict(), path)
    classifier = build_tile_classifier("squeezenet1_1", path)
    torch.testing.assert_close(classifier.body[0].weight, reference.features[0].weight)
    assert not classifier.body[0].weight.requires_grad


# SqueezeNet's unpadded convolutions and pools shrink a 64 px tile to 3x3, not 64 / 16.
@pytest.mark.parametrize(("arch", "cam_px"), [("squeezenet1_1", 3), ("resnet18", 4)])
def test_scratch_network_cam_shape(arch, cam_px):
    graph = TileClassifierGraph(build_tile_classifier(arch)).eval()
    with torch.no_grad():
        probability, cam = graph(torch.zeros(3, 3, 64, 64))
    assert probability.shape == (3,)
    assert cam.shape == (3, cam_px, cam_px)


@pytest.mark.real_data
@pytest.mark.slow
# Training takes about 5 minutes on two free cores; the limit leaves room for a busy machine.
@pytest.mark.timeout(2400)
def test_impeller_train_set(real_data, tmp_path):
    train = real_data / "casting_impeller" / "train"
    if not train.is_dir():
        pytest.skip(f"{train} is missing")
    code, summary = _export([
        "--data", str(train), "--out", str(tmp_path / "impeller"), "--good", "ok_front", "--threads", "2",
        "--no-progress",
    ])
    assert code == 0
    assert summary["split"] == {"train": 300, "validation": 100, "test": 100}
    assert summary["skipped_images"] == 0
    assert summary["test"]["accuracy"] >= 0.95
    assert summary["test"]["escape_rate"] <= 0.05

    # The acceptance targets on the separate test/ folder of 262 good and 453 defective parts.
    evaluation = evaluate_package(tmp_path / "impeller", real_data / "casting_impeller" / "test", threads=2)
    assert evaluation["parts"] == 715
    assert evaluation["accuracy"] >= 0.99
    assert evaluation["escape_rate"] <= 0.005
