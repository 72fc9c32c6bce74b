"""The tile_classifier model kind and ring preprocessing, with torch-free ONNX packages."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.acquisition.synthetic import render_part
from edge.inference.package import PackageError
from edge.inference.tile_classifier import tile_anomaly_maps
from edge.inspector import Inspector
from edge.parts import Verdict
from edge.preprocess.polar import UnwrapSpec, rotate_strip, unwrap
from edge.preprocess.ring import Ring, RingNotFound, RingSearch, find_ring
from edge.preprocess.ring_input import RingSection, strip_for_model, tiles_for_model
from edge.preprocess.tiling import TileSpec
from edge.preprocess.transform import Preprocessor
from tests.fixtures import make_brightness_package, make_tile_classifier_package

FRAME_PX = 200
RING = Ring(centre_x=100.0, centre_y=100.0, inner_radius_px=40.0, outer_radius_px=80.0)
UNWRAP = UnwrapSpec(radial_px=16, angular_px=128)
TILES = TileSpec(tile_height_px=16, tile_width_px=16, stride_px=16)


def fixed_ring_section(tiles: TileSpec | None = TILES, unwrap_spec: UnwrapSpec = UNWRAP) -> dict:
    return {
        "search": RingSearch(fixed=RING).to_dict(),
        "unwrap": unwrap_spec.to_dict(),
        "tiles": tiles.to_dict() if tiles else None,
    }


def spot_image(angle_deg: float, radius_px: float, value: int = 255, spot_radius_px: int = 6) -> np.ndarray:
    """A black frame with one bright disc at a polar position around RING's centre."""
    image = np.zeros((FRAME_PX, FRAME_PX, 3), np.uint8)
    x = RING.centre_x + radius_px * math.cos(math.radians(angle_deg))
    y = RING.centre_y + radius_px * math.sin(math.radians(angle_deg))
    cv2.circle(image, (round(x), round(y)), spot_radius_px, (value, value, value), -1)
    return image


@pytest.fixture
def tile_package(tmp_path: Path) -> Path:
    return make_tile_classifier_package(tmp_path / "tiles", ring=fixed_ring_section(), threshold=0.05)


def test_tile_maps_peak_at_probability():
    probabilities = np.array([0.2, 0.9, 0.5], np.float32)
    cams = np.zeros((3, 2, 2), np.float32)
    cams[0] = [[1.0, 2.0], [0.0, 4.0]]
    cams[1] = [[3.0, 3.0], [3.0, 3.0]]

    maps = tile_anomaly_maps(probabilities, cams)

    np.testing.assert_allclose(maps[0], [[0.05, 0.1], [0.0, 0.2]], rtol=1e-6)
    np.testing.assert_allclose(maps[1], np.full((2, 2), 0.9), rtol=1e-6)
    # A CAM that is nowhere positive spreads the probability over the tile.
    np.testing.assert_allclose(maps[2], np.full((2, 2), 0.5), rtol=1e-6)


def test_tile_maps_resized_keep_peak():
    cams = np.zeros((1, 4, 4), np.float32)
    cams[0, 1, 2] = 8.0

    maps = tile_anomaly_maps(np.array([0.7], np.float32), cams, (16, 16))

    assert maps.shape == (1, 16, 16)
    assert float(maps.max()) == pytest.approx(0.7, rel=1e-6)
    peak_row, peak_column = np.unravel_index(int(np.argmax(maps[0])), (16, 16))
    assert 4 <= peak_row < 8
    assert 8 <= peak_column < 12


def test_uniform_frame_scores_brightness(tile_package):
    inspector = Inspector.from_path(tile_package)
    image = np.full((FRAME_PX, FRAME_PX, 3), 200, np.uint8)

    model_input = inspector.preprocess(image)
    inspection = inspector.inspect(image)

    assert model_input.tensor.shape == (8, 3, 16, 16)
    assert model_input.tile_origins == [(0, column) for column in range(0, 128, 16)]
    assert model_input.strip_shape == (16, 128)
    assert inspection.image_score == pytest.approx(200.5 / 256, abs=1e-6)
    assert inspection.verdict is Verdict.FAIL
    assert inspection.anomaly_map.shape == (FRAME_PX, FRAME_PX)


def test_tile_input_batches_dynamically(tmp_path):
    package = make_tile_classifier_package(
        tmp_path / "tiles", ring=fixed_ring_section(TileSpec(16, 16, 8)), threshold=0.05
    )
    inspector = Inspector.from_path(package)

    model_input = inspector.preprocess(np.full((FRAME_PX, FRAME_PX, 3), 10, np.uint8))

    assert model_input.tensor.shape == (16, 3, 16, 16)
    assert inspector.infer(model_input).image_score == pytest.approx(10.5 / 256, abs=1e-6)


