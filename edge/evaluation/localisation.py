"""Localisation metrics: how well an anomaly map points at hand-drawn defect boxes.

Boxes are in frame pixels, 0-based and half-open: (x0, y0, x1, y1) contains the frame pixels
x0 <= x < x1 and y0 <= y < y1. An anomaly map covers a frame rectangle `map_frame_xywh`, and
map pixel (row, column) covers the frame area of that rectangle scaled by its size over the
map's size, as the decision maps regions.

- Pointing game: a hit when the centre of the map's maximum pixel (the first one in row-major
  order on ties) lies inside any box of the image.
- Mass in boxes: the share of the map's positive mass inside the union of the boxes. A map pixel
  counts with the fraction of its frame area that the union covers. Negative map values count
  as 0, so the share lies in [0, 1].

A map with no positive value has no location: it scores a mass of 0 and a miss.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# Key of the mapping from image keys to boxes in a boxes file.
BOXES_KEY = "windows"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LocalisationScore:
    """The localisation of one image: pointing-game hit, mass share in its boxes, map peak in frame pixels."""

    hit: bool
    mass_in_boxes: float
    peak_xy: tuple[float, float] | None


def load_boxes(path: Path) -> dict[str, list[Box]]:
    """Read a boxes file; see parse_boxes. Raises ValueError naming the file and the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ValueError(f"boxes file {path} not found; pass the JSON file of defect boxes with --boxes") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"boxes file {path} cannot be read ({error}); pass a UTF-8 JSON file") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"boxes file {path} is not valid JSON ({error}); fix its syntax") from error
    return parse_boxes(data, str(path))


def parse_boxes(data: Any, source: str = "boxes") -> dict[str, list[Box]]:
    """Validate `{"format": ..., "windows": {"<class folder>/<file name>": [[x0, y0, x1, y1], ...]}}`.

    Returns the boxes of each key. A key with an empty list has no boxes and is left out, so its
    image is not scored, like an image without a key. Raises ValueError naming the key and the
    box for a box that is not four finite numbers, has a negative coordinate, or is empty
    (x1 <= x0 or y1 <= y0).
    """
    if not isinstance(data, dict) or not isinstance(data.get(BOXES_KEY), dict):
        raise ValueError(
            f'{source}: expected {{"format": "...", "{BOXES_KEY}": {{"<class folder>/<file name>": '
            '[[x0, y0, x1, y1], ...]}}; write the boxes in that form'
        )
    boxes: dict[str, list[Box]] = {}
    for key, entries in data[BOXES_KEY].items():
        if not isinstance(entries, list):
            raise ValueError(f"{source}: {key!r} has {entries!r}; give a list of boxes [[x0, y0, x1, y1], ...]")
        parsed = [_parse_box(entry, key, source) for entry in entries]
        if parsed:
            boxes[key] = parsed
    return boxes


def _parse_box(entry: Any, key: str, source: str) -> Box:
    numbers = isinstance(entry, (list, tuple)) and all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in entry
    )
    if not numbers or len(entry) != 4 or not all(math.isfinite(value) for value in entry):
        raise ValueError(f"{source}: {key!r} has the box {entry!r}; give four finite numbers [x0, y0, x1, y1] in pixels")
    x0, y0, x1, y1 = (float(value) for value in entry)
    if min(x0, y0) < 0:
        raise ValueError(f"{source}: {key!r} has the box {entry!r} with a negative coordinate; boxes are 0-based frame pixels")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"{source}: {key!r} has the empty box {entry!r}; give [x0, y0, x1, y1] with x1 > x0 and y1 > y0 (half-open)"
        )
    return x0, y0, x1, y1


def map_peak_in_frame(anomaly_map: np.ndarray, map_frame_xywh: tuple[int, int, int, int]) -> tuple[float, float]:
    """Return the frame (x, y) of the centre of the map's first maximum pixel."""
    anomaly_map = _checked_map(anomaly_map)
    row, column = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
    offset_x, offset_y, width, height = map_frame_xywh
    map_height, map_width = anomaly_map.shape
    return offset_x + (column + 0.5) * width / map_width, offset_y + (row + 0.5) * height / map_height


