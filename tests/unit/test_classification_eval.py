"""`eval --good`: pass/fail metrics on class folders, scored by the daemon's Inspector."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.evaluation.classification import ClassifiedPart, classification_metrics
from edge.evaluation.classification_runner import evaluate_classes, list_class_images
from edge.parts import Verdict
from edge.preprocess.polar import UnwrapSpec
from edge.preprocess.ring import Ring, RingSearch
from edge.preprocess.tiling import TileSpec
from tests.fixtures import make_tile_classifier_package

FRAME_PX = 200
RING = Ring(centre_x=100.0, centre_y=100.0, inner_radius_px=40.0, outer_radius_px=80.0)
SECTION = {
    "search": RingSearch(fixed=RING).to_dict(),
    "unwrap": UnwrapSpec(radial_px=16, angular_px=128).to_dict(),
    "tiles": TileSpec(16, 16, 16).to_dict(),
}

# Uniform grey levels: the tile probability of the test package is (level + 0.5) / 256, and the
# threshold 0.5 fails levels of 128 and above. The 120 px frame cannot hold the fixed ring.
GOOD_LEVELS = {"000": 20, "001": 40, "002": 200}
DEFECT_LEVELS = {"dent": {"000": 250, "001": 100}, "scratch": {"000": 230}}
SMALL_FRAME = ("scratch", "001")


def write_classes(root: Path) -> Path:
    for class_name, levels in {"good": GOOD_LEVELS, **DEFECT_LEVELS}.items():
        (root / class_name).mkdir(parents=True)
        for stem, level in levels.items():
            cv2.imwrite(str(root / class_name / f"{stem}.png"), np.full((FRAME_PX, FRAME_PX, 3), level, np.uint8))
    class_name, stem = SMALL_FRAME
    cv2.imwrite(str(root / class_name / f"{stem}.png"), np.full((120, 120, 3), 0, np.uint8))
    return root


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return make_tile_classifier_package(tmp_path / "model", ring=SECTION, threshold=0.5)


def test_metrics_hand_computed(package, tmp_path):
    data = write_classes(tmp_path / "data")

    metrics = evaluate_classes(package, data, tmp_path / "out", "good")

    # Good: 20 and 40 pass, 200 fails. Defective: 250 and 230 fail, 100 passes, the small frame is rejected.
    assert metrics["confusion_matrix"] == [[2, 1], [1, 3]]
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["precision"] == pytest.approx(3 / 4)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["f1"] == pytest.approx(3 / 4)
    assert metrics["escape_rate"] == pytest.approx(1 / 4)
    assert metrics["false_reject_rate"] == pytest.approx(1 / 3)
    # 11 of the 12 good/defective pairs are ordered right; the rejected part ranks above all.
    assert metrics["roc_auc"] == pytest.approx(11 / 12)
    assert metrics["ring_not_found"] == 1
    assert metrics["counts"] == {"images": 7, "good": 3, "defective": 4}


def test_per_class_hand_computed(package, tmp_path):
    data = write_classes(tmp_path / "data")

    per_class = evaluate_classes(package, data, tmp_path / "out", "good")["per_class"]

    assert per_class["good"]["count"] == 3
    assert per_class["good"]["false_reject_rate"] == pytest.approx(1 / 3)
    assert per_class["dent"]["recall"] == pytest.approx(0.5)
    assert per_class["dent"]["escape_rate"] == pytest.approx(0.5)
    assert per_class["dent"]["roc_auc"] == pytest.approx(5 / 6)
    assert per_class["dent"]["mean_image_score"] == pytest.approx((250.5 + 100.5) / 2 / 256, abs=1e-5)
    assert per_class["scratch"]["recall"] == pytest.approx(1.0)
    assert per_class["scratch"]["ring_not_found"] == 1
    assert per_class["scratch"]["roc_auc"] == pytest.approx(1.0)
    assert per_class["scratch"]["mean_image_score"] == pytest.approx(230.5 / 256, abs=1e-5)


def test_outputs_written(package, tmp_path):
    data = write_classes(tmp_path / "data")
    out = tmp_path / "out"

    evaluate_classes(package, data, out, "good", overlays_per_class=1)

    written = json.loads((out / "metrics.json").read_text())
    assert written["good_class"] == "good"
    assert (out / "roc.png").is_file()
    overlays = sorted(path.name for path in (out / "overlays").glob("*.png"))
    assert overlays == ["dent_000.png", "good_000.png", "scratch_000.png"]


def test_overlay_draws_ring(package, tmp_path):
    data = write_classes(tmp_path / "data")
    out = tmp_path / "out"

    evaluate_classes(package, data, out, "good")

    overlay = cv2.imread(str(out / "overlays" / "good_000.png"))
    # The 200 px frame is enlarged twice for the caption; the outer circle passes through x = 180.
    assert overlay.shape[:2] == (400, 400)
    blue, green, red = (int(value) for value in overlay[200, 361])
    assert green > 150
    assert red < 100
    assert (out / "overlays" / "scratch_001.png").is_file()


def test_metrics_without_rejects():
    parts = [
        ClassifiedPart("ok", False, 0.1, Verdict.PASS),
        ClassifiedPart("ok", False, 0.7, Verdict.FAIL),
        ClassifiedPart("bad", True, 0.9, Verdict.FAIL),
        ClassifiedPart("bad", True, 0.3, Verdict.PASS),
    ]

    metrics = classification_metrics(parts)

    assert metrics["confusion_matrix"] == [[1, 1], [1, 1]]
    assert metrics["roc_auc"] == pytest.approx(3 / 4)
    assert metrics["ring_not_found"] == 0


def test_missing_good_folder_named(tmp_path):
    data = write_classes(tmp_path / "data")

    with pytest.raises(ValueError, match="good class folder .*ok_front is missing"):
        list_class_images(data, "ok_front")


def test_no_defect_folder_rejected(tmp_path):
    (tmp_path / "data" / "good").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "data" / "good" / "a.png"), np.zeros((8, 8, 3), np.uint8))

    with pytest.raises(ValueError, match="no defective class folder"):
        list_class_images(tmp_path / "data", "good")


def test_empty_class_folder_rejected(tmp_path):
    data = write_classes(tmp_path / "data")
    (data / "crack").mkdir()

    with pytest.raises(ValueError, match="crack has no images"):
        list_class_images(data, "good")


def test_cli_eval_good(package, tmp_path, capsys):
    data = write_classes(tmp_path / "data")
    out = tmp_path / "out"

    code = main(["eval", "--model", str(package), "--data", str(data), "--good", "good", "--out", str(out)])

    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["confusion_matrix"] == [[2, 1], [1, 3]]
    assert (out / "metrics.json").is_file()


def test_cli_eval_unknown_good(package, tmp_path, capsys):
    data = write_classes(tmp_path / "data")

    code = main(["eval", "--model", str(package), "--data", str(data), "--good", "ok", "--out", str(tmp_path / "out")])

    assert code == 2
    assert "--good" in capsys.readouterr().err
