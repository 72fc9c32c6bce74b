"""`edge-inspect eval`: score a model package on an MVTec-AD-layout folder, as the daemon would.

Expected layout under the data folder:

    test/good/*                          defect-free images
    test/<defect>/*                      defective images, one folder per defect type
    ground_truth/<defect>/<stem>_mask.png   defect mask of test/<defect>/<stem>.*

A defective image without a mask file counts at image level and is left out of pixel metrics.
Every image goes through `Inspector.inspect`, the same preprocessing, model and decision the
daemon runs, and a part counts as predicted defective when its verdict is FAIL.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
import structlog

from edge.evaluation.metrics import DEFAULT_PRO_MAX_FPR, classification_rates, pixel_auroc, pro_auc, roc_auc
from edge.evaluation.report import write_roc_report
from edge.inspector import Inspector
from edge.parts import Region, Verdict
from edge.preprocess.ring import RingNotFound
from edge.preprocess.transform import Roi
from edge.visualize import overlay_anomaly_map

log = structlog.get_logger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
GOOD_FOLDER = "good"
MASK_SUFFIX = "_mask.png"
METRICS_FILE = "metrics.json"
ROC_FILE = "roc.png"
WORST_FOLDER = "worst"
MIN_OVERLAY_SIDE_PX = 256


@dataclass(frozen=True)
class LabelledImage:
    """One test image. `defect` is None for a good part, and `mask_path` is None without a mask file."""

    path: Path
    defect: str | None
    mask_path: Path | None

    @property
    def label(self) -> int:
        return 0 if self.defect is None else 1

    @property
    def name(self) -> str:
        return f"{self.defect or GOOD_FOLDER}/{self.path.name}"


@dataclass
class ScoredImage:
    """A test image with its inspection result. `mask` is at anomaly-map size, or None without pixel labels."""

    image: LabelledImage
    image_score: float
    verdict: Verdict
    regions: list[Region]
    anomaly_map: np.ndarray
    mask: np.ndarray | None
    stage_ms: dict[str, float] = field(default_factory=dict)


def list_test_images(data_dir: Path) -> list[LabelledImage]:
    """Return the good images, then each defect type's images, sorted by name.

    Raises ValueError naming the folder when `test/`, `test/good` or a defect folder is missing
    or contains no images, or when there is no defect folder at all.
    """
    test_dir = data_dir / "test"
    good_dir = test_dir / GOOD_FOLDER
    if not test_dir.is_dir():
        raise ValueError(
            f"test folder {test_dir} is missing; pass a folder in MVTec AD layout (test/good, test/<defect>), "
            "or add --good NAME for a folder of class subfolders"
        )

    images = [LabelledImage(path, None, None) for path in _images_in(good_dir)]

    defect_dirs = sorted(path for path in test_dir.iterdir() if path.is_dir() and path.name != GOOD_FOLDER)
    if not defect_dirs:
        raise ValueError(f"{test_dir} has no defect folder besides {GOOD_FOLDER}; add test/<defect>/ with defective images")

    # A ground-truth folder without test images means the test set is incomplete.
    ground_truth_dir = data_dir / "ground_truth"
    if ground_truth_dir.is_dir():
        for mask_dir in sorted(path for path in ground_truth_dir.iterdir() if path.is_dir()):
            if not (test_dir / mask_dir.name).is_dir():
                raise ValueError(
                    f"defect folder {test_dir / mask_dir.name} is missing but {mask_dir} has masks; "
                    "copy its images or remove the mask folder"
                )

    for defect_dir in defect_dirs:
        for path in _images_in(defect_dir):
            mask_path = ground_truth_dir / defect_dir.name / f"{path.stem}{MASK_SUFFIX}"
            images.append(LabelledImage(path, defect_dir.name, mask_path if mask_path.is_file() else None))
    return images


def evaluate(
    model_dir: Path,
    data_dir: Path,
    out_dir: Path,
    inspector_kwargs: dict[str, Any] | None = None,
    worst_count: int = 5,
) -> dict[str, Any]:
    """Inspect every test image, write metrics.json, roc.png and worst/ to `out_dir`, return the metrics.

    Image metrics use the image scores, and the pass/fail rates use the verdicts at the model's
    thresholds (or those overridden in `inspector_kwargs`). Pixel metrics are computed at the
    anomaly-map resolution: each mask is cropped to the ROI like the frame, then resized to the
    map size with nearest-neighbour interpolation, so it stays binary. Undefined metrics (NaN)
    are returned and written as None. `worst/` receives overlays of the `worst_count` defective
    images with the lowest scores and the `worst_count` good images with the highest scores.
    """
    if worst_count < 0:
        raise ValueError(f"worst_count is {worst_count}; pass the number of overlays per class to write, 0 for none")
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    started = time.perf_counter()
    test_images = list_test_images(data_dir)
    inspector = Inspector.from_path(model_dir, **(inspector_kwargs or {}))
    log.info("evaluation started", model=inspector.package.identity(), data_dir=str(data_dir), images=len(test_images))

    scored = _inspect_all(inspector, test_images, _Progress(len(test_images)))
    metrics = _json_safe(_compute_metrics(inspector, scored, data_dir))

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    title = f"{inspector.package.name} {inspector.package.version} on {data_dir.name}"
    labels = np.array([item.image.label for item in scored])
    scores = np.array([item.image_score for item in scored])
    write_roc_report(out_dir / ROC_FILE, labels, scores, inspector.thresholds.image, title)
    _write_worst(inspector, scored, out_dir / WORST_FOLDER, worst_count)

    log.info(
        "evaluation finished",
        out_dir=str(out_dir),
        image_auroc=metrics["image_auroc"],
        pixel_auroc=metrics["pixel_auroc"],
        elapsed_s=round(time.perf_counter() - started, 2),
    )
    return metrics


def _inspect_all(inspector: Inspector, test_images: list[LabelledImage], progress: _Progress) -> list[ScoredImage]:
    scored = []
    for index, test_image in enumerate(test_images):
        progress.update(index, test_image.name)
        image = _read_image(test_image.path, cv2.IMREAD_COLOR)
        try:
            inspection = inspector.inspect(image)
        except RingNotFound as error:
            # The daemon rejects such a part, so it counts as failed, with no map for pixel metrics.
            log.info("ring not found", image=test_image.name, error=str(error))
            scored.append(ScoredImage(
                image=test_image, image_score=math.inf, verdict=Verdict.REJECT, regions=[],
                anomaly_map=np.zeros(image.shape[:2], dtype=np.float32), mask=None, stage_ms={},
            ))
            continue

        map_height, map_width = inspection.anomaly_map.shape
        if test_image.defect is None:
            mask = np.zeros((map_height, map_width), dtype=bool)
        elif test_image.mask_path is None:
            mask = None
        else:
            mask = _mask_at_map_size(inspector, test_image, image.shape[:2], (map_height, map_width))

        scored.append(
            ScoredImage(
                image=test_image,
                image_score=inspection.image_score,
                verdict=inspection.verdict,
                regions=inspection.regions,
                anomaly_map=inspection.anomaly_map,
                mask=mask,
                stage_ms=inspection.stage_ms,
            )
        )
    progress.finish()
    return scored


def _mask_at_map_size(
    inspector: Inspector, test_image: LabelledImage, image_shape: tuple[int, int], map_shape: tuple[int, int]
) -> np.ndarray:
    """Crop the mask to the ROI and resize it to the anomaly map with nearest-neighbour sampling."""
    mask = _read_image(test_image.mask_path, cv2.IMREAD_GRAYSCALE)
    if mask.shape[:2] != image_shape:
        raise ValueError(
            f"mask {test_image.mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {test_image.path} is "
            f"{image_shape[1]}x{image_shape[0]}; masks must have the size of their image"
        )
    cropped = inspector.preprocessor.crop(mask)
    map_height, map_width = map_shape
    resized = cv2.resize(cropped, (map_width, map_height), interpolation=cv2.INTER_NEAREST)
    return resized > 0


def _compute_metrics(inspector: Inspector, scored: list[ScoredImage], data_dir: Path) -> dict[str, Any]:
    labels = np.array([item.image.label for item in scored])
    scores = np.array([item.image_score for item in scored])
    predicted_defective = np.array([item.verdict in (Verdict.FAIL, Verdict.REJECT) for item in scored])
    pixel_labelled = [item for item in scored if item.mask is not None]
    inspected = [item for item in scored if item.stage_ms] or scored
    map_shape = inspected[0].anomaly_map.shape

    metrics: dict[str, Any] = {
        "model": inspector.package.identity(),
        "data_dir": str(data_dir),
        "image_auroc": roc_auc(labels, scores),
        "pixel_auroc": pixel_auroc([item.anomaly_map for item in pixel_labelled], [item.mask for item in pixel_labelled]),
        "pro": pro_auc([item.anomaly_map for item in pixel_labelled], [item.mask for item in pixel_labelled]),
        "pro_max_fpr": DEFAULT_PRO_MAX_FPR,
        "ring_not_found": sum(item.verdict == Verdict.REJECT for item in scored),
        **classification_rates(labels, predicted_defective),
        "image_threshold": inspector.thresholds.image,
        "pixel_threshold": inspector.thresholds.pixel,
        "anomaly_map_size_px": list(map_shape),
        "counts": {
            "images": len(scored),
            "good": int(np.count_nonzero(labels == 0)),
            "defective": int(np.count_nonzero(labels == 1)),
            "defective_without_mask": sum(1 for item in scored if item.image.defect is not None and item.mask is None),
        },
        "mean_inference_ms": float(np.mean([item.stage_ms.get("inference", np.nan) for item in inspected])),
        "mean_stage_ms": {
            stage: float(np.mean([item.stage_ms[stage] for item in inspected])) for stage in inspected[0].stage_ms
        },
        "per_class": _per_class_metrics(scored),
    }
    return metrics


def _per_class_metrics(scored: list[ScoredImage]) -> dict[str, dict[str, Any]]:
    """Score each defect type against the good images, at image and at pixel level."""
    good = [item for item in scored if item.image.defect is None]
    defects = sorted({item.image.defect for item in scored if item.image.defect is not None})

    per_class = {}
    for defect in defects:
        defective = [item for item in scored if item.image.defect == defect]
        both = good + defective
        pixel_labelled = [item for item in both if item.mask is not None]
        labels = [item.image.label for item in both]
        passed = sum(1 for item in defective if item.verdict != Verdict.FAIL)

        per_class[defect] = {
            "image_auroc": roc_auc(labels, [item.image_score for item in both]),
            "pixel_auroc": pixel_auroc([item.anomaly_map for item in pixel_labelled], [item.mask for item in pixel_labelled]),
            "pro": pro_auc([item.anomaly_map for item in pixel_labelled], [item.mask for item in pixel_labelled]),
            "escape_rate": passed / len(defective),
            "count": len(defective),
            "without_mask": sum(1 for item in defective if item.mask is None),
        }
    return per_class


def _write_worst(inspector: Inspector, scored: list[ScoredImage], worst_dir: Path, worst_count: int) -> None:
    """Write overlays of the lowest-scoring defective and highest-scoring good images."""
    worst_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*worst_dir.glob("defective_*.png"), *worst_dir.glob("good_*.png")]:
        stale.unlink()

    defective = sorted((item for item in scored if item.image.defect is not None), key=lambda item: item.image_score)
    good = sorted((item for item in scored if item.image.defect is None), key=lambda item: -item.image_score)
    scale_max = _overlay_scale_max(inspector, scored)

    for prefix, items in (("defective", defective[:worst_count]), ("good", good[:worst_count])):
        for rank, item in enumerate(items, start=1):
            image = _read_image(item.image.path, cv2.IMREAD_COLOR)
            image, regions, roi = _enlarge_small(image, item.regions, inspector.preprocessor.roi)
            label = (
                f"{item.image.name}: {item.verdict.value} score {item.image_score:.4g} "
                f"(threshold {inspector.thresholds.image:.4g})"
            )
            overlay = overlay_anomaly_map(image, item.anomaly_map, scale_max, regions=regions, roi=roi, label=label)
            defect_part = f"{item.image.defect}_" if item.image.defect else ""
            name = f"{prefix}_{rank:02d}_{defect_part}{item.image.path.stem}.png"
            if not cv2.imwrite(str(worst_dir / name), overlay):
                raise OSError(f"could not write overlay {worst_dir / name}; check that the folder is writable")


def _enlarge_small(
    image: np.ndarray, regions: list[Region], roi: Roi | None
) -> tuple[np.ndarray, list[Region], Roi | None]:
    """Enlarge images smaller than MIN_OVERLAY_SIDE_PX by a whole factor, so the caption fits and stays legible."""
    factor = math.ceil(MIN_OVERLAY_SIDE_PX / min(image.shape[:2]))
    if factor <= 1:
        return image, regions, roi

    image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    regions = [
        Region(
            area_px=region.area_px * factor * factor,
            bbox_xywh=tuple(value * factor for value in region.bbox_xywh),
            peak_score=region.peak_score,
            peak_xy=tuple(value * factor for value in region.peak_xy),
        )
        for region in regions
    ]
    if roi is not None:
        roi = Roi(roi.x * factor, roi.y * factor, roi.width * factor, roi.height * factor)
    return image, regions, roi


def _overlay_scale_max(inspector: Inspector, scored: list[ScoredImage]) -> float:
    """Return twice the pixel threshold, so overlays colour what is above it.

    A threshold at or below zero cannot set the scale, so the highest map value is used then.
    """
    if inspector.thresholds.pixel > 0:
        return 2.0 * inspector.thresholds.pixel
    highest = max(float(np.max(item.anomaly_map)) for item in scored)
    return highest if highest > 0 else 1.0


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} is missing; create it and add test images")
    # Names starting with a dot are hidden files, such as the resource forks macOS copies along.
    images = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )
    if not images:
        raise ValueError(f"image folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add test images")
    return images


def _read_image(path: Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise ValueError(f"image {path} cannot be read; replace the file or remove it from the test set")
    return image


def _json_safe(value: Any) -> Any:
    """Replace NaN and infinity by None and numpy scalars by Python numbers, recursively."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Progress:
    """One progress line on stderr: rewritten in place on a terminal, every tenth of the work otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self._last_tenth = -1

    def update(self, index: int, name: str) -> None:
        line = f"evaluating {index + 1}/{self.total}: {name}"
        if self.interactive:
            self.stream.write(f"\r\x1b[K{line}")
            self.stream.flush()
            return
        tenth = index * 10 // self.total
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(line + "\n")
            self.stream.flush()

    def finish(self) -> None:
        line = f"evaluated {self.total} images"
        self.stream.write(f"\r\x1b[K{line}\n" if self.interactive else line + "\n")
        self.stream.flush()