def test_spot_fails_and_map_lands_on_it(tile_package):
    inspector = Inspector.from_path(tile_package)
    # Column 40 of 128 (the middle of tile 2) lies at 112.5 degrees; row 8 of 16 at radius 62.5 px.
    image = spot_image(angle_deg=112.5, radius_px=62.5)

    inspection = inspector.inspect(image)

    assert inspection.verdict is Verdict.FAIL
    peak_y, peak_x = np.unravel_index(int(np.argmax(inspection.anomaly_map)), inspection.anomaly_map.shape)
    spot_x = RING.centre_x + 62.5 * math.cos(math.radians(112.5))
    spot_y = RING.centre_y + 62.5 * math.sin(math.radians(112.5))
    assert math.hypot(peak_x - spot_x, peak_y - spot_y) <= 6
    assert float(inspection.anomaly_map.max()) == pytest.approx(inspection.image_score, rel=1e-3)


def test_map_is_zero_off_the_ring(tile_package):
    inspector = Inspector.from_path(tile_package)

    anomaly_map = inspector.inspect(np.full((FRAME_PX, FRAME_PX, 3), 220, np.uint8)).anomaly_map

    ys, xs = np.mgrid[0:FRAME_PX, 0:FRAME_PX]
    radius = np.hypot(xs - RING.centre_x, ys - RING.centre_y)
    assert np.all(anomaly_map[radius > RING.outer_radius_px + 1] == 0)
    assert np.all(anomaly_map[radius < RING.inner_radius_px - 1] == 0)
    assert np.all(anomaly_map[(radius > 45) & (radius < 75)] > 0)


def test_region_reports_polar_position(tile_package):
    inspector = Inspector.from_path(tile_package)

    inspection = inspector.inspect(spot_image(angle_deg=112.5, radius_px=62.5))

    region = inspection.regions[0]
    assert abs(region.peak_angle_deg - 112.5) <= 5
    assert abs(region.peak_radius_px - 62.5) <= 6
    assert set(region.to_dict()) >= {"peak_angle_deg", "peak_radius_px"}


def test_region_angle_grows_clockwise(tile_package):
    inspector = Inspector.from_path(tile_package)
    x = RING.centre_x + 60.0 * math.cos(math.radians(292.5))
    y = RING.centre_y + 60.0 * math.sin(math.radians(292.5))

    inspection = inspector.inspect(spot_image(angle_deg=292.5, radius_px=60.0))

    # 292.5 degrees lies up and to the right of the centre on screen, because image y points down.
    assert x > RING.centre_x
    assert y < RING.centre_y
    region = inspection.regions[0]
    assert abs(region.peak_angle_deg - 292.5) <= 5
    assert abs(region.peak_radius_px - 60.0) <= 6


def test_ring_found_on_rendered_washer(tmp_path):
    package = make_tile_classifier_package(
        tmp_path / "tiles",
        ring={"search": RingSearch().to_dict(), "unwrap": UnwrapSpec(16, 256).to_dict(), "tiles": TileSpec(16, 16, 8).to_dict()},
    )
    inspector = Inspector.from_path(package)
    image, _ = render_part(np.random.default_rng(3), None, size_px=256)

    inspection = inspector.inspect(image)

    assert inspection.ring is not None
    # render_part draws the part's offset from the image centre first.
    offset_x, offset_y = np.random.default_rng(3).uniform(-0.016, 0.016, size=2) * 256
    assert abs(inspection.ring.centre_x - (127.5 + offset_x)) <= 3
    assert abs(inspection.ring.centre_y - (127.5 + offset_y)) <= 3


def test_washer_score_matches_tiles(tmp_path):
    section = {"search": RingSearch().to_dict(), "unwrap": UnwrapSpec(16, 256).to_dict(), "tiles": TileSpec(16, 16, 8).to_dict()}
    package = make_tile_classifier_package(tmp_path / "tiles", ring=section)
    inspector = Inspector.from_path(package)
    image, _ = render_part(np.random.default_rng(5), "stain", size_px=256)

    tiles, origins = tiles_for_model(image, section)
    inspection = inspector.inspect(image)

    # (mean grey level + 0.5) / 256 per tile, computed from the uint8 tiles without the model.
    expected = (tiles.reshape(len(tiles), -1).astype(np.float64).mean(axis=1) + 0.5) / 256
    assert len(origins) == 32
    assert inspection.image_score == pytest.approx(float(expected.max()), abs=1e-5)
    assert inspector.preprocess(image).tensor.shape == (32, 3, 16, 16)


def test_whole_frame_without_unwrap(tmp_path):
    package = make_tile_classifier_package(tmp_path / "tiles", tile_height_px=32, tile_width_px=32)
    inspector = Inspector.from_path(package)
    image = np.full((48, 64, 3), 30, np.uint8)
    image[8:24, 16:32] = 255

    model_input = inspector.preprocess(image)
    inspection = inspector.inspect(image)

    assert model_input.tensor.shape == (1, 3, 32, 32)
    assert model_input.ring is None
    expected = (Preprocessor(inspector.package.preprocess).resized_rgb(image).astype(np.float64).mean() + 0.5) / 256
    assert inspection.image_score == pytest.approx(expected, abs=1e-5)
    assert inspection.anomaly_map.shape == (32, 32)
    assert inspection.ring is None


def test_fixed_ring_outside_frame_raises(tile_package):
    inspector = Inspector.from_path(tile_package)

    with pytest.raises(RingNotFound):
        inspector.inspect(np.zeros((120, 120, 3), np.uint8))


