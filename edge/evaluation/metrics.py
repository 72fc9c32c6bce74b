"""Detection metrics for anomaly scores: ROC, AUROC, per-region overlap and pass/fail rates.

Labels are 0 for good and 1 for defective, at image level and at pixel level. A higher score
means more anomalous. Where a metric is undefined because a class is empty (no good parts, no
defective parts, no defect pixels), the functions return NaN instead of raising, so one report
can show what is defined and what is not. Only numpy and OpenCV are used, so the daemon's
dependencies suffice.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# The per-region-overlap area is reported up to this false-positive rate, as in MVTec AD.
DEFAULT_PRO_MAX_FPR = 0.3

# Positives are ranked against the negatives in chunks of this many scores, so the temporary
# index arrays stay small even for tens of millions of pixels.
_RANK_CHUNK_SIZE = 1 << 20


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (fpr, tpr, thresholds) at every distinct score, thresholds from +inf down.

    A sample counts as positive at threshold t when its score is >= t. The first point is
    (0, 0) at threshold +inf, and the last point is (1, 1) at the lowest score. Unlike
    scikit-learn's default, no collinear points are dropped. `fpr` is all NaN when there are
    no good samples, and `tpr` is all NaN when there are no defective samples.
    """
    labels, scores = _validate_scores(labels, scores)
    if scores.size == 0:
        return np.array([np.nan]), np.array([np.nan]), np.array([np.inf])

    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    sorted_labels = labels[order]

    # The last index of each run of equal scores: all samples up to it are positive at that threshold.
    last_of_run = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
    last_of_run = np.append(last_of_run, sorted_scores.size - 1)

    true_positives = np.cumsum(sorted_labels)[last_of_run]
    false_positives = last_of_run + 1 - true_positives

    true_positives = np.concatenate(([0], true_positives)).astype(np.float64)
    false_positives = np.concatenate(([0], false_positives)).astype(np.float64)
    thresholds = np.concatenate(([np.inf], sorted_scores[last_of_run].astype(np.float64)))

    positive_count = true_positives[-1]
    negative_count = false_positives[-1]
    tpr = true_positives / positive_count if positive_count > 0 else np.full_like(true_positives, np.nan)
    fpr = false_positives / negative_count if negative_count > 0 else np.full_like(false_positives, np.nan)
    return fpr, tpr, thresholds


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Return the area under the ROC curve, or NaN when either class is empty.

    Tied scores count half, which equals the trapezoidal area under `roc_curve` and
    scikit-learn's `roc_auc_score`.
    """
    labels, scores = _validate_scores(labels, scores)
    return _auc_from_classes(scores[labels == 0], scores[labels == 1])


def pixel_auroc(anomaly_maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray) -> float:
    """Return the AUROC over all pixels of all maps, where mask pixels > 0 are defective.

    Maps and masks are paired by index and must have equal shapes. The defect-free scores are
    copied once, in the maps' dtype, and sorted in place. The defect pixels are then ranked
    against them in chunks, so the extra memory is about one score per pixel.
    Returns NaN when there are no defect pixels or no defect-free pixels.
    """
    negatives, positives = _split_pixels(anomaly_maps, masks)
    return _auc_from_classes(negatives, positives)


def pro_auc(
    anomaly_maps: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    max_fpr: float = DEFAULT_PRO_MAX_FPR,
) -> float:
    """Return the normalised area under the per-region-overlap curve up to `max_fpr` (MVTec AD).

    At a threshold t, the per-region overlap (PRO) is the mean, over all ground-truth connected
    components of all masks (8-connectivity), of the share of the component's pixels with score
    >= t. The false-positive rate is the share of defect-free pixels of all maps with score >= t.
    The curve through these points at every distinct score, starting at (0, 0), is integrated
    with the trapezoidal rule up to `max_fpr`, interpolating PRO linearly at `max_fpr`, and
    divided by `max_fpr`, so a perfect detector scores 1. Returns NaN when the masks contain no
    defect pixels or the maps no defect-free pixels.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr is {max_fpr}; pass a false-positive rate in (0, 1], for example 0.3")

    maps, binary_masks = _validate_maps(anomaly_maps, masks)

    region_scores: list[np.ndarray] = []
    region_weights: list[np.ndarray] = []
    region_count = 0
    for anomaly_map, mask in zip(maps, binary_masks):
        count, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        if count <= 1:
            continue
        labels = components[mask]
        areas = np.bincount(labels, minlength=count)
        region_scores.append(anomaly_map[mask])
        region_weights.append(1.0 / areas[labels])
        region_count += count - 1

    negatives = _gather_pixels(maps, binary_masks, defective=False)
    if region_count == 0 or negatives.size == 0:
        return float("nan")
    negatives.sort()

    # Each defect pixel carries 1 / (its component's area * component count), so the sum over the
    # pixels at or above a threshold is the mean overlap over components.
    positives = np.concatenate(region_scores)
    weights = np.concatenate(region_weights) / region_count
    order = np.argsort(positives, kind="stable")
    positives = positives[order]
    overlap_at_or_above = np.concatenate((np.cumsum(weights[order][::-1])[::-1], [0.0]))

    # Thresholds below the highest one whose FPR exceeds max_fpr cannot change the area, so only
    # the top max_fpr share of the negatives (plus one beyond) becomes a candidate threshold.
    first_negative = max(0, negatives.size - int(np.ceil(max_fpr * negatives.size)) - 1)
    lowest_threshold = negatives[first_negative]
    thresholds = np.unique(np.concatenate((negatives[first_negative:], positives[positives >= lowest_threshold])))[::-1]

    fpr = (negatives.size - np.searchsorted(negatives, thresholds, side="left")) / negatives.size
    pro = overlap_at_or_above[np.searchsorted(positives, thresholds, side="left")]
    fpr = np.concatenate(([0.0], np.minimum(fpr, 1.0)))
    pro = np.concatenate(([0.0], np.minimum(pro, 1.0)))

    return _partial_trapezoid(fpr, pro, max_fpr) / max_fpr


