"""ROC and score-histogram report, drawn with OpenCV so that evaluation needs no plotting library."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.evaluation.metrics import roc_auc, roc_curve

REPORT_WIDTH_PX = 1200
REPORT_HEIGHT_PX = 500
HISTOGRAM_BINS = 30

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (150, 150, 150)
LIGHT_GREY = (230, 230, 230)
ROC_COLOR_BGR = (180, 90, 20)
GOOD_COLOR_BGR = (60, 160, 40)
DEFECTIVE_COLOR_BGR = (40, 40, 210)
THRESHOLD_COLOR_BGR = (40, 40, 40)

FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_SCALE = 0.5
TITLE_SCALE = 0.7


@dataclass(frozen=True)
class _Axes:
    """A plot area in image pixels and the data ranges it shows."""

    left: int
    top: int
    right: int
    bottom: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def to_px(self, x: float, y: float) -> tuple[int, int]:
        x_low, x_high = self.x_range
        y_low, y_high = self.y_range
        px = self.left + (x - x_low) / (x_high - x_low) * (self.right - self.left)
        py = self.bottom - (y - y_low) / (y_high - y_low) * (self.bottom - self.top)
        return int(round(px)), int(round(py))


def write_roc_report(
    path: Path | str, labels: np.ndarray, scores: np.ndarray, image_threshold: float, title: str
) -> Path:
    """Draw the ROC curve and the score histograms of good and defective parts into one PNG.

    Labels are 0 for good and 1 for defective, and a higher score is more anomalous. The image
    is 1200x500 pixels. Returns the path written.
    """
    path = Path(path)
    image = render_roc_report(labels, scores, image_threshold, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write the ROC report to {path}; check that the folder is writable")
    return path


def render_roc_report(labels: np.ndarray, scores: np.ndarray, image_threshold: float, title: str) -> np.ndarray:
    """Return the BGR report image that `write_roc_report` writes."""
    labels = np.asarray(labels).ravel().astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64).ravel()

    image = np.full((REPORT_HEIGHT_PX, REPORT_WIDTH_PX, 3), WHITE, dtype=np.uint8)
    _draw_text_centered(image, title, REPORT_WIDTH_PX // 2, 28, TITLE_SCALE, 2)

    half_width = REPORT_WIDTH_PX // 2
    _draw_roc_panel(image, labels, scores, image_threshold, _Axes(80, 70, half_width - 40, 430, (0.0, 1.0), (0.0, 1.0)))
    _draw_histogram_panel(image, labels, scores, image_threshold, half_width + 80, 70, REPORT_WIDTH_PX - 40, 430)
    return image


def _draw_roc_panel(image: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float, axes: _Axes) -> None:
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    _draw_axes(image, axes, ticks, ticks, "false positive rate (good parts failed)", "true positive rate")
    _draw_dashed_line(image, axes.to_px(0.0, 0.0), axes.to_px(1.0, 1.0), GREY)

    good_count = int(np.count_nonzero(labels == 0))
    defective_count = int(np.count_nonzero(labels == 1))
    if good_count == 0 or defective_count == 0:
        missing = "good" if good_count == 0 else "defective"
        _draw_text_centered(image, f"ROC undefined: no {missing} parts", (axes.left + axes.right) // 2, (axes.top + axes.bottom) // 2)
        return

    fpr, tpr, _ = roc_curve(labels, scores)
    points = np.array([axes.to_px(x, y) for x, y in zip(fpr, tpr)], dtype=np.int32)
    cv2.polylines(image, [points], False, ROC_COLOR_BGR, 2, cv2.LINE_AA)

    # The operating point: the rates at the model's image threshold (score >= threshold fails).
    failed = scores >= threshold
    operating_fpr = float(np.mean(failed[labels == 0]))
    operating_tpr = float(np.mean(failed[labels == 1]))
    cv2.circle(image, axes.to_px(operating_fpr, operating_tpr), 6, THRESHOLD_COLOR_BGR, 2, cv2.LINE_AA)

    entries = [
        (ROC_COLOR_BGR, "line", f"ROC, AUROC = {roc_auc(labels, scores):.4f}"),
        (THRESHOLD_COLOR_BGR, "circle", f"at threshold: FPR {operating_fpr:.3f}, TPR {operating_tpr:.3f}"),
    ]
    _draw_legend(image, entries, axes.right - 10, axes.bottom - 10)


def _draw_histogram_panel(
    image: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float, left: int, top: int, right: int, bottom: int
) -> None:
    finite = np.isfinite(scores)
    good_scores = scores[(labels == 0) & finite]
    defective_scores = scores[(labels == 1) & finite]

    low = float(min(np.min(scores[finite], initial=threshold), threshold))
    high = float(max(np.max(scores[finite], initial=threshold), threshold))
    padding = (high - low) * 0.05 if high > low else max(abs(high) * 0.1, 1.0)
    low, high = low - padding, high + padding
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)

    good_counts, _ = np.histogram(good_scores, edges)
    defective_counts, _ = np.histogram(defective_scores, edges)
    highest_count = float(max(good_counts.max(), defective_counts.max(), 1))
    y_ticks = _nice_ticks(0.0, highest_count * 1.1, whole=True)
    x_ticks = [tick for tick in _nice_ticks(low, high) if low <= tick <= high]
    axes = _Axes(left, top, right, bottom, (low, high), (0.0, y_ticks[-1]))
    _draw_axes(image, axes, x_ticks, y_ticks, "image anomaly score", "parts")

    # Bars are drawn translucent so the overlap of the two classes stays visible.
    for counts, color in ((good_counts, GOOD_COLOR_BGR), (defective_counts, DEFECTIVE_COLOR_BGR)):
        layer = image.copy()
        for count, bin_low, bin_high in zip(counts, edges[:-1], edges[1:]):
            if count == 0:
                continue
            top_left = axes.to_px(bin_low, count)
            bottom_right = axes.to_px(bin_high, 0.0)
            cv2.rectangle(layer, top_left, bottom_right, color, cv2.FILLED)
            cv2.rectangle(image, top_left, bottom_right, color, 1)
        cv2.addWeighted(layer, 0.45, image, 0.55, 0.0, dst=image)

    threshold_x, _ = axes.to_px(threshold, 0.0)
    _draw_dashed_line(image, (threshold_x, axes.top), (threshold_x, axes.bottom), THRESHOLD_COLOR_BGR, thickness_px=2)
    _draw_text_centered(image, f"threshold {threshold:.4g}", threshold_x, axes.top - 8)

    entries = [
        (GOOD_COLOR_BGR, "box", f"good (n={good_scores.size})"),
        (DEFECTIVE_COLOR_BGR, "box", f"defective (n={defective_scores.size})"),
    ]
    _draw_legend(image, entries, axes.right - 10, axes.top + 10, anchor_top=True)


def _draw_axes(
    image: np.ndarray, axes: _Axes, x_ticks: list[float], y_ticks: list[float], x_label: str, y_label: str
) -> None:
    """Draw grid lines, the frame, tick labels and axis labels."""
    for tick in x_ticks:
        x, _ = axes.to_px(tick, axes.y_range[0])
        cv2.line(image, (x, axes.top), (x, axes.bottom), LIGHT_GREY, 1)
        cv2.line(image, (x, axes.bottom), (x, axes.bottom + 5), BLACK, 1)
        _draw_text_centered(image, _format_tick(tick, x_ticks), x, axes.bottom + 22)
    for tick in y_ticks:
        _, y = axes.to_px(axes.x_range[0], tick)
        cv2.line(image, (axes.left, y), (axes.right, y), LIGHT_GREY, 1)
        cv2.line(image, (axes.left - 5, y), (axes.left, y), BLACK, 1)
        text = _format_tick(tick, y_ticks)
        (text_width, text_height), _ = cv2.getTextSize(text, FONT, TEXT_SCALE, 1)
        _draw_text(image, text, (axes.left - 9 - text_width, y + text_height // 2))

    cv2.rectangle(image, (axes.left, axes.top), (axes.right, axes.bottom), BLACK, 1)
    _draw_text_centered(image, x_label, (axes.left + axes.right) // 2, axes.bottom + 50)
    _draw_vertical_text(image, y_label, axes.left - 62, (axes.top + axes.bottom) // 2)


def _draw_legend(
    image: np.ndarray, entries: list[tuple[tuple[int, int, int], str, str]], right: int, edge: int, anchor_top: bool = False
) -> None:
    """Draw a boxed legend whose right side is at `right` and whose bottom (or top) is at `edge`."""
    line_height_px = 24
    sample_width_px = 28
    text_width = max(cv2.getTextSize(text, FONT, TEXT_SCALE, 1)[0][0] for _, _, text in entries)
    width = sample_width_px + 16 + text_width
    height = line_height_px * len(entries) + 8
    left = right - width
    top = edge if anchor_top else edge - height

    cv2.rectangle(image, (left, top), (right, top + height), WHITE, cv2.FILLED)
    cv2.rectangle(image, (left, top), (right, top + height), GREY, 1)
    for index, (color, style, text) in enumerate(entries):
        center_y = top + 4 + line_height_px * index + line_height_px // 2
        if style == "line":
            cv2.line(image, (left + 6, center_y), (left + 6 + sample_width_px, center_y), color, 2, cv2.LINE_AA)
        elif style == "circle":
            cv2.circle(image, (left + 6 + sample_width_px // 2, center_y), 6, color, 2, cv2.LINE_AA)
        else:
            cv2.rectangle(image, (left + 10, center_y - 7), (left + 2 + sample_width_px, center_y + 7), color, cv2.FILLED)
        _draw_text(image, text, (left + sample_width_px + 12, center_y + 5))


def _draw_dashed_line(
    image: np.ndarray, start: tuple[int, int], end: tuple[int, int], color: tuple[int, int, int], thickness_px: int = 1
) -> None:
    dash_px = 8
    length = math.hypot(end[0] - start[0], end[1] - start[1])
    steps = max(1, int(length // dash_px))
    for step in range(0, steps, 2):
        fraction_start = step / steps
        fraction_end = min(1.0, (step + 1) / steps)
        point_start = (round(start[0] + (end[0] - start[0]) * fraction_start), round(start[1] + (end[1] - start[1]) * fraction_start))
        point_end = (round(start[0] + (end[0] - start[0]) * fraction_end), round(start[1] + (end[1] - start[1]) * fraction_end))
        cv2.line(image, point_start, point_end, color, thickness_px, cv2.LINE_AA)


def _draw_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = TEXT_SCALE, thickness_px: int = 1) -> None:
    cv2.putText(image, text, origin, FONT, scale, BLACK, thickness_px, cv2.LINE_AA)


def _draw_text_centered(
    image: np.ndarray, text: str, center_x: int, baseline_y: int, scale: float = TEXT_SCALE, thickness_px: int = 1
) -> None:
    (text_width, _), _ = cv2.getTextSize(text, FONT, scale, thickness_px)
    _draw_text(image, text, (center_x - text_width // 2, baseline_y), scale, thickness_px)


def _draw_vertical_text(image: np.ndarray, text: str, left: int, center_y: int) -> None:
    """Draw text rotated by 90 degrees counter-clockwise, reading upwards, left edge at `left`."""
    (text_width, text_height), baseline = cv2.getTextSize(text, FONT, TEXT_SCALE, 1)
    strip = np.full((text_height + baseline + 4, text_width + 4, 3), WHITE, dtype=np.uint8)
    cv2.putText(strip, text, (2, text_height + 2), FONT, TEXT_SCALE, BLACK, 1, cv2.LINE_AA)
    rotated = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)

    height, width = rotated.shape[:2]
    top = max(0, center_y - height // 2)
    left = max(0, left)
    bottom = min(image.shape[0], top + height)
    right = min(image.shape[1], left + width)
    image[top:bottom, left:right] = np.minimum(image[top:bottom, left:right], rotated[: bottom - top, : right - left])


def _nice_ticks(low: float, high: float, target_count: int = 6, whole: bool = False) -> list[float]:
    """Return evenly spaced round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    span = high - low if high > low else 1.0
    raw_step = span / max(1, target_count - 1)
    magnitude = 10.0 ** math.floor(math.log10(raw_step))
    step = next(factor * magnitude for factor in (1.0, 2.0, 5.0, 10.0) if factor * magnitude >= raw_step)
    if whole:
        step = max(1.0, round(step))

    first = math.floor(low / step) * step
    last = math.ceil(high / step) * step
    count = int(round((last - first) / step)) + 1
    return [first + index * step for index in range(count)]


def _format_tick(value: float, ticks: list[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{decimals}f}"