def test_tiles_of_wrong_size_rejected(tmp_path):
    section = fixed_ring_section(TileSpec(8, 8, 8))
    package = make_tile_classifier_package(tmp_path / "tiles", ring=section)

    with pytest.raises(PackageError, match="tiles are 8x8"):
        Inspector.from_path(package)


def test_padim_with_tiles_rejected(tmp_path):
    package = make_brightness_package(tmp_path / "padim", size_px=16, width_px=16, ring=fixed_ring_section())

    with pytest.raises(PackageError, match="cannot have ring.tiles"):
        Inspector.from_path(package)


def test_ring_section_rejects_unknown_key():
    with pytest.raises(ValueError, match="unknown keys"):
        RingSection.from_dict({"unwrap": UNWRAP.to_dict(), "tile": None})


def test_padim_on_strip_maps_spot(tmp_path):
    package = make_brightness_package(
        tmp_path / "padim", size_px=16, width_px=64, image_threshold=0.0, pixel_threshold=0.0,
        ring=fixed_ring_section(tiles=None),
    )
    inspector = Inspector.from_path(package)
    image = spot_image(angle_deg=45.0, radius_px=60.0, spot_radius_px=8)

    inspection = inspector.inspect(image)

    assert inspector.preprocess(image).tensor.shape == (1, 3, 16, 64)
    assert inspection.verdict is Verdict.FAIL
    assert inspection.anomaly_map.shape == (FRAME_PX, FRAME_PX)
    peak_y, peak_x = np.unravel_index(int(np.argmax(inspection.anomaly_map)), inspection.anomaly_map.shape)
    spot_x = RING.centre_x + 60 * math.cos(math.radians(45))
    spot_y = RING.centre_y + 60 * math.sin(math.radians(45))
    assert math.hypot(peak_x - spot_x, peak_y - spot_y) <= 8
    assert abs(inspection.regions[0].peak_angle_deg - 45.0) <= 8


def test_padim_strip_is_strip_for_model(tmp_path):
    section = fixed_ring_section(tiles=None)
    package = make_brightness_package(tmp_path / "padim", size_px=16, width_px=64, ring=section)
    inspector = Inspector.from_path(package)
    image = spot_image(angle_deg=45.0, radius_px=60.0)

    strip = strip_for_model(image, section)

    np.testing.assert_array_equal(strip, unwrap(image, RING, UNWRAP))
    np.testing.assert_array_equal(inspector.preprocess(image).tensor, Preprocessor(inspector.package.preprocess)(strip))


def test_alignment_turns_strip_to_reference(tmp_path):
    reference_image = spot_image(angle_deg=45.0, radius_px=60.0, spot_radius_px=8)
    reference = cv2.cvtColor(unwrap(reference_image, RING, UNWRAP), cv2.COLOR_BGR2GRAY).astype(np.float32)
    section = {**fixed_ring_section(tiles=None), "alignment": {"reference": reference.tolist()}}
    package = make_brightness_package(
        tmp_path / "padim", size_px=16, width_px=64, image_threshold=0.0, pixel_threshold=0.0, ring=section
    )
    inspector = Inspector.from_path(package)
    # The same part turned by 90 degrees (32 of 128 columns) clockwise on screen.
    turned_image = spot_image(angle_deg=135.0, radius_px=60.0, spot_radius_px=8)

    model_input = inspector.preprocess(turned_image)
    inspection = inspector.inspect(turned_image)

    assert model_input.rotation_px == -32
    np.testing.assert_array_equal(strip_for_model(turned_image, section), rotate_strip(unwrap(turned_image, RING, UNWRAP), -32))
    np.testing.assert_allclose(model_input.tensor, inspector.preprocess(reference_image).tensor, atol=0.1)
    # The map is turned back, so it marks the spot where this frame shows it.
    assert abs(inspection.regions[0].peak_angle_deg - 135.0) <= 8


def test_alignment_reference_at_other_width(tmp_path):
    reference_image = spot_image(angle_deg=45.0, radius_px=60.0, spot_radius_px=8)
    strip = cv2.cvtColor(unwrap(reference_image, RING, UNWRAP), cv2.COLOR_BGR2GRAY).astype(np.float32)
    reference = cv2.resize(strip, (64, 4), interpolation=cv2.INTER_AREA)
    section = {**fixed_ring_section(tiles=None), "alignment": {"reference": reference.tolist()}}

    turned = strip_for_model(spot_image(angle_deg=135.0, radius_px=60.0, spot_radius_px=8), section)

    np.testing.assert_array_equal(turned, rotate_strip(unwrap(spot_image(135.0, 60.0, spot_radius_px=8), RING, UNWRAP), -32))


def test_search_finds_drawn_ring():
    image = np.full((FRAME_PX, FRAME_PX), 40, np.uint8)
    cv2.circle(image, (100, 100), 78, 200, -1)
    cv2.circle(image, (100, 100), 30, 40, -1)

    ring = find_ring(image, RingSearch())

    assert abs(ring.centre_x - 100) <= 1.5
    assert abs(ring.centre_y - 100) <= 1.5