def classification_rates(labels: np.ndarray, predicted_defective: np.ndarray) -> dict:
    """Return pass/fail rates of predictions against labels (0 good, 1 defective).

    Keys: accuracy, precision, recall, f1, false_reject_rate (good parts failed / good parts),
    escape_rate (defective parts passed / defective parts) and confusion_matrix as
    [[tn, fp], [fn, tp]] of ints. A rate whose denominator is zero is NaN. That is precision
    when no part is predicted defective, recall and escape_rate without defective parts, and
    false_reject_rate without good parts. f1 is 2tp / (2tp + fp + fn), so it is NaN only when
    there are no defective parts and none is predicted defective, and 0 when defective parts
    exist but none is caught. accuracy is NaN when there are no parts.
    """
    labels = _validate_labels(labels, "labels")
    predicted = _validate_labels(predicted_defective, "predicted_defective")
    if labels.shape != predicted.shape:
        raise ValueError(
            f"labels has {labels.size} entries and predicted_defective {predicted.size}; pass one prediction per label"
        )

    true_positives = int(np.count_nonzero(labels & predicted))
    false_positives = int(np.count_nonzero(~labels & predicted))
    false_negatives = int(np.count_nonzero(labels & ~predicted))
    true_negatives = int(np.count_nonzero(~labels & ~predicted))

    return {
        "accuracy": _ratio(true_positives + true_negatives, labels.size),
        "precision": _ratio(true_positives, true_positives + false_positives),
        "recall": _ratio(true_positives, true_positives + false_negatives),
        "f1": _ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives),
        "false_reject_rate": _ratio(false_positives, false_positives + true_negatives),
        "escape_rate": _ratio(false_negatives, false_negatives + true_positives),
        "confusion_matrix": [[true_negatives, false_positives], [false_negatives, true_positives]],
    }


