"""`edge-inspect eval --good NAME`: score a model on class folders, as the daemon would.

Expected layout under the data folder: one folder per class, for example

    ok_front/*       the good class, named by --good
    def_front/*      defective parts; every folder besides the good one is a defective class

Every image goes through `Inspector.inspect`, the preprocessing, model and decision that the
daemon runs. A part counts as predicted defective when its verdict is FAIL, or when its ring
is not found (the daemon rejects such a part).

With a boxes file, images that have defect boxes are also scored for localisation (pointing
game and map mass in the boxes, see edge.evaluation.localisation).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import structlog

from edge.evaluation.classification import ClassifiedPart, classification_metrics
from edge.evaluation.localisation import Box, LocalisationScore, load_boxes, localisation_metrics, score_localisation
from edge.evaluation.report import write_roc_report
from edge.evaluation.runner import METRICS_FILE, ROC_FILE, _enlarge_small, _images_in, _json_safe, _Progress, _read_image
from edge.inspector import Inspection, Inspector
from edge.parts import Verdict
from edge.preprocess.ring import Ring, RingNotFound, draw_ring
from edge.preprocess.transform import PreprocessError
from edge.visualize import overlay_anomaly_map

log = structlog.get_logger(__name__)

OVERLAY_FOLDER = "overlays"
BOX_COLOR_BGR = (0, 255, 0)


@dataclass(frozen=True)
class ClassImage:
    """One image of a class folder."""

    path: Path
    class_name: str
    defective: bool

    @property
    def name(self) -> str:
        return f"{self.class_name}/{self.path.name}"


def class_folders(data_dir: Path, good: str) -> tuple[Path, list[Path]]:
    """Return the good class folder and the defect class folders (every other subfolder) of `data_dir`.

    Raises ValueError naming the folder when the data folder or the good class folder is
    missing, when `good` is a path rather than a folder name, or when there is no defect class.
    """
    if data_dir.is_file():
        raise ValueError(f"data folder {data_dir} is a file, not a folder; pass a folder with one subfolder per class")
    if not data_dir.is_dir():
        raise ValueError(f"data folder {data_dir} is missing; pass a folder with one subfolder per class")
    if "/" in good.rstrip("/"):
        raise ValueError(f"--good {good!r} is a path; pass the bare name of the good parts' folder, such as ok")
    good = good.rstrip("/")

    class_dirs = sorted(path for path in data_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
    names = [path.name for path in class_dirs]
    if good not in names:
        raise ValueError(
            f"good class folder {data_dir / good} is missing (class folders: {', '.join(names) or 'none'}); "
            "pass the name of the good parts' folder with --good"
        )
    defect_dirs = [path for path in class_dirs if path.name != good]
    if not defect_dirs:
        raise ValueError(
            f"{data_dir} has no defective class folder besides {good}; add a folder of defective parts next to it"
        )
    return data_dir / good, defect_dirs


def list_class_images(data_dir: Path, good: str) -> list[ClassImage]:
    """Return the good class's images, then each defective class's images, sorted by name.

    Raises ValueError as `class_folders` does, and when a class folder has no images.
    """
    good_dir, defect_dirs = class_folders(data_dir, good)
    images = [ClassImage(path, good_dir.name, False) for path in _images_in(good_dir)]
    for defect_dir in defect_dirs:
        images += [ClassImage(path, defect_dir.name, True) for path in _images_in(defect_dir)]
    return images


def evaluate_classes(
    model_dir: Path,
    data_dir: Path,
    out_dir: Path,
    good: str,
    inspector_kwargs: dict[str, Any] | None = None,
    overlays_per_class: int = 4,
    boxes_path: Path | None = None,
) -> dict[str, Any]:
    """Inspect every image, write metrics.json, roc.png and overlays/ to `out_dir`, return the metrics.

    `overlays/` receives the first `overlays_per_class` images of each class (by name), with
    the anomaly map, the regions, the ring and the defect boxes drawn. Undefined metrics (NaN)
    are written as None. With `boxes_path` (a boxes file, see localisation.parse_boxes) the
    metrics gain a `localisation` section. Raises ValueError naming the image for a frame that
    the package cannot preprocess, and naming the key for a boxes file that does not match the
    data folder.
    """
    if overlays_per_class < 0:
        raise ValueError(f"overlays_per_class is {overlays_per_class}; pass 0 or more")
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    started = time.perf_counter()
    images = list_class_images(data_dir, good)
    boxes = _boxes_of_images(Path(boxes_path), images, data_dir) if boxes_path is not None else None
    inspector = Inspector.from_path(model_dir, **(inspector_kwargs or {}))
    log.info("evaluation started", model=inspector.package.identity(), data_dir=str(data_dir), images=len(images), good=good)

    progress = _Progress(len(images))
    # New overlays go to a partial folder and replace the old ones only once the run succeeds,
    # so a failed run leaves the previous report whole.
    partial_dir = out_dir / f".{OVERLAY_FOLDER}.partial"
    shutil.rmtree(partial_dir, ignore_errors=True)
    partial_dir.mkdir(parents=True)
    try:
        parts, localised, without_map = _inspect_all(
            inspector, images, boxes, boxes_path, partial_dir, overlays_per_class, progress
        )
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    progress.finish()

    metrics = classification_metrics(parts)
    metrics = _json_safe({
        "model": inspector.package.identity(),
        "data_dir": str(data_dir),
        "good_class": good,
        "image_threshold": inspector.thresholds.image,
        "pixel_threshold": inspector.thresholds.pixel,
        **metrics,
        **({"localisation": _localisation_section(localised, without_map)} if boxes is not None else {}),
    })
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")

    # Parts without a ring have no score, so the histogram and ROC of the report show the scored parts.
    scored = [part for part in parts if part.image_score is not None]
    write_roc_report(
        out_dir / ROC_FILE,
        np.array([int(part.defective) for part in scored]),
        np.array([part.image_score for part in scored]),
        inspector.thresholds.image,
        f"{inspector.package.name} {inspector.package.version} on {data_dir.name}",
    )
    overlay_dir = out_dir / OVERLAY_FOLDER
    shutil.rmtree(overlay_dir, ignore_errors=True)
    partial_dir.rename(overlay_dir)
    log.info(
        "evaluation finished", out_dir=str(out_dir), accuracy=metrics["accuracy"], roc_auc=metrics["roc_auc"],
        ring_not_found=metrics["ring_not_found"], elapsed_s=round(time.perf_counter() - started, 2),
    )
    return metrics


def _inspect_all(
    inspector: Inspector,
    images: list[ClassImage],
    boxes: dict[str, list[Box]] | None,
    boxes_path: Path | None,
    overlay_dir: Path,
    overlays_per_class: int,
    progress: _Progress,
) -> tuple[list[ClassifiedPart], list[tuple[ClassImage, Inspection, LocalisationScore]], int]:
    """Inspect every image, score its map against its boxes and write the first overlays of each class.

    Returns the classified parts, the localisation scores of images with boxes, and the number
    of images with boxes that had no map (ring not found).
    """
    parts: list[ClassifiedPart] = []
    localised: list[tuple[ClassImage, Inspection, LocalisationScore]] = []
    without_map = 0
    written: dict[str, int] = {}

    for index, class_image in enumerate(images):
        progress.update(index, class_image.name)
        image = _read_image(class_image.path, cv2.IMREAD_COLOR)
        try:
            inspection = inspector.inspect(image)
        except RingNotFound as error:
            log.info("ring not found", image=class_image.name, error=str(error))
            inspection = None
        except PreprocessError as error:
            raise ValueError(f"image {class_image.path} cannot be preprocessed for this model: {error}") from error
        parts.append(_classified(class_image, inspection))

        image_boxes = boxes.get(class_image.name) if boxes is not None else None
        if image_boxes is not None:
            _check_boxes_in_image(image_boxes, class_image, image.shape, boxes_path)
            if inspection is None:
                without_map += 1
            else:
                score = score_localisation(inspection.anomaly_map, inspection.map_frame_xywh, image_boxes)
                localised.append((class_image, inspection, score))

        if written.get(class_image.class_name, 0) < overlays_per_class:
            written[class_image.class_name] = written.get(class_image.class_name, 0) + 1
            _write_overlay(inspector, image, class_image, inspection, overlay_dir, image_boxes)
    return parts, localised, without_map


def _boxes_of_images(boxes_path: Path, images: list[ClassImage], data_dir: Path) -> dict[str, list[Box]]:
    """Load the boxes file and check that each key names an evaluated image."""
    boxes = load_boxes(boxes_path)
    names = {class_image.name for class_image in images}
    for key in boxes:
        if key not in names:
            example = next((class_image.name for class_image in images if class_image.defective), images[0].name)
            raise ValueError(
                f"{boxes_path}: {key!r} names no image of {data_dir}; keys are <class folder>/<file name> "
                f"relative to the data folder, such as {example!r}. Fix the key or remove it"
            )
    return boxes


def _check_boxes_in_image(boxes: list[Box], class_image: ClassImage, image_shape: tuple[int, ...], boxes_path: Path) -> None:
    height, width = image_shape[:2]
    for box in boxes:
        if box[0] >= width or box[1] >= height:
            raise ValueError(
                f"{boxes_path}: {class_image.name!r} has the box {list(box)} outside its {width}x{height} px image "
                "(width x height); fix the box, whose coordinates are 0-based frame pixels"
            )


def _localisation_section(localised: list[tuple[ClassImage, Inspection, LocalisationScore]], without_map: int) -> dict[str, Any]:
    """Return the localisation metrics, the count of boxed images without a map (rejected) and per-image results."""
    scores = [score for _, _, score in localised]
    detected = [inspection.verdict is Verdict.FAIL for _, inspection, _ in localised]
    return {
        **localisation_metrics(scores, detected),
        "images_without_map": without_map,
        "per_image": [
            {
                "image": class_image.name,
                "verdict": inspection.verdict.value,
                "pointing_game_hit": score.hit,
                "mass_in_boxes": score.mass_in_boxes,
                "peak_xy": None if score.peak_xy is None else [round(value, 2) for value in score.peak_xy],
            }
            for class_image, inspection, score in localised
        ],
    }


def _classified(class_image: ClassImage, inspection: Inspection | None) -> ClassifiedPart:
    if inspection is None:
        return ClassifiedPart(class_image.class_name, class_image.defective, None, Verdict.REJECT)
    return ClassifiedPart(class_image.class_name, class_image.defective, inspection.image_score, inspection.verdict)


def _write_overlay(
    inspector: Inspector,
    image: np.ndarray,
    class_image: ClassImage,
    inspection: Inspection | None,
    overlay_dir: Path,
    boxes: list[Box] | None = None,
) -> None:
    """Write the image with its anomaly map, regions, ring, defect boxes (green) and a caption."""
    threshold = inspector.thresholds.image
    if inspection is None:
        label = f"{class_image.name}: REJECT ring not found"
        anomaly_map, regions, ring = np.zeros(image.shape[:2], np.float32), [], None
    else:
        label = f"{class_image.name}: {inspection.verdict.value} score {inspection.image_score:.4g} (threshold {threshold:.4g})"
        anomaly_map, regions, ring = inspection.anomaly_map, inspection.regions, inspection.ring

    enlarged, regions, roi = _enlarge_small(image, regions, inspector.preprocessor.roi)
    factor = enlarged.shape[0] // image.shape[0]
    scale_max = 2.0 * inspector.thresholds.pixel if inspector.thresholds.pixel > 0 else max(float(np.max(anomaly_map)), 1e-6)
    overlay = overlay_anomaly_map(enlarged, anomaly_map, scale_max, regions=regions, roi=roi, label=label)
    if ring is not None:
        overlay = draw_ring(overlay, _scaled_ring(ring, factor))
    thickness_px = max(1, round(min(overlay.shape[:2]) / 300))
    for x0, y0, x1, y1 in boxes or []:
        corner_from = (round(x0 * factor), round(y0 * factor))
        corner_to = (round(x1 * factor) - 1, round(y1 * factor) - 1)
        cv2.rectangle(overlay, corner_from, corner_to, BOX_COLOR_BGR, thickness_px)

    path = overlay_dir / f"{class_image.class_name}_{class_image.path.stem}.png"
    if not cv2.imwrite(str(path), overlay):
        raise OSError(f"could not write overlay {path}; check that the folder is writable")


def _scaled_ring(ring: Ring, factor: int) -> Ring:
    """Return the ring on an image enlarged by a whole factor with nearest-neighbour sampling."""
    if factor == 1:
        return ring
    # Pixel i of the original covers pixels i * factor to (i + 1) * factor - 1 of the enlarged image.
    shift = (factor - 1) / 2.0
    return dataclasses.replace(
        ring,
        centre_x=ring.centre_x * factor + shift,
        centre_y=ring.centre_y * factor + shift,
        inner_radius_px=ring.inner_radius_px * factor,
        outer_radius_px=ring.outer_radius_px * factor,
    )
