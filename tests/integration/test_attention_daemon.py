"""The daemon and the class-folder evaluation running an attention package with windows, over real sockets and files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.acquisition.factory import create_source
from edge.cli import main
from edge.config import validate_config
from edge.evaluation.localisation import score_localisation
from edge.inspector import Inspector
from edge.pipeline import build_pipeline
from tests.fixtures import make_attention_package
from tests.integration.subscriber import Collector, free_tcp_endpoint, run_folder

FRAME_HEIGHT_PX, FRAME_WIDTH_PX = 96, 128


def probability_of(grey_level: float) -> float:
    """The fixture's window probability for a window whose brightest grey level is `grey_level`."""
    return 1.0 / (1.0 + math.exp(-(grey_level - 127.5) / 128.0))


def textured_frame(seed: int, spot_xy: tuple[int, int] | None, level: int = 255, background: int | None = None) -> np.ndarray:
    """A frame of dark noise (grey 0 to 100), or a flat `background`, with an optional 5x5 px spot at (x, y)."""
    if background is None:
        grey = np.random.default_rng(seed).integers(0, 101, (FRAME_HEIGHT_PX, FRAME_WIDTH_PX), dtype=np.uint8)
    else:
        grey = np.full((FRAME_HEIGHT_PX, FRAME_WIDTH_PX), background, np.uint8)
    frame = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if spot_xy is not None:
        x, y = spot_xy
        frame[y : y + 5, x : x + 5] = level
    return frame


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return make_attention_package(tmp_path / "model", window_px=32, stride_px=16, threshold=0.5)


def test_daemon_verdicts_and_regions(package, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    spots = {"a_defect.png": (17, 70), "b_good.png": None, "c_defect.png": (100, 8), "d_good.png": None}
    for index, (name, spot_xy) in enumerate(spots.items()):
        cv2.imwrite(str(folder / name), textured_frame(index, spot_xy))

    summary, collector = run_folder(package, folder, len(spots))

    by_ref = {header["source_ref"]: (header, anomaly_map) for header, anomaly_map in zip(collector.results, collector.maps)}
    assert set(by_ref) == set(spots)
    for name, spot_xy in spots.items():
        header, anomaly_map = by_ref[name]
        assert header["map_frame_xywh"] == [0, 0, FRAME_WIDTH_PX, FRAME_HEIGHT_PX], name
        assert anomaly_map.shape == (FRAME_HEIGHT_PX, FRAME_WIDTH_PX), name
        if spot_xy is None:
            assert header["verdict"] == "PASS", name
            assert header["regions"] == [], name
            continue
        assert header["verdict"] == "FAIL", name
        assert header["image_score"] == pytest.approx(probability_of(255), abs=1e-4), name
        region = header["regions"][0]
        x, y = spot_xy
        assert abs(region["peak_xy"][0] - (x + 2)) <= 3, name
        assert abs(region["peak_xy"][1] - (y + 2)) <= 3, name
        assert region["bbox_xywh"] == [x, y, 5, 5], name
        assert "peak_angle_deg" not in region, name
        peak_y, peak_x = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
        assert x <= peak_x < x + 5, name
        assert y <= peak_y < y + 5, name
    assert summary["rejected_by_reason"]["preprocess_error"] == 0


def test_daemon_rejects_frame_below_window(package, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_large.png"), textured_frame(0, (40, 40)))
    cv2.imwrite(str(folder / "b_small.png"), np.zeros((24, 64, 3), np.uint8))

    summary, collector = run_folder(package, folder, 2)

    by_ref = {header["source_ref"]: header for header in collector.results}
    small = by_ref["b_small.png"]
    assert small["verdict"] == "REJECT"
    assert small["reason"] == "preprocess_error"
    assert "64x24 px" in small["detail"]
    assert "larger ROI" in small["detail"]
    assert by_ref["a_large.png"]["verdict"] == "FAIL"
    assert summary["rejected_by_reason"]["preprocess_error"] == 1


def test_daemon_with_roi(package, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "spot.png"), textured_frame(3, (70, 50)))
    endpoint = free_tcp_endpoint()
    config = validate_config({
        "model": {"path": str(package)},
        "source": {"kind": "folder", "path": str(folder)},
        "preprocess": {"roi": {"x": 40, "y": 20, "width": 64, "height": 48}},
        "publish": {"endpoint": endpoint, "subscriber_grace_ms": 300, "map_encoding": "float16"},
    })

    with Collector(endpoint) as collector:
        build_pipeline(config, create_source(config.source)).run()
        assert collector.wait_for_results(1, timeout_s=10)

    header, anomaly_map = collector.results[0], collector.maps[0]
    assert header["verdict"] == "FAIL"
    assert header["map_frame_xywh"] == [40, 20, 64, 48]
    assert anomaly_map.shape == (48, 64)
    assert header["regions"][0]["bbox_xywh"] == [70, 50, 5, 5]


# Flat backgrounds make every figure predictable: a 255 spot fails (0.73), a 110 spot passes (0.47).
EVAL_IMAGES = {
    "ok/000.png": (None, 255),
    "ok/001.png": (None, 255),
    "defect/a.png": ((40, 30), 255),
    "defect/b.png": ((90, 60), 255),
    "defect/c.png": ((60, 40), 110),
}
EVAL_BOXES = {
    "defect/a.png": [[38, 28, 47, 37]],
    # Drawn away from the spot, so the pointing game misses.
    "defect/b.png": [[0, 0, 20, 20]],
    "defect/c.png": [[58, 38, 67, 47]],
}


def write_eval_set(root: Path, boxes: dict) -> tuple[Path, Path]:
    for key, (spot_xy, level) in EVAL_IMAGES.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / key), textured_frame(0, spot_xy, level=level, background=40))
    boxes_path = root / "boxes.json"
    boxes_path.write_text(json.dumps({"format": "xyxy, frame pixels, half-open", "windows": boxes}), encoding="utf-8")
    return root, boxes_path