def box_coverage(
    map_shape: tuple[int, int], map_frame_xywh: tuple[int, int, int, int], boxes: list[Box]
) -> np.ndarray:
    """Return the float32 share of each map pixel's frame area that the union of `boxes` covers.

    The union is drawn at frame resolution over `map_frame_xywh`, where a frame pixel belongs to
    a box when its centre does. It is then averaged over each map pixel's area (cv2.INTER_AREA,
    exact for whole scale factors). A map at frame resolution gets the union's mask itself.
    """
    offset_x, offset_y, width, height = map_frame_xywh
    union = np.zeros((height, width), np.float32)
    for x0, y0, x1, y1 in boxes:
        # Frame pixel i has its centre at i + 0.5, inside [x0, x1) for ceil(x0 - 0.5) <= i < ceil(x1 - 0.5).
        columns = slice(max(0, math.ceil(x0 - 0.5) - offset_x), max(0, math.ceil(x1 - 0.5) - offset_x))
        rows = slice(max(0, math.ceil(y0 - 0.5) - offset_y), max(0, math.ceil(y1 - 0.5) - offset_y))
        union[rows, columns] = 1.0
    map_height, map_width = map_shape
    if (map_height, map_width) == (height, width):
        return union
    return cv2.resize(union, (map_width, map_height), interpolation=cv2.INTER_AREA)


def score_localisation(
    anomaly_map: np.ndarray, map_frame_xywh: tuple[int, int, int, int], boxes: list[Box]
) -> LocalisationScore:
    """Score one image's anomaly map against its boxes (see the module docstring for the rules)."""
    if not boxes:
        raise ValueError("no boxes to score the map against; pass at least one box")
    anomaly_map = _checked_map(anomaly_map)
    positive = np.maximum(anomaly_map, 0.0)
    total = float(positive.sum(dtype=np.float64))
    if total <= 0.0:
        return LocalisationScore(hit=False, mass_in_boxes=0.0, peak_xy=None)

    peak_x, peak_y = map_peak_in_frame(anomaly_map, map_frame_xywh)
    hit = any(x0 <= peak_x < x1 and y0 <= peak_y < y1 for x0, y0, x1, y1 in boxes)
    coverage = box_coverage(anomaly_map.shape, map_frame_xywh, boxes)
    inside = float((positive * coverage).sum(dtype=np.float64))
    return LocalisationScore(hit=hit, mass_in_boxes=min(1.0, inside / total), peak_xy=(peak_x, peak_y))


def localisation_summary(scores: list[LocalisationScore]) -> dict[str, Any]:
    """Return images_with_boxes, pointing_game_hits and _rate, mean_ and median_mass_in_boxes (NaN without images)."""
    hits = sum(1 for score in scores if score.hit)
    masses = np.array([score.mass_in_boxes for score in scores], dtype=np.float64)
    return {
        "images_with_boxes": len(scores),
        "pointing_game_hits": hits,
        "pointing_game_rate": hits / len(scores) if scores else math.nan,
        "mean_mass_in_boxes": float(masses.mean()) if scores else math.nan,
        "median_mass_in_boxes": float(np.median(masses)) if scores else math.nan,
    }


def localisation_metrics(scores: list[LocalisationScore], detected: list[bool]) -> dict[str, Any]:
    """Return the summary of all scored images, and under `detected` that of the images the model failed."""
    if len(scores) != len(detected):
        raise ValueError(f"{len(scores)} scores but {len(detected)} detection flags; pass one flag per score")
    return {
        **localisation_summary(scores),
        "detected": localisation_summary([score for score, flag in zip(scores, detected) if flag]),
    }


def _checked_map(anomaly_map: np.ndarray) -> np.ndarray:
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if anomaly_map.ndim != 2 or anomaly_map.size == 0:
        raise ValueError(f"anomaly map has shape {list(anomaly_map.shape)}; pass a 2-D map")
    if not np.all(np.isfinite(anomaly_map)):
        raise ValueError("anomaly map contains values that are not finite (NaN or infinity); check the model")
    return anomaly_map
