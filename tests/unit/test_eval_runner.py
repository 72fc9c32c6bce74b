from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.evaluation.report import REPORT_HEIGHT_PX, REPORT_WIDTH_PX, render_roc_report, write_roc_report
from edge.evaluation.runner import evaluate, list_test_images
from edge.preprocess.transform import Roi

SIZE_PX = 64
SQUARE_PX = 12
BRIGHT = 240
# Below the brightness model's thresholds (score about -0.13 against 0.5) but brighter than good parts.
FAINT = 110


def _dark_image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(15, 26, (SIZE_PX, SIZE_PX, 3), dtype=np.uint8)


def _write_defect(root: Path, defect: str, stem: str, value: int, x: int, y: int, rng: np.random.Generator, mask: bool = True) -> None:
    image = _dark_image(rng)
    image[y : y + SQUARE_PX, x : x + SQUARE_PX] = value
    (root / "test" / defect).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "test" / defect / f"{stem}.png"), image)
    if mask:
        mask_image = np.zeros((SIZE_PX, SIZE_PX), dtype=np.uint8)
        mask_image[y : y + SQUARE_PX, x : x + SQUARE_PX] = 255
        (root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "ground_truth" / defect / f"{stem}_mask.png"), mask_image)


def _write_dataset(root: Path, x_range: tuple[int, int] = (2, 50)) -> Path:
    """Six dark good images, four bright-square defects (one without mask) and three faint ones.

    Squares start on even pixels, so the 2x area downscale to the 32x32 model keeps them exact.
    """
    rng = np.random.default_rng(0)
    (root / "test" / "good").mkdir(parents=True)
    for index in range(6):
        cv2.imwrite(str(root / "test" / "good" / f"{index:03d}.png"), _dark_image(rng))

    for index in range(4):
        x, y = (int(value) * 2 for value in rng.integers(x_range[0] // 2, x_range[1] // 2, 2))
        _write_defect(root, "spot", f"{index:03d}", BRIGHT, x, y, rng, mask=index != 3)
    for index in range(3):
        x, y = (int(value) * 2 for value in rng.integers(x_range[0] // 2, x_range[1] // 2, 2))
        _write_defect(root, "faint", f"{index:03d}", FAINT, x, y, rng)
    return root


def test_evaluate_end_to_end(tmp_path: Path, brightness_package: Path, capsys: pytest.CaptureFixture[str]):
    data_dir = _write_dataset(tmp_path / "data")
    out_dir = tmp_path / "out"

    metrics = evaluate(brightness_package, data_dir, out_dir, worst_count=2)

    assert metrics["image_auroc"] == 1.0
    assert metrics["pixel_auroc"] == pytest.approx(1.0)
    assert metrics["pro"] == pytest.approx(1.0)
    assert metrics["confusion_matrix"] == [[6, 0], [3, 4]]
    assert metrics["escape_rate"] == pytest.approx(3 / 7)
    assert metrics["false_reject_rate"] == 0.0
    assert metrics["precision"] == 1.0
    assert metrics["recall"] == pytest.approx(4 / 7)
    assert metrics["accuracy"] == pytest.approx(10 / 13)
    assert metrics["image_threshold"] == 0.5
    assert metrics["pixel_threshold"] == 0.5
    assert metrics["model"]["name"] == "brightness"
    assert metrics["anomaly_map_size_px"] == [32, 32]
    assert metrics["counts"] == {"images": 13, "good": 6, "defective": 7, "defective_without_mask": 1}
    assert metrics["mean_inference_ms"] > 0
    assert set(metrics["mean_stage_ms"]) == {"preprocess", "inference", "decision"}

    assert set(metrics["per_class"]) == {"spot", "faint"}
    assert metrics["per_class"]["spot"]["escape_rate"] == 0.0
    assert metrics["per_class"]["spot"]["count"] == 4
    assert metrics["per_class"]["spot"]["without_mask"] == 1
    assert metrics["per_class"]["faint"]["escape_rate"] == 1.0
    assert metrics["per_class"]["faint"]["image_auroc"] == 1.0
    assert metrics["per_class"]["faint"]["pixel_auroc"] == pytest.approx(1.0)

    written = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    assert written == metrics

    roc = cv2.imread(str(out_dir / "roc.png"))
    assert roc.shape == (REPORT_HEIGHT_PX, REPORT_WIDTH_PX, 3)

    overlays = sorted(path.name for path in (out_dir / "worst").iterdir())
    assert len(overlays) == 4
    assert [name for name in overlays if name.startswith("defective_")] == [
        name for name in overlays if name.startswith("defective_") and "_faint_" in name
    ]
    # Images smaller than 256 px are enlarged by a whole factor so the caption stays legible.
    assert cv2.imread(str(out_dir / "worst" / overlays[0])).shape == (256, 256, 3)

    assert "evaluated 13 images" in capsys.readouterr().err


def test_evaluate_crops_masks_to_roi(tmp_path: Path, brightness_package: Path):
    # Squares lie in the right half, and the ROI passes only that half to the model.
    data_dir = _write_dataset(tmp_path / "data", x_range=(34, 50))
    roi = Roi(x=32, y=0, width=32, height=64)

    metrics = evaluate(brightness_package, data_dir, tmp_path / "out", inspector_kwargs={"roi": roi}, worst_count=1)

    assert metrics["image_auroc"] == 1.0
    assert metrics["pixel_auroc"] == pytest.approx(1.0)
    assert metrics["pro"] == pytest.approx(1.0)


def test_evaluate_threshold_override(tmp_path: Path, brightness_package: Path):
    data_dir = _write_dataset(tmp_path / "data")

    metrics = evaluate(brightness_package, data_dir, tmp_path / "out", inspector_kwargs={"image_threshold": -0.5})

    assert metrics["image_threshold"] == -0.5
    assert metrics["escape_rate"] == 0.0
    assert metrics["confusion_matrix"] == [[6, 0], [0, 7]]


def test_evaluate_without_masks_writes_null(tmp_path: Path, brightness_package: Path):
    data_dir = _write_dataset(tmp_path / "data")
    for mask in (data_dir / "ground_truth").rglob("*.png"):
        mask.unlink()
    out_dir = tmp_path / "out"

    metrics = evaluate(brightness_package, data_dir, out_dir)

    assert metrics["pixel_auroc"] is None
    assert metrics["pro"] is None
    assert metrics["counts"]["defective_without_mask"] == 7
    assert metrics["image_auroc"] == 1.0
    assert "NaN" not in (out_dir / "metrics.json").read_text(encoding="utf-8")


def test_evaluate_rewrites_worst_folder(tmp_path: Path, brightness_package: Path):
    data_dir = _write_dataset(tmp_path / "data")
    out_dir = tmp_path / "out"

    evaluate(brightness_package, data_dir, out_dir, worst_count=3)
    evaluate(brightness_package, data_dir, out_dir, worst_count=1)

    assert len(list((out_dir / "worst").iterdir())) == 2


def test_evaluate_rejects_negative_worst_count(tmp_path: Path, brightness_package: Path):
    data_dir = _write_dataset(tmp_path / "data")

    with pytest.raises(ValueError, match="worst_count is -1"):
        evaluate(brightness_package, data_dir, tmp_path / "out", worst_count=-1)


def test_list_test_images_missing_good(tmp_path: Path):
    data_dir = _write_dataset(tmp_path / "data")
    for path in (data_dir / "test" / "good").iterdir():
        path.unlink()

    with pytest.raises(ValueError, match=r"test/good has no images"):
        list_test_images(data_dir)

    (data_dir / "test" / "good").rmdir()
    with pytest.raises(ValueError, match=r"test/good is missing"):
        list_test_images(data_dir)


def test_list_test_images_empty_defect_folder(tmp_path: Path):
    data_dir = _write_dataset(tmp_path / "data")
    (data_dir / "test" / "scratch").mkdir()
    (data_dir / "test" / "scratch" / "notes.txt").write_text("no images here", encoding="utf-8")

    with pytest.raises(ValueError, match=r"test/scratch has no images"):
        list_test_images(data_dir)


def test_list_test_images_missing_defect_folder(tmp_path: Path):
    data_dir = _write_dataset(tmp_path / "data")
    (data_dir / "ground_truth" / "crack").mkdir()

    with pytest.raises(ValueError, match=r"test/crack is missing"):
        list_test_images(data_dir)


def test_list_test_images_without_defects(tmp_path: Path):
    (tmp_path / "test" / "good").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "test" / "good" / "000.png"), np.zeros((8, 8), dtype=np.uint8))

    with pytest.raises(ValueError, match="no defect folder"):
        list_test_images(tmp_path)


def test_list_test_images_pairs_masks(tmp_path: Path):
    data_dir = _write_dataset(tmp_path / "data")
    (data_dir / "test" / "good" / "._000.png").write_bytes(b"resource fork")

    images = list_test_images(data_dir)

    assert [image.label for image in images] == [0] * 6 + [1] * 7
    spot = [image for image in images if image.defect == "spot"]
    assert spot[0].mask_path == data_dir / "ground_truth" / "spot" / "000_mask.png"
    assert spot[3].mask_path is None


def test_evaluate_unreadable_image(tmp_path: Path, brightness_package: Path):
    data_dir = _write_dataset(tmp_path / "data")
    (data_dir / "test" / "good" / "broken.png").write_bytes(b"not a png")

    with pytest.raises(ValueError, match="broken.png cannot be read"):
        evaluate(brightness_package, data_dir, tmp_path / "out")


def test_evaluate_mask_size_mismatch(tmp_path: Path, brightness_package: Path):
    data_dir = _write_dataset(tmp_path / "data")
    cv2.imwrite(str(data_dir / "ground_truth" / "spot" / "000_mask.png"), np.zeros((32, 32), dtype=np.uint8))

    with pytest.raises(ValueError, match="masks must have the size of their image"):
        evaluate(brightness_package, data_dir, tmp_path / "out")


def test_roc_report_size_and_file(tmp_path: Path):
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(40, dtype=int), np.ones(30, dtype=int)]
    scores = np.r_[rng.normal(10, 2, 40), rng.normal(15, 3, 30)]

    path = write_roc_report(tmp_path / "report" / "roc.png", labels, scores, 13.0, "padim test")

    image = cv2.imread(str(path))
    assert image.shape == (REPORT_HEIGHT_PX, REPORT_WIDTH_PX, 3)
    assert (image < 250).any(axis=2).mean() > 0.02


def test_roc_report_degenerate_inputs():
    for labels, scores in (([0, 0, 0], [1.0, 2.0, 3.0]), ([1, 1], [5.0, 5.0]), ([], []), ([0, 1], [0.0, np.inf])):
        image = render_roc_report(np.array(labels), np.array(scores), 2.0, "degenerate")

        assert image.shape == (REPORT_HEIGHT_PX, REPORT_WIDTH_PX, 3)