def test_eval_boxes_end_to_end(package, tmp_path, capsys):
    data, boxes_path = write_eval_set(tmp_path / "data", EVAL_BOXES)
    out = tmp_path / "out"

    code = main(["eval", "--model", str(package), "--data", str(data), "--good", "ok",
                 "--boxes", str(boxes_path), "--out", str(out)])

    captured = capsys.readouterr()
    assert code == 0
    printed = json.loads(captured.out)
    written = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    localisation = written["localisation"]
    assert printed["localisation"] == {key: value for key, value in localisation.items() if key != "per_image"}
    assert written["confusion_matrix"] == [[2, 0], [1, 2]]

    # a: hit; b: the box misses the spot; c passes, and its flat maximum starts at window (16, 32), outside the box.
    assert localisation["images_with_boxes"] == 3
    assert localisation["pointing_game_hits"] == 1
    assert localisation["pointing_game_rate"] == pytest.approx(1 / 3)
    assert localisation["images_without_map"] == 0
    detected = localisation["detected"]
    assert detected["images_with_boxes"] == 2
    assert detected["pointing_game_hits"] == 1
    assert detected["pointing_game_rate"] == pytest.approx(0.5)

    inspector = Inspector.from_path(package)
    masses, maps = {}, {}
    for key, boxes in EVAL_BOXES.items():
        inspection = inspector.inspect(cv2.imread(str(data / key)))
        maps[key] = inspection.anomaly_map
        masses[key] = score_localisation(inspection.anomaly_map, inspection.map_frame_xywh, [tuple(box) for box in boxes]).mass_in_boxes
    per_image = {entry["image"]: entry for entry in localisation["per_image"]}
    assert set(per_image) == set(EVAL_BOXES)
    for key, mass in masses.items():
        assert per_image[key]["mass_in_boxes"] == pytest.approx(mass, abs=1e-9), key
    assert per_image["defect/a.png"]["pointing_game_hit"] is True
    assert per_image["defect/c.png"]["verdict"] == "PASS"
    # Every window that covers a's box contains the spot, so the box contains only the 25 spot pixels' mass.
    assert masses["defect/a.png"] == pytest.approx(25 * probability_of(255) / float(maps["defect/a.png"].sum()), rel=1e-5)
    assert localisation["mean_mass_in_boxes"] == pytest.approx(sum(masses.values()) / 3)
    assert localisation["median_mass_in_boxes"] == pytest.approx(sorted(masses.values())[1])
    assert detected["mean_mass_in_boxes"] == pytest.approx((masses["defect/a.png"] + masses["defect/b.png"]) / 2)

    assert "pointing game 1/3 (0.333)" in captured.err
    assert "on failed images: pointing game 1/2 (0.500)" in captured.err
    assert (out / "overlays" / "defect_a.png").is_file()


