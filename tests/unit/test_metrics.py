from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as sk_metrics

from edge.evaluation.metrics import classification_rates, pixel_auroc, pro_auc, roc_auc, roc_curve


def _tied_scores(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores quantised to a few levels, so many scores tie across classes."""
    labels = rng.integers(0, 2, size)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)
    return labels, scores


def _reference_pro(maps: list[np.ndarray], masks: list[np.ndarray], max_fpr: float) -> float:
    """PRO area by a loop over every distinct threshold, components found by scipy."""
    components = []
    for mask in masks:
        labelled, count = ndimage.label(mask > 0, structure=np.ones((3, 3)))
        components.append([labelled == label for label in range(1, count + 1)])
    negatives = np.concatenate([m[mask == 0] for m, mask in zip(maps, masks)])

    fprs = [0.0]
    pros = [0.0]
    for threshold in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        fprs.append(np.mean(negatives >= threshold))
        overlaps = [np.mean(m[region] >= threshold) for m, regions in zip(maps, components) for region in regions]
        pros.append(np.mean(overlaps))

    area = 0.0
    for index in range(1, len(fprs)):
        x_left, x_right = fprs[index - 1], fprs[index]
        y_left, y_right = pros[index - 1], pros[index]
        if x_right <= max_fpr:
            area += (x_right - x_left) * (y_left + y_right) / 2
        else:
            y_at_max = y_left + (y_right - y_left) * (max_fpr - x_left) / (x_right - x_left)
            area += (max_fpr - x_left) * (y_left + y_at_max) / 2
            break
    return area / max_fpr


def _random_maps(rng: np.random.Generator, count: int, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    maps = []
    masks = []
    for index in range(count):
        mask = np.zeros((size, size), dtype=np.uint8)
        if index % 3:
            for _ in range(rng.integers(1, 4)):
                row, col = rng.integers(0, size - 4, 2)
                height, width = rng.integers(1, 5, 2)
                mask[row : row + height, col : col + width] = 255
        anomaly_map = np.round(rng.normal(0, 1, (size, size)) + 1.5 * (mask > 0), 1).astype(np.float32)
        maps.append(anomaly_map)
        masks.append(mask)
    return maps, masks


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for size in (2, 7, 50, 1000):
        labels, scores = _tied_scores(rng, size)
        labels[:2] = [0, 1]

        assert roc_auc(labels, scores) == pytest.approx(sk_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_hand_computed():
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.5, 0.5, 0.9]

    # Pairs (positive, negative): 0.5 vs 0.1 wins, 0.5 vs 0.5 ties, 0.9 wins twice: (3 + 0.5) / 4.
    assert roc_auc(labels, scores) == pytest.approx(0.875)


def test_roc_auc_perfect_and_inverted():
    assert roc_auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert roc_auc([1, 1, 0], [0.1, 0.2, 0.3]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.4, 0.4, 0.4, 0.4]) == 0.5


def test_roc_auc_empty_class_is_nan():
    assert math.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))
    assert math.isnan(roc_auc([], []))


def test_roc_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="contains 2"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="one score per label"):
        roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(1)
    labels, scores = _tied_scores(rng, 300)

    fpr, tpr, thresholds = roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thresholds = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)

    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert thresholds[0] == np.inf
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(labels, scores))


def test_roc_curve_hand_computed():
    fpr, tpr, thresholds = roc_curve([0, 1, 0, 1], [0.2, 0.8, 0.5, 0.5])

    np.testing.assert_allclose(thresholds, [np.inf, 0.8, 0.5, 0.2])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 1.0])


def test_roc_curve_infinite_scores_tie():
    fpr, tpr, thresholds = roc_curve([0, 1, 1], [0.0, np.inf, np.inf])

    np.testing.assert_allclose(tpr, [0.0, 1.0, 1.0])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 1.0])


def test_roc_curve_empty_class_is_nan():
    fpr, tpr, _ = roc_curve([0, 0], [0.1, 0.2])

    assert np.isnan(tpr).all()
    np.testing.assert_allclose(fpr, [0.0, 0.5, 1.0])

    fpr, tpr, thresholds = roc_curve([], [])
    assert np.isnan(fpr).all()
    assert np.isnan(tpr).all()
    assert thresholds.tolist() == [np.inf]


def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(2)
    maps, masks = _random_maps(rng, 9, 24)

    labels = np.concatenate([(mask > 0).ravel() for mask in masks])
    scores = np.concatenate([m.ravel() for m in maps])

    assert pixel_auroc(maps, masks) == pytest.approx(sk_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert pixel_auroc(np.stack(maps), np.stack(masks)) == pytest.approx(pixel_auroc(maps, masks), abs=1e-12)


def test_pixel_auroc_many_maps():
    rng = np.random.default_rng(7)
    maps, masks = _random_maps(rng, 200, 8)
    maps[0] = maps[0].astype(np.float64)

    labels = np.concatenate([(mask > 0).ravel() for mask in masks])
    scores = np.concatenate([m.ravel() for m in maps])

    assert pixel_auroc(maps, masks) == pytest.approx(sk_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert pro_auc(maps, masks) == pytest.approx(_reference_pro(maps, masks, 0.3), abs=1e-9)


def test_pixel_auroc_leaves_inputs_unchanged():
    rng = np.random.default_rng(3)
    maps, masks = _random_maps(rng, 3, 16)
    copies = [m.copy() for m in maps]

    pixel_auroc(maps, masks)

    for anomaly_map, copy in zip(maps, copies):
        np.testing.assert_array_equal(anomaly_map, copy)


def test_pixel_auroc_tens_of_millions_of_pixels():
    rng = np.random.default_rng(4)
    maps = rng.random((20, 1024, 1024), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=np.uint8)
    masks[:, 100:200, 100:200] = 1
    maps[:, 100:200, 100:200] += 0.5

    # Defect pixels are uniform on [0.5, 1.5) and the rest on [0, 1), so AUROC = 1 - 0.5 * 0.5 * 0.5.
    assert pixel_auroc(maps, masks) == pytest.approx(0.875, abs=2e-3)


def test_pixel_auroc_without_defects_is_nan():
    maps = [np.zeros((4, 4), dtype=np.float32)]

    assert math.isnan(pixel_auroc(maps, [np.zeros((4, 4))]))
    assert math.isnan(pixel_auroc(maps, [np.ones((4, 4))]))
    assert math.isnan(pixel_auroc([], []))


def test_pixel_auroc_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        pixel_auroc([np.zeros((4, 4))], [np.zeros((4, 5))])
    with pytest.raises(ValueError, match="one mask per map"):
        pixel_auroc([np.zeros((4, 4))], [])


def test_pro_auc_hand_computed_one_region():
    anomaly_map = np.array([[0.9, 0.5, 0.8, 0.4], [0.3, 0.2, 0.1, 0.0]])
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])

    # Curve (0, 0) (0, .5) (1/6, .5) (1/6, 1) (2/6, 1): area to 0.3 is 1/12 + (0.3 - 1/6).
    assert pro_auc([anomaly_map], [mask]) == pytest.approx((1 / 12 + 0.3 - 1 / 6) / 0.3)


def test_pro_auc_averages_regions_not_pixels():
    anomaly_map = np.array([[0.9, 0.1, 0.8, 0.2, 0.2, 0.3, 0.0, 0.0]])
    mask = np.array([[1, 0, 1, 1, 1, 0, 0, 0]])

    # At 0.8 both pixels of value >= 0.8 give overlaps 1 and 1/3, so PRO is 2/3 (pixel recall 1/2).
    # Curve (0, 0) (0, .5) (0, 2/3) (.25, 2/3) (.25, 1): area to 0.3 is .25 * 2/3 + .05.
    assert pro_auc([anomaly_map], [mask]) == pytest.approx((0.25 * 2 / 3 + 0.05) / 0.3)


def test_pro_auc_joins_diagonal_pixels():
    anomaly_map = np.array([[0.9, 0.0, 0.0], [0.0, 0.2, 0.2], [0.5, 0.0, 0.0]])
    mask = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])

    # One 8-connected region of 3 pixels: PRO 1/3 at 0.9, FPR 1/6 from 0.5, PRO 1 from 0.2.
    assert pro_auc([anomaly_map], [mask]) == pytest.approx(17 / 27)


def test_pro_auc_matches_threshold_loop():
    rng = np.random.default_rng(5)
    maps, masks = _random_maps(rng, 6, 20)

    for max_fpr in (0.05, 0.3, 1.0):
        assert pro_auc(maps, masks, max_fpr) == pytest.approx(_reference_pro(maps, masks, max_fpr), abs=1e-9)


def test_pro_auc_perfect_detector_is_one():
    anomaly_map = np.zeros((10, 10), dtype=np.float32)
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:4, 2:4] = 1
    mask[7:9, 5:9] = 1
    anomaly_map[mask > 0] = np.linspace(1, 2, int(mask.sum()))

    assert pro_auc([anomaly_map], [mask]) == pytest.approx(1.0)


def test_pro_auc_undefined_is_nan():
    empty_mask = np.zeros((4, 4))

    assert math.isnan(pro_auc([np.zeros((4, 4))], [empty_mask]))
    assert math.isnan(pro_auc([np.zeros((4, 4))], [np.ones((4, 4))]))
    assert math.isnan(pro_auc([], []))


def test_pro_auc_rejects_bad_max_fpr():
    with pytest.raises(ValueError, match="max_fpr"):
        pro_auc([np.zeros((2, 2))], [np.zeros((2, 2))], max_fpr=0.0)
    with pytest.raises(ValueError, match="max_fpr"):
        pro_auc([np.zeros((2, 2))], [np.zeros((2, 2))], max_fpr=1.5)


def test_classification_rates_hand_computed():
    labels = [0, 0, 0, 0, 1, 1, 1]
    predicted = [0, 0, 0, 1, 1, 1, 0]

    rates = classification_rates(labels, predicted)

    assert rates["confusion_matrix"] == [[3, 1], [1, 2]]
    assert rates["accuracy"] == pytest.approx(5 / 7)
    assert rates["precision"] == pytest.approx(2 / 3)
    assert rates["recall"] == pytest.approx(2 / 3)
    assert rates["f1"] == pytest.approx(2 / 3)
    assert rates["false_reject_rate"] == pytest.approx(1 / 4)
    assert rates["escape_rate"] == pytest.approx(1 / 3)


def test_classification_rates_match_sklearn():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 200)
    predicted = rng.integers(0, 2, 200).astype(bool)

    rates = classification_rates(labels, predicted)

    assert rates["confusion_matrix"] == sk_metrics.confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
    assert rates["accuracy"] == pytest.approx(sk_metrics.accuracy_score(labels, predicted))
    assert rates["precision"] == pytest.approx(sk_metrics.precision_score(labels, predicted))
    assert rates["recall"] == pytest.approx(sk_metrics.recall_score(labels, predicted))
    assert rates["f1"] == pytest.approx(sk_metrics.f1_score(labels, predicted))
    assert rates["escape_rate"] == pytest.approx(1 - rates["recall"])


def test_classification_rates_without_defective_parts():
    rates = classification_rates([0, 0, 0], [0, 1, 0])

    assert rates["confusion_matrix"] == [[2, 1], [0, 0]]
    assert rates["false_reject_rate"] == pytest.approx(1 / 3)
    assert rates["precision"] == 0.0
    assert rates["f1"] == 0.0
    assert math.isnan(rates["recall"])
    assert math.isnan(rates["escape_rate"])


def test_classification_rates_without_good_parts():
    rates = classification_rates([1, 1], [0, 0])

    assert rates["escape_rate"] == 1.0
    assert rates["f1"] == 0.0
    assert math.isnan(rates["precision"])
    assert math.isnan(rates["false_reject_rate"])


def test_classification_rates_all_passed_good_parts():
    rates = classification_rates([0, 0], [0, 0])

    assert rates["accuracy"] == 1.0
    assert rates["false_reject_rate"] == 0.0
    assert math.isnan(rates["precision"])
    assert math.isnan(rates["f1"])


def test_classification_rates_empty():
    rates = classification_rates([], [])

    assert rates["confusion_matrix"] == [[0, 0], [0, 0]]
    for key in ("accuracy", "precision", "recall", "f1", "false_reject_rate", "escape_rate"):
        assert math.isnan(rates[key]), key


def test_classification_rates_rejects_length_mismatch():
    with pytest.raises(ValueError, match="one prediction per label"):
        classification_rates([0, 1], [1])
