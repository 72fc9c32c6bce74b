"""Localisation metrics on hand-made maps: pointing game, mass in boxes, boxes file checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge.evaluation.localisation import (
    LocalisationScore,
    box_coverage,
    load_boxes,
    localisation_metrics,
    localisation_summary,
    map_peak_in_frame,
    parse_boxes,
    score_localisation,
)


def test_peak_at_frame_resolution():
    anomaly_map = np.zeros((10, 20), np.float32)
    anomaly_map[3, 7] = 1.0

    assert map_peak_in_frame(anomaly_map, (100, 50, 20, 10)) == (107.5, 53.5)


def test_peak_scaled_map_and_first_tie():
    anomaly_map = np.zeros((4, 4), np.float32)
    anomaly_map[1, 2] = 5.0
    anomaly_map[3, 0] = 5.0

    # Each map pixel covers 10x5 frame pixels; the first maximum in row-major order wins.
    assert map_peak_in_frame(anomaly_map, (0, 0, 40, 20)) == (25.0, 7.5)


def test_hit_and_mass_at_frame_resolution():
    anomaly_map = np.zeros((10, 10), np.float32)
    anomaly_map[2, 3] = 3.0
    anomaly_map[8, 8] = 1.0

    score = score_localisation(anomaly_map, (0, 0, 10, 10), [(3, 2, 4, 3)])

    assert score.hit is True
    assert score.mass_in_boxes == pytest.approx(0.75)
    assert score.peak_xy == (3.5, 2.5)


def test_box_half_open():
    anomaly_map = np.zeros((10, 10), np.float32)
    anomaly_map[2, 3] = 1.0

    # x1 = 3 excludes column 3, y0 = 3 excludes row 2.
    assert score_localisation(anomaly_map, (0, 0, 10, 10), [(0, 0, 3, 10)]).hit is False
    assert score_localisation(anomaly_map, (0, 0, 10, 10), [(0, 3, 10, 10)]).hit is False
    assert score_localisation(anomaly_map, (0, 0, 10, 10), [(3, 2, 4, 3)]).mass_in_boxes == pytest.approx(1.0)


def test_union_of_boxes_counted_once():
    anomaly_map = np.ones((4, 4), np.float32)

    score = score_localisation(anomaly_map, (0, 0, 4, 4), [(0, 0, 2, 2), (1, 1, 3, 3)])

    # The union covers 7 of 16 pixels, although the boxes cover 8 together.
    assert score.mass_in_boxes == pytest.approx(7 / 16)
    assert score.hit is True  # the first maximum, pixel (0, 0), lies in the first box


def test_second_box_hit():
    anomaly_map = np.zeros((8, 8), np.float32)
    anomaly_map[6, 6] = 2.0

    score = score_localisation(anomaly_map, (0, 0, 8, 8), [(0, 0, 2, 2), (5, 5, 8, 8)])

    assert score.hit is True
    assert score.mass_in_boxes == pytest.approx(1.0)


def test_map_offset_by_roi():
    anomaly_map = np.zeros((10, 10), np.float32)
    anomaly_map[0, 0] = 1.0

    inside = score_localisation(anomaly_map, (30, 20, 10, 10), [(30, 20, 31, 21)])
    before_offset = score_localisation(anomaly_map, (30, 20, 10, 10), [(0, 0, 1, 1)])

    assert inside.hit is True
    assert inside.mass_in_boxes == pytest.approx(1.0)
    assert before_offset.hit is False
    assert before_offset.mass_in_boxes == 0.0


def test_coarse_map_area_share():
    # A 2x2 map over a 20x20 frame: each map pixel covers 10x10 frame pixels.
    anomaly_map = np.array([[1.0, 0.0], [0.0, 3.0]], np.float32)

    score = score_localisation(anomaly_map, (0, 0, 20, 20), [(0, 0, 5, 10)])

    # The box covers half of the top-left map pixel: 0.5 of mass 1 out of a total of 4.
    assert score.mass_in_boxes == pytest.approx(0.5 / 4)
    assert score.hit is False  # the peak is the bottom-right pixel, centred at (15, 15)
    assert score.peak_xy == (15.0, 15.0)


def test_coverage_of_fractional_box():
    coverage = box_coverage((4, 4), (0, 0, 4, 4), [(0.6, 0.0, 2.4, 1.0)])

    # Pixel centres 0.5 and 2.5 lie outside [0.6, 2.4); 1.5 lies inside.
    np.testing.assert_array_equal(coverage[0], [0.0, 1.0, 0.0, 0.0])
    assert float(coverage[1:].sum()) == 0.0


def test_negative_values_count_as_zero():
    anomaly_map = np.full((4, 4), -2.0, np.float32)
    anomaly_map[0, 0] = 1.0
    anomaly_map[3, 3] = 1.0

    score = score_localisation(anomaly_map, (0, 0, 4, 4), [(0, 0, 1, 1)])

    assert score.mass_in_boxes == pytest.approx(0.5)
    assert score.hit is True


def test_zero_map_misses():
    for anomaly_map in (np.zeros((4, 4), np.float32), np.full((4, 4), -1.0, np.float32)):
        score = score_localisation(anomaly_map, (0, 0, 4, 4), [(0, 0, 4, 4)])

        assert score.hit is False
        assert score.mass_in_boxes == 0.0
        assert score.peak_xy is None


def test_non_finite_map_rejected():
    anomaly_map = np.zeros((4, 4), np.float32)
    anomaly_map[1, 1] = np.nan

    with pytest.raises(ValueError, match="not finite"):
        score_localisation(anomaly_map, (0, 0, 4, 4), [(0, 0, 4, 4)])


def test_summary_figures():
    scores = [
        LocalisationScore(True, 0.9, (1.0, 1.0)),
        LocalisationScore(False, 0.1, (2.0, 2.0)),
        LocalisationScore(True, 0.5, (3.0, 3.0)),
        LocalisationScore(False, 0.0, None),
    ]

    metrics = localisation_metrics(scores, [True, True, False, False])

    assert metrics["images_with_boxes"] == 4
    assert metrics["pointing_game_hits"] == 2
    assert metrics["pointing_game_rate"] == pytest.approx(0.5)
    assert metrics["mean_mass_in_boxes"] == pytest.approx(1.5 / 4)
    assert metrics["median_mass_in_boxes"] == pytest.approx(0.3)
    detected = metrics["detected"]
    assert detected["images_with_boxes"] == 2
    assert detected["pointing_game_hits"] == 1
    assert detected["pointing_game_rate"] == pytest.approx(0.5)
    assert detected["mean_mass_in_boxes"] == pytest.approx(0.5)
    assert detected["median_mass_in_boxes"] == pytest.approx(0.5)


def test_summary_without_images():
    summary = localisation_summary([])

    assert summary["images_with_boxes"] == 0
    assert summary["pointing_game_hits"] == 0
    assert math.isnan(summary["pointing_game_rate"])
    assert math.isnan(summary["mean_mass_in_boxes"])
    assert math.isnan(summary["median_mass_in_boxes"])


def test_metrics_flag_count_mismatch():
    with pytest.raises(ValueError, match="one flag per score"):
        localisation_metrics([LocalisationScore(True, 1.0, (0.0, 0.0))], [])


def test_parse_boxes_valid():
    data = {"format": "xyxy", "windows": {"dent/a.png": [[1, 2, 3, 4], [0, 0, 10.5, 8]], "good/b.png": []}}

    boxes = parse_boxes(data)

    assert boxes == {"dent/a.png": [(1.0, 2.0, 3.0, 4.0), (0.0, 0.0, 10.5, 8.0)]}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([[5, 2, 5, 4]], "x1 > x0"),
        ([[1, 4, 3, 2]], "y1 > y0"),
        ([[-1, 2, 3, 4]], "negative coordinate"),
        ([[1, 2, 3]], "four finite numbers"),
        ([[1, 2, 3, "4"]], "four finite numbers"),
        ([[1, 2, 3, float("nan")]], "four finite numbers"),
        ([[True, 2, 3, 4]], "four finite numbers"),
        ([1, 2, 3, 4], "four finite numbers"),
        ("1,2,3,4", "list of boxes"),
    ],
)
def test_parse_boxes_bad_box_names_key(entries, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_boxes({"windows": {"dent/a.png": entries}}, "boxes.json")

    assert "'dent/a.png'" in str(caught.value)
    assert str(caught.value).startswith("boxes.json: ")


def test_parse_boxes_bad_layout():
    for data in ([], {"format": "xyxy"}, {"windows": [["dent/a.png", [0, 0, 1, 1]]]}):
        with pytest.raises(ValueError, match="expected"):
            parse_boxes(data)


def test_load_boxes_file_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_boxes(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_boxes(broken)
    valid = tmp_path / "boxes.json"
    valid.write_text(json.dumps({"format": "xyxy", "windows": {"dent/a.png": [[0, 0, 2, 2]]}}), encoding="utf-8")
    assert load_boxes(valid) == {"dent/a.png": [(0.0, 0.0, 2.0, 2.0)]}