def test_eval_boxes_need_good(package, tmp_path, capsys):
    data, boxes_path = write_eval_set(tmp_path / "data", EVAL_BOXES)

    code = main(["eval", "--model", str(package), "--data", str(data), "--boxes", str(boxes_path),
                 "--out", str(tmp_path / "out")])

    assert code == 2
    assert "--boxes applies to class folders only; add --good" in capsys.readouterr().err


def test_eval_boxes_unknown_key(package, tmp_path, capsys):
    data, boxes_path = write_eval_set(tmp_path / "data", {**EVAL_BOXES, "defect/missing.png": [[0, 0, 4, 4]]})

    code = main(["eval", "--model", str(package), "--data", str(data), "--good", "ok",
                 "--boxes", str(boxes_path), "--out", str(tmp_path / "out")])

    assert code == 2
    error = capsys.readouterr().err
    assert "'defect/missing.png' names no image" in error
    assert "Fix the key or remove it" in error


def test_eval_boxes_bad_box(package, tmp_path, capsys):
    data, boxes_path = write_eval_set(tmp_path / "data", {"defect/a.png": [[10, 10, 5, 20]]})

    code = main(["eval", "--model", str(package), "--data", str(data), "--good", "ok",
                 "--boxes", str(boxes_path), "--out", str(tmp_path / "out")])

    assert code == 2
    error = capsys.readouterr().err
    assert "'defect/a.png' has the empty box" in error


def test_eval_box_outside_image(package, tmp_path, capsys):
    data, boxes_path = write_eval_set(tmp_path / "data", {"defect/a.png": [[200, 10, 210, 20]]})

    code = main(["eval", "--model", str(package), "--data", str(data), "--good", "ok",
                 "--boxes", str(boxes_path), "--out", str(tmp_path / "out")])

    assert code == 2
    assert "outside its 128x96 px image" in capsys.readouterr().err


def test_failed_eval_keeps_previous_report(package, tmp_path, capsys):
    data, boxes_path = write_eval_set(tmp_path / "data", EVAL_BOXES)
    out = tmp_path / "out"
    arguments = ["eval", "--model", str(package), "--data", str(data), "--good", "ok", "--out", str(out)]
    assert main([*arguments, "--boxes", str(boxes_path)]) == 0
    overlays = sorted(path.name for path in (out / "overlays").iterdir())
    metrics = (out / "metrics.json").read_bytes()

    _, bad_boxes = write_eval_set(tmp_path / "bad", {"defect/a.png": [[200, 10, 210, 20]]})
    assert main([*arguments, "--boxes", str(bad_boxes)]) == 2

    assert sorted(path.name for path in (out / "overlays").iterdir()) == overlays
    assert (out / "metrics.json").read_bytes() == metrics
    assert not (out / ".overlays.partial").exists()


def test_eval_small_image_named(package, tmp_path, capsys):
    data, _ = write_eval_set(tmp_path / "data", {})
    cv2.imwrite(str(data / "defect" / "tiny.png"), np.zeros((16, 16, 3), np.uint8))

    code = main(["eval", "--model", str(package), "--data", str(data), "--good", "ok", "--out", str(tmp_path / "out")])

    assert code == 2
    error = capsys.readouterr().err
    assert "tiny.png cannot be preprocessed" in error
    assert "larger ROI" in error
