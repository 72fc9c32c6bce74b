from __future__ import annotations

import numpy as np
import pytest

from edge.parts import Region
from edge.preprocess.transform import Roi
from edge.visualize import REGION_COLOR_BGR, overlay_anomaly_map


def _frame() -> np.ndarray:
    return np.full((120, 160, 3), 60, dtype=np.uint8)


def _hot_map(size_px: int = 16) -> np.ndarray:
    """A map at 0 with a hot top-left quarter at 2."""
    anomaly_map = np.zeros((size_px, size_px), dtype=np.float32)
    anomaly_map[: size_px // 4, : size_px // 4] = 2.0
    return anomaly_map


def test_overlay_colours_hot_area_only():
    frame = _frame()

    overlay = overlay_anomaly_map(frame, _hot_map(), scale_max=2.0)

    assert overlay.shape == frame.shape
    assert overlay.dtype == np.uint8
    # The hot quarter covers the top-left 40x30 pixels of the frame after resizing.
    assert not np.array_equal(overlay[10, 10], frame[10, 10])
    np.testing.assert_array_equal(overlay[60:, 80:], frame[60:, 80:])


def test_overlay_leaves_input_unchanged():
    frame = _frame()
    copy = frame.copy()

    overlay_anomaly_map(frame, _hot_map(), scale_max=2.0, label="FAIL 2.0")

    np.testing.assert_array_equal(frame, copy)


def test_overlay_below_half_scale_not_coloured():
    frame = _frame()

    overlay = overlay_anomaly_map(frame, _hot_map(), scale_max=5.0)

    np.testing.assert_array_equal(overlay, frame)


def test_overlay_places_map_in_roi():
    frame = _frame()
    roi = Roi(x=80, y=60, width=80, height=60)

    overlay = overlay_anomaly_map(frame, _hot_map(), scale_max=2.0, roi=roi)

    # The hot quarter of the map lands in the top-left 20x15 pixels of the ROI.
    assert not np.array_equal(overlay[67, 88], frame[67, 88])
    np.testing.assert_array_equal(overlay[5:55, 5:75], frame[5:55, 5:75])


def test_overlay_draws_regions_in_frame_pixels():
    frame = _frame()
    region = Region(area_px=400, bbox_xywh=(100, 50, 30, 20), peak_score=2.0, peak_xy=(115, 60))

    overlay = overlay_anomaly_map(frame, np.zeros((16, 16), dtype=np.float32), scale_max=1.0, regions=[region])

    assert tuple(overlay[50, 110]) == REGION_COLOR_BGR
    assert tuple(overlay[69, 129]) == REGION_COLOR_BGR
    np.testing.assert_array_equal(overlay[60, 115], frame[60, 115])


def test_overlay_draws_label():
    frame = _frame()

    overlay = overlay_anomaly_map(frame, np.zeros((16, 16), dtype=np.float32), scale_max=1.0, label="FAIL score 3.2")

    assert not np.array_equal(overlay[:20, :80], frame[:20, :80])
    np.testing.assert_array_equal(overlay[40:], frame[40:])


def test_overlay_accepts_grey_frame():
    grey = np.full((40, 50), 90, dtype=np.uint8)

    overlay = overlay_anomaly_map(grey, _hot_map(), scale_max=2.0)

    assert overlay.shape == (40, 50, 3)


def test_overlay_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scale_max"):
        overlay_anomaly_map(_frame(), _hot_map(), scale_max=0.0)
    with pytest.raises(ValueError, match="does not fit"):
        overlay_anomaly_map(_frame(), _hot_map(), scale_max=1.0, roi=Roi(100, 0, 100, 50))
    with pytest.raises(ValueError, match="2-D map"):
        overlay_anomaly_map(_frame(), np.zeros((1, 1, 16, 16)), scale_max=1.0)
    with pytest.raises(ValueError, match="uint8"):
        overlay_anomaly_map(_frame().astype(np.float32), _hot_map(), scale_max=1.0)