def _auc_from_classes(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Return P(positive > negative) + P(positive == negative) / 2, the AUROC with ties.

    Sorts `negatives` in place.
    """
    if negatives.size == 0 or positives.size == 0:
        return float("nan")
    negatives.sort()

    # Twice the Mann-Whitney U: each negative below a positive counts 2 and each tie counts 1.
    twice_u = 0
    for start in range(0, positives.size, _RANK_CHUNK_SIZE):
        chunk = positives[start : start + _RANK_CHUNK_SIZE]
        below = np.searchsorted(negatives, chunk, side="left")
        at_or_below = np.searchsorted(negatives, chunk, side="right")
        twice_u += int(below.sum(dtype=np.int64)) + int(at_or_below.sum(dtype=np.int64))

    return twice_u / (2.0 * negatives.size * positives.size)


def _partial_trapezoid(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Integrate the polyline through (x, y), x non-decreasing, from x[0] to x_max."""
    inside = int(np.searchsorted(x, x_max, side="right"))
    area = float(np.sum((x[1:inside] - x[: inside - 1]) * (y[1:inside] + y[: inside - 1]) / 2.0))

    # The segment that crosses x_max contributes up to x_max, with y interpolated there.
    if inside < x.size and x[inside - 1] < x_max:
        x_left, y_left = x[inside - 1], y[inside - 1]
        y_at_max = y_left + (y[inside] - y_left) * (x_max - x_left) / (x[inside] - x_left)
        area += (x_max - x_left) * (y_left + y_at_max) / 2.0
    return area


def _split_pixels(
    anomaly_maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return (defect-free scores, defect scores) over all maps, each one flat array."""
    maps, binary_masks = _validate_maps(anomaly_maps, masks)
    return _gather_pixels(maps, binary_masks, defective=False), _gather_pixels(maps, binary_masks, defective=True)


def _gather_pixels(maps: list[np.ndarray], binary_masks: list[np.ndarray], defective: bool) -> np.ndarray:
    """Copy the defect (or defect-free) pixels of all maps into one preallocated flat array."""
    counts = [int(np.count_nonzero(mask)) if defective else mask.size - int(np.count_nonzero(mask)) for mask in binary_masks]
    dtype = np.result_type(*{anomaly_map.dtype for anomaly_map in maps}) if maps else np.float64
    pixels = np.empty(sum(counts), dtype=dtype)

    start = 0
    for anomaly_map, mask, count in zip(maps, binary_masks, counts):
        pixels[start : start + count] = anomaly_map[mask] if defective else anomaly_map[~mask]
        start += count
    return pixels


def _validate_maps(
    anomaly_maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Return the maps as 2-D arrays and the masks as boolean arrays of the same shapes."""
    if len(anomaly_maps) != len(masks):
        raise ValueError(f"got {len(anomaly_maps)} anomaly maps and {len(masks)} masks; pass one mask per map")

    maps = []
    binary_masks = []
    for index, (anomaly_map, mask) in enumerate(zip(anomaly_maps, masks)):
        anomaly_map = np.asarray(anomaly_map)
        mask = np.asarray(mask)
        if anomaly_map.ndim != 2 or anomaly_map.shape != mask.shape:
            raise ValueError(
                f"anomaly map {index} has shape {anomaly_map.shape} and its mask {mask.shape}; "
                "pass 2-D maps with masks of the same shape"
            )
        if np.isnan(anomaly_map).any():
            raise ValueError(f"anomaly map {index} contains NaN scores; check the model output")
        maps.append(anomaly_map)
        binary_masks.append(mask > 0)
    return maps, binary_masks


def _validate_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = _validate_labels(labels, "labels").astype(np.int64)
    scores = np.asarray(scores).ravel()
    if labels.size != scores.size:
        raise ValueError(f"labels has {labels.size} entries and scores {scores.size}; pass one score per label")
    nan_count = int(np.count_nonzero(np.isnan(scores)))
    if nan_count:
        raise ValueError(f"scores contain {nan_count} NaN values; check the model output")
    return labels, scores


def _validate_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Return labels as a flat boolean array, raising ValueError unless every value is 0 or 1."""
    labels = np.asarray(labels).ravel()
    invalid = labels[(labels != 0) & (labels != 1)]
    if invalid.size:
        raise ValueError(f"{name} contains {invalid[0].item()!r}; use 0 for good and 1 for defective")
    return labels.astype(bool)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")
