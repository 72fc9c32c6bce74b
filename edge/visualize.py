"""Overlay of an anomaly map, its defect regions and a caption on the inspected frame."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edge.parts import Region
from edge.preprocess.transform import Roi

# Map pixels at or above this share of `scale_max` are coloured, and the rest of the frame stays as captured.
OVERLAY_FROM_SHARE = 0.5
OVERLAY_ALPHA = 0.5
COLORMAP = cv2.COLORMAP_JET

REGION_COLOR_BGR = (0, 0, 255)
ROI_COLOR_BGR = (200, 200, 200)
LABEL_TEXT_COLOR_BGR = (255, 255, 255)
LABEL_BACKGROUND_BGR = (40, 40, 40)
MIN_LABEL_SCALE = 0.3


def overlay_anomaly_map(
    image_bgr: np.ndarray,
    anomaly_map: np.ndarray,
    scale_max: float,
    regions: Sequence[Region] | None = None,
    roi: Roi | None = None,
    label: str | None = None,
) -> np.ndarray:
    """Return a BGR copy of the frame with the anomaly map, region boxes and a caption drawn on it.

    The map, at model resolution, is resized to the ROI (the whole frame when `roi` is None),
    scaled so that 0 and `scale_max` span the colormap, and blended over the frame where it is at
    least half of `scale_max`. Passing twice the pixel threshold as `scale_max` therefore colours
    exactly the pixels above the threshold. Region boxes are in frame pixels
    (`Region.bbox_xywh`). `image_bgr` may be grey (HxW) or BGR (HxWx3) uint8 and is not modified.
    """
    if not scale_max > 0:
        raise ValueError(f"scale_max is {scale_max}; pass a positive anomaly score, such as twice the pixel threshold")
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if anomaly_map.ndim != 2:
        raise ValueError(f"anomaly map has shape {anomaly_map.shape}; pass the 2-D map at model resolution")

    canvas = _bgr_copy(image_bgr)
    frame_height, frame_width = canvas.shape[:2]
    x, y, width, height = _area_of(roi, frame_width, frame_height)

    resized = cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap(_to_uint8(resized, scale_max), COLORMAP)
    area = canvas[y : y + height, x : x + width]
    blended = cv2.addWeighted(area, 1.0 - OVERLAY_ALPHA, colored, OVERLAY_ALPHA, 0.0)
    above = resized >= OVERLAY_FROM_SHARE * scale_max
    area[above] = blended[above]

    thickness_px = max(1, round(min(frame_width, frame_height) / 300))
    if roi is not None:
        cv2.rectangle(canvas, (x, y), (x + width - 1, y + height - 1), ROI_COLOR_BGR, thickness_px)
    for region in regions or ():
        left, top, box_width, box_height = region.bbox_xywh
        cv2.rectangle(canvas, (left, top), (left + box_width - 1, top + box_height - 1), REGION_COLOR_BGR, thickness_px)

    if label:
        _draw_label(canvas, label)
    return canvas


def _bgr_copy(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise ValueError(f"image dtype is {image.dtype}; pass the 8-bit frame (uint8)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    raise ValueError(f"image shape {image.shape} is not a frame; pass HxW grey or HxWx3 BGR")


def _area_of(roi: Roi | None, frame_width: int, frame_height: int) -> tuple[int, int, int, int]:
    """Return (x, y, width, height) of the inspected area in frame pixels."""
    if roi is None:
        return 0, 0, frame_width, frame_height
    fits = roi.x >= 0 and roi.y >= 0 and roi.x + roi.width <= frame_width and roi.y + roi.height <= frame_height
    if not fits or roi.width < 1 or roi.height < 1:
        raise ValueError(
            f"ROI x={roi.x} y={roi.y} width={roi.width} height={roi.height} does not fit in a "
            f"{frame_width}x{frame_height} frame; pass the ROI the frame was inspected with"
        )
    return roi.x, roi.y, roi.width, roi.height


def _to_uint8(anomaly_map: np.ndarray, scale_max: float) -> np.ndarray:
    scaled = np.clip(anomaly_map / scale_max, 0.0, 1.0) * 255.0
    return np.round(scaled).astype(np.uint8)


def _draw_label(canvas: np.ndarray, label: str) -> None:
    """Write the caption in the top-left corner on a dark box, sized to the frame width."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    font_scale = max(0.4, canvas.shape[1] / 1000)
    thickness_px = max(1, round(font_scale * 1.5))
    (text_width, text_height), baseline = cv2.getTextSize(label, font, font_scale, thickness_px)

    # Shrink a caption wider than the frame, down to the smallest scale that stays legible.
    if text_width > canvas.shape[1] * 0.95 and font_scale > MIN_LABEL_SCALE:
        font_scale = max(MIN_LABEL_SCALE, font_scale * canvas.shape[1] * 0.95 / text_width)
        thickness_px = 1
        (text_width, text_height), baseline = cv2.getTextSize(label, font, font_scale, thickness_px)

    margin_px = max(3, round(text_height / 3))
    box_bottom = text_height + baseline + 2 * margin_px
    cv2.rectangle(canvas, (0, 0), (text_width + 2 * margin_px, box_bottom), LABEL_BACKGROUND_BGR, cv2.FILLED)
    cv2.putText(
        canvas, label, (margin_px, margin_px + text_height), font, font_scale, LABEL_TEXT_COLOR_BGR, thickness_px, cv2.LINE_AA
    )
