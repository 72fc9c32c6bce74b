"""edge-export padim end to end on rendered parts: fit, export, check, calibrate, package."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from edge.acquisition.synthetic import write_synthetic_dataset  # noqa: E402
from edge.inference.package import load_package  # noqa: E402
from edge.inspector import Inspector  # noqa: E402
from export.cli import main as export_main  # noqa: E402


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("rendered")
    return write_synthetic_dataset(root / "data", good_train=24, good_test=4, defective_per_kind=3, size_px=128)


@pytest.fixture(scope="module")
def package(rendered, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "washer"
    code = export_main([
        "padim", "--train", str(rendered / "train" / "good"), "--out", str(out), "--image-size", "64",
        "--channels", "40", "--calibration-fraction", "0.25", "--no-progress", "--model-version", "7",
    ])
    assert code == 0
    return out


def test_description_records_choices(package):
    description = json.loads((package / "model.json").read_text())
    assert description["kind"] == "padim"
    assert description["version"] == "7"
    assert description["preprocess"]["input_size"] == [64, 64]
    assert description["preprocess"]["normalization"] == "tf"
    assert description["backbone"]["name"] == "efficientnet_lite0"
    assert len(description["padim"]["channel_indices"]) == 40
    assert description["training"]["image_count"] == 18
    assert description["training"]["calibration_count"] == 6
    assert len(description["training"]["file_list_sha256"]) == 64
    assert description["thresholds"]["image"]["target_false_reject"] == 0.005
    assert "method" in description["thresholds"]["pixel"]
    assert description["onnx"]["opset"] >= 17
    assert description["onnx"]["export_parity"]["max_map_error_of_range"] < 1e-3


def test_rendered_defects_score_higher(package, rendered):
    inspector = Inspector.from_path(package)
    good = [inspector.inspect(_read(path)).image_score for path in sorted((rendered / "test" / "good").glob("*.png"))]
    defective = [inspector.inspect(_read(path)).image_score for path in sorted((rendered / "test").glob("[!g]*/*.png"))]
    assert np.mean(defective) > np.mean(good)


def test_package_checksum_verified(package):
    assert load_package(package).sha256 == json.loads((package / "model.json").read_text())["onnx"]["sha256"]


def test_resnet_without_weights_is_usage_error(rendered, tmp_path, capsys):
    code = export_main(["padim", "--train", str(rendered / "train" / "good"), "--out", str(tmp_path / "m"),
                        "--backbone", "resnet18", "--no-progress"])
    assert code == 2
    assert "--weights" in capsys.readouterr().err


def test_empty_train_folder_is_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = export_main(["padim", "--train", str(tmp_path / "empty"), "--out", str(tmp_path / "m"), "--no-progress"])
    assert code == 2
    assert "no images" in capsys.readouterr().err


def test_bad_false_reject_rate_is_usage_error(rendered, tmp_path, capsys):
    code = export_main(["padim", "--train", str(rendered / "train" / "good"), "--out", str(tmp_path / "m"),
                        "--target-false-reject", "2", "--no-progress"])
    assert code == 2
    assert "--target-false-reject 2" in capsys.readouterr().err


def test_console_script_help_runs():
    result = subprocess.run([sys.executable, "-m", "export.cli", "padim", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--calibration-fraction" in result.stdout


def _read(path):
    import cv2

    return cv2.imread(str(path))


def test_too_few_images_is_usage_error(rendered, tmp_path, capsys):
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted((rendered / "train" / "good").glob("*.png"))[:3]:
        (few / path.name).write_bytes(path.read_bytes())
    code = export_main(["padim", "--train", str(few), "--out", str(tmp_path / "m"), "--no-progress"])
    assert code == 2
    assert "leave fewer than 2 for fitting" in capsys.readouterr().err


def test_model_too_large_for_onnx_is_usage_error(rendered, tmp_path, capsys):
    code = export_main(["padim", "--train", str(rendered / "train" / "good"), "--out", str(tmp_path / "m"),
                        "--image-size", "512", "--channels", "176", "--no-progress"])
    assert code == 2
    assert "lower --channels or --image-size" in capsys.readouterr().err


def test_existing_package_needs_force(package, rendered, capsys):
    code = export_main(["padim", "--train", str(rendered / "train" / "good"), "--out", str(package), "--no-progress"])
    assert code == 2
    assert "pass --force to replace it" in capsys.readouterr().err


def test_foreign_folder_never_overwritten(rendered, tmp_path, capsys):
    (tmp_path / "report.docx").write_bytes(b"keep me")
    code = export_main(["padim", "--train", str(rendered / "train" / "good"), "--out", str(tmp_path), "--force",
                        "--no-progress"])
    assert code == 2
    assert "contains no model package" in capsys.readouterr().err
    assert (tmp_path / "report.docx").read_bytes() == b"keep me"


def test_unwrapped_aligned_padim_runs_in_daemon(rendered, tmp_path):
    out = tmp_path / "strips"
    code = export_main([
        "padim", "--train", str(rendered / "train" / "good"), "--out", str(out), "--unwrap", "--align",
        "--strip-size", "32x128", "--channels", "40", "--calibration-fraction", "0.25", "--no-progress",
    ])
    assert code == 0
    description = json.loads((out / "model.json").read_text())
    assert description["preprocess"]["input_size"] == [32, 128]
    assert description["ring"]["unwrap"]["radial_px"] == 32
    assert len(description["ring"]["alignment"]["reference"]) == 16

    inspection = Inspector.from_path(out).inspect(_read(sorted((rendered / "test" / "good").glob("*.png"))[0]))
    assert inspection.anomaly_map.shape == (128, 128)  # drawn back on the frame
    assert inspection.ring is not None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--align"], "add --unwrap"),
        (["--unwrap", "--strip-size", "30x100"], "multiples of 16"),
    ],
)
def test_bad_strip_options_are_usage_errors(rendered, tmp_path, capsys, options, message):
    code = export_main(["padim", "--train", str(rendered / "train" / "good"), "--out", str(tmp_path / "m"),
                        "--no-progress", *options])
    assert code == 2
    assert message in capsys.readouterr().err


def test_strip_size_needs_height_and_width(rendered, tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_main(["padim", "--train", str(rendered / "train" / "good"), "--out", str(tmp_path / "m"),
                     "--unwrap", "--strip-size", "wide"])
    assert "HEIGHTxWIDTH" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--strip-size", "32x128"], "add --unwrap or remove it"),
        (["--unwrap", "--image-size", "128"], "set the model input with --strip-size"),
        (["--unwrap", "--roi", "0,0,50,50"], "does not apply with --unwrap"),
        (["--ring-radius", "0.3,0.5"], "add --unwrap"),
        (["--unwrap", "--ring-radius", "0.6,0.5"], "ring"),
    ],
)
def test_options_that_do_not_combine(rendered, tmp_path, capsys, options, message):
    code = export_main(["padim", "--train", str(rendered / "train" / "good"), "--out", str(tmp_path / "m"),
                        "--no-progress", *options])
    assert code == 2
    assert message in capsys.readouterr().err


def test_ring_search_options_reach_the_package(rendered, tmp_path):
    out = tmp_path / "strips"
    code = export_main([
        "padim", "--train", str(rendered / "train" / "good"), "--out", str(out), "--unwrap", "--strip-size", "32x128",
        "--ring-radius", "0.3,0.5", "--ring-inner", "0.2", "--channels", "40", "--calibration-fraction", "0.25",
        "--no-progress",
    ])
    assert code == 0
    search = json.loads((out / "model.json").read_text())["ring"]["search"]
    assert search["min_outer_radius_fraction"] == 0.3
    assert search["inner_radius_fraction"] == 0.2
