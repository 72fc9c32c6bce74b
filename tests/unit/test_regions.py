import numpy as np

from edge.decision.regions import find_regions


def test_components_sorted_by_area_with_peaks():
    anomaly_map = np.zeros((20, 20), np.float32)
    anomaly_map[2:4, 2:4] = 2.0
    anomaly_map[10:16, 10:14] = 1.5
    anomaly_map[12, 11] = 3.0
    regions = find_regions(anomaly_map, 1.0, (1.0, 1.0, 0, 0))
    assert [region.area_px for region in regions] == [24, 4]
    assert regions[0].bbox_xywh == (10, 10, 4, 6)
    assert regions[0].peak_score == 3.0
    assert regions[0].peak_xy == (11, 12)


def test_regions_scaled_to_frame():
    anomaly_map = np.zeros((10, 10), np.float32)
    anomaly_map[1:3, 4:6] = 1.0
    (region,) = find_regions(anomaly_map, 0.5, (4.0, 2.0, 100, 50))
    assert region.bbox_xywh == (116, 52, 8, 4)
    assert region.area_px == 32


def test_small_regions_dropped_and_count_limited():
    anomaly_map = np.zeros((30, 30), np.float32)
    for index in range(5):
        anomaly_map[index * 5, index * 5] = 1.0
    anomaly_map[20:25, 0:5] = 1.0
    regions = find_regions(anomaly_map, 0.5, (1.0, 1.0, 0, 0), min_area_px=2)
    assert len(regions) == 1
    assert len(find_regions(anomaly_map, 0.5, (1.0, 1.0, 0, 0), max_regions=3)) == 3


def test_map_below_threshold_has_no_regions():
    assert find_regions(np.zeros((8, 8), np.float32), 0.1, (1.0, 1.0, 0, 0)) == []
