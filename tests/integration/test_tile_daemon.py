"""The daemon running a tile_classifier package on ring-shaped parts, over real sockets and files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.acquisition.synthetic import render_part
from edge.inspector import Inspector
from edge.preprocess.polar import UnwrapSpec
from edge.preprocess.ring import RingSearch
from edge.preprocess.ring_input import tiles_for_model
from edge.preprocess.tiling import TileSpec
from tests.fixtures import make_tile_classifier_package
from tests.integration.subscriber import run_folder

WASHER_SECTION = {
    "search": RingSearch().to_dict(),
    "unwrap": UnwrapSpec(radial_px=16, angular_px=256).to_dict(),
    "tiles": TileSpec(tile_height_px=16, tile_width_px=16, stride_px=8).to_dict(),
}


def test_blank_frame_rejected_ring_not_found(tmp_path):
    package = make_tile_classifier_package(tmp_path / "model", ring=WASHER_SECTION, threshold=0.6)
    folder = tmp_path / "images"
    folder.mkdir()
    washer, _ = render_part(np.random.default_rng(1), None, size_px=256)
    cv2.imwrite(str(folder / "a_washer.png"), washer)
    cv2.imwrite(str(folder / "b_blank.png"), np.full((256, 256, 3), 90, np.uint8))

    summary, collector = run_folder(package, folder, 2)

    by_ref = {header["source_ref"]: header for header in collector.results}
    blank = by_ref["b_blank.png"]
    assert blank["verdict"] == "REJECT"
    assert blank["reason"] == "ring_not_found"
    assert "radius" in blank["detail"]
    assert by_ref["a_washer.png"]["verdict"] in ("PASS", "FAIL")
    assert summary["rejected_by_reason"]["ring_not_found"] == 1
    assert summary["rejected_by_reason"]["preprocess_error"] == 0


def test_published_map_covers_frame(tmp_path):
    package = make_tile_classifier_package(tmp_path / "model", ring=WASHER_SECTION, threshold=0.3)
    folder = tmp_path / "images"
    folder.mkdir()
    washer, _ = render_part(np.random.default_rng(2), None, size_px=256)
    cv2.imwrite(str(folder / "washer.png"), washer)
    expected_tiles, _ = tiles_for_model(washer, WASHER_SECTION)
    expected_score = float(((expected_tiles.reshape(len(expected_tiles), -1).mean(axis=1)) + 0.5).max() / 256)

    _, collector = run_folder(package, folder, 1)

    header, anomaly_map = collector.results[0], collector.maps[0]
    assert header["verdict"] == "FAIL"
    assert header["image_score"] == pytest.approx(expected_score, abs=1e-4)
    assert header["map_frame_xywh"] == [0, 0, 256, 256]
    assert anomaly_map.shape == (256, 256)
    assert header["regions"]
    region = header["regions"][0]
    assert 0 <= region["peak_angle_deg"] < 360
    assert 0 < region["peak_radius_px"] <= 0.45 * 256
    # Corners lie outside every part's ring.
    assert float(anomaly_map[:10, :10].max()) == 0.0


def test_region_polar_fields_match_peak(tmp_path):
    package = make_tile_classifier_package(tmp_path / "model", ring=WASHER_SECTION, threshold=0.3)
    inspector = Inspector.from_path(package)
    washer, _ = render_part(np.random.default_rng(2), None, size_px=256)

    inspection = inspector.inspect(washer)

    ring = inspection.ring
    for region in inspection.regions:
        x, y = region.peak_xy
        radius = np.hypot((x - ring.centre_x), (y - ring.centre_y))
        angle = np.degrees(np.arctan2(y - ring.centre_y, x - ring.centre_x)) % 360
        # The ring is nearly circular, so image distance and angle agree with the upright circle's.
        assert abs(region.peak_radius_px - radius) <= 0.05 * radius + 1
        assert min(abs(region.peak_angle_deg - angle), 360 - abs(region.peak_angle_deg - angle)) <= 3


@pytest.mark.real_data
def test_impeller_tiles_have_package_size(real_data, tmp_path):
    folder = real_data / "casting_impeller" / "test"
    paths = sorted((folder / "ok_front").glob("*.jpeg"))[:3] + sorted((folder / "def_front").glob("*.jpeg"))[:3]
    if len(paths) < 6:
        pytest.skip(f"{folder} lacks ok_front/ and def_front/ images")
    section = {
        "search": RingSearch().to_dict(),
        "unwrap": UnwrapSpec(radial_px=64, angular_px=512).to_dict(),
        "tiles": TileSpec(tile_height_px=64, tile_width_px=64, stride_px=32).to_dict(),
    }
    package = make_tile_classifier_package(tmp_path / "model", tile_height_px=64, tile_width_px=64, ring=section)
    inspector = Inspector.from_path(package)

    for path in paths:
        image = cv2.imread(str(path))
        model_input = inspector.preprocess(image)
        assert model_input.tensor.shape == (16, 3, 64, 64), path.name
        assert model_input.tensor.dtype == np.float32
        inspection = inspector.inspect(image)
        assert inspection.anomaly_map.shape == image.shape[:2]
        assert 0 <= inspection.image_score <= 1
