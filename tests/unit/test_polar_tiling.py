"""Polar unwrapping, mapping back to the image, angular alignment, tiling and stitching."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edge.preprocess.polar import (
    UnwrapSpec,
    angular_offset_px,
    image_point_to_strip,
    rotate_strip,
    strip_point_to_image,
    strip_to_image,
    unwrap,
)
from edge.preprocess.ring import Ring
from edge.preprocess.tiling import TileSpec, stitch_tiles, tile_origins, tile_strip
from edge.preprocess.transform import PreprocessError

RING = Ring(150.0, 140.0, 30.0, 100.0)


def _textured_part(size: int = 300, seed: int = 1) -> np.ndarray:
    """A disc with random smooth texture, so every angle looks different."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 4)
    texture = cv2.normalize(texture, None, 40, 220, cv2.NORM_MINMAX)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), int(0.45 * size), 1, -1)
    return np.where(mask > 0, texture, 20).astype(np.uint8)


def test_unwrap_shape_default_width():
    strip = unwrap(np.zeros((300, 300, 3), np.uint8), RING, UnwrapSpec(radial_px=32))
    assert strip.shape == (32, round(2 * math.pi * 100), 3)


def test_unwrap_marker_at_90_degrees():
    image = np.zeros((300, 300), np.uint8)
    # 90 degrees clockwise from +x is straight down in image coordinates.
    cv2.circle(image, (150, 140 + 65), 4, 255, -1)
    spec = UnwrapSpec(radial_px=35, angular_px=360)
    strip = unwrap(image, RING, spec)
    rows, columns = np.nonzero(strip > 128)
    row, column = rows.mean(), columns.mean()
    assert abs(column - 90) <= 1
    assert abs(row - 17) <= 1  # radius 65 is half-way between 30 and 100


def test_unwrap_top_row_is_inner_radius():
    image = np.zeros((300, 300), np.uint8)
    cv2.circle(image, (150, 140), 50, 255, -1)
    strip = unwrap(image, RING, UnwrapSpec(radial_px=70, angular_px=180))
    assert strip[:15].min() == 255
    assert strip[-40:].max() == 0


def test_unwrap_maps_are_cached():
    from edge.preprocess import polar

    spec = UnwrapSpec(radial_px=16, angular_px=64)
    image = np.zeros((300, 300), np.uint8)
    unwrap(image, RING, spec)
    hits = polar._unwrap_maps.cache_info().hits
    unwrap(image, Ring(150.0 + 1e-4, 140.0, 30.0, 100.0), spec)
    assert polar._unwrap_maps.cache_info().hits == hits + 1


def test_strip_point_round_trip():
    spec = UnwrapSpec(radial_px=40)
    for ring in (RING, Ring(150.0, 140.0, 30.0, 100.0, axis_ratio=0.9, angle_deg=25.0)):
        for column, row in ((0.0, 0.0), (123.4, 17.5), (600.0, 39.0)):
            x, y = strip_point_to_image(column, row, ring, spec)
            back_column, back_row = image_point_to_strip(x, y, ring, spec)
            assert back_column == pytest.approx(column, abs=1e-6)
            assert back_row == pytest.approx(row, abs=1e-6)


def test_strip_point_angle_convention():
    spec = UnwrapSpec(radial_px=10, angular_px=400)
    x, y = strip_point_to_image(100.0, 9.5, RING, spec)
    assert x == pytest.approx(150.0, abs=1e-9)
    assert y == pytest.approx(240.0)


def test_strip_image_strip_round_trip():
    spec = UnwrapSpec(radial_px=24, angular_px=360)
    rows, columns = np.mgrid[0:24, 0:360]
    strip_map = (np.sin(2 * np.pi * 3 * columns / 360) + rows / 24).astype(np.float32)
    image_map = strip_to_image(strip_map, RING, spec, (300, 300))
    assert image_map.shape == (300, 300)
    assert image_map[140, 20] == 0.0  # outside the outer radius
    assert image_map[140, 150] == 0.0  # inside the inner radius

    back = unwrap(image_map, RING, spec)
    np.testing.assert_allclose(back[2:-2], strip_map[2:-2], atol=0.06)


def test_strip_to_image_low_resolution_map_wraps():
    spec = UnwrapSpec(radial_px=24, angular_px=360)
    coarse = np.zeros((3, 12), np.float32)
    coarse[:, 0] = 1.0
    image_map = strip_to_image(coarse, RING, spec, (300, 300))
    # Just above the +x axis (angle slightly below 360) the seam interpolates towards column 0.
    assert image_map[139, 215] > 0.4
    assert image_map[140 - 60, 150] == pytest.approx(0.0, abs=1e-6)  # 270 degrees


def test_offset_recovers_roll():
    strip = unwrap(_textured_part(), Ring(150.0, 150.0, 20.0, 130.0), UnwrapSpec(radial_px=32, angular_px=512))
    rolled = rotate_strip(strip, -37)
    assert angular_offset_px(rolled, strip) == 37
    brighter = np.clip(rolled.astype(np.float32) * 1.3 + 20, 0, 255).astype(np.uint8)
    assert angular_offset_px(brighter, strip) == 37


def test_offset_recovers_image_rotation():
    image = _textured_part()
    ring = Ring(150.0, 150.0, 20.0, 130.0)
    spec = UnwrapSpec(radial_px=32, angular_px=720)
    # A positive angle in getRotationMatrix2D turns the image counter-clockwise on screen,
    # which moves every feature 25 degrees towards smaller strip angles.
    rotation = cv2.getRotationMatrix2D((150.0, 150.0), 25.0, 1.0)
    rotated = cv2.warpAffine(image, rotation, (300, 300), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    offset = angular_offset_px(unwrap(rotated, ring, spec), unwrap(image, ring, spec))
    assert offset == 50


def test_offset_shape_mismatch():
    with pytest.raises(PreprocessError, match="same UnwrapSpec"):
        angular_offset_px(np.zeros((8, 64)), np.zeros((8, 32)))


def test_unwrap_spec_validation_and_dict():
    spec = UnwrapSpec(radial_px=48, angular_px=None, interpolation="cubic")
    assert UnwrapSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="interpolation 'area'"):
        UnwrapSpec(interpolation="area")
    with pytest.raises(ValueError, match="radial_px"):
        UnwrapSpec(radial_px=1)


def test_tile_count_and_seam():
    strip = np.arange(10 * 100, dtype=np.int32).reshape(10, 100)
    tiles, origins = tile_strip(strip, TileSpec(10, 30, 20))
    assert tiles.shape == (5, 10, 30)
    assert origins == [(0, 0), (0, 20), (0, 40), (0, 60), (0, 80)]
    np.testing.assert_array_equal(tiles[4][:, :20], strip[:, 80:])
    np.testing.assert_array_equal(tiles[4][:, 20:], strip[:, :10])


def test_tile_count_uneven_width():
    origins = tile_origins((8, 105), TileSpec(8, 32, 16))
    assert len(origins) == math.ceil(105 / 16)
    covered = np.zeros(105, bool)
    for _, column in origins:
        covered[(column + np.arange(32)) % 105] = True
    assert covered.all()


def test_tiles_stride_down_a_tall_strip():
    strip = np.zeros((20, 40, 3), np.uint8)
    tiles, origins = tile_strip(strip, TileSpec(8, 8, 6))
    assert sorted({row for row, _ in origins}) == [0, 6, 12]
    assert tiles.shape == (3 * 7, 8, 8, 3)


def test_tile_larger_than_strip():
    with pytest.raises(PreprocessError, match="does not fit"):
        tile_strip(np.zeros((8, 40)), TileSpec(16, 16, 8))


def test_tile_spec_validation_and_dict():
    spec = TileSpec(32, 64, 32)
    assert TileSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="without gaps"):
        TileSpec(32, 64, 80)


def test_stitch_scores_take_maximum():
    spec = TileSpec(10, 30, 20)
    origins = tile_origins((10, 100), spec)
    scores = np.array([0.1, 0.5, 0.2, 0.3, 0.9], np.float32)
    stitched = stitch_tiles(scores, origins, spec, (10, 100))
    assert stitched.shape == (10, 100)
    assert stitched[0, 5] == pytest.approx(0.9)  # tile 4 wraps over tile 0
    assert stitched[0, 15] == pytest.approx(0.1)
    assert stitched[0, 25] == pytest.approx(0.5)  # tiles 0 and 1 overlap
    assert stitched[0, 45] == pytest.approx(0.5)  # tiles 1 and 2 overlap
    assert stitched[0, 55] == pytest.approx(0.2)
    assert stitched[0, 75] == pytest.approx(0.3)
    assert stitched[0, 85] == pytest.approx(0.9)


def test_stitch_low_resolution_maps():
    spec = TileSpec(8, 16, 16)
    origins = tile_origins((8, 64), spec)
    maps = np.zeros((len(origins), 2, 4), np.float32)
    maps[1, :, 2:] = 1.0  # right half of tile 1
    stitched = stitch_tiles(maps, origins, spec, (8, 64))
    assert stitched[:, 30:32].min() == pytest.approx(1.0)
    assert stitched[:, 16:22].max() == pytest.approx(0.0)
    assert stitched[:, 40:].max() == 0.0


def test_stitch_wrong_count():
    spec = TileSpec(8, 16, 16)
    with pytest.raises(PreprocessError, match="does not match 4 tiles"):
        stitch_tiles(np.zeros(3), tile_origins((8, 64), spec), spec, (8, 64))


def test_vertical_stride_gap():
    with pytest.raises(PreprocessError, match="rows uncovered"):
        tile_origins((20, 64), TileSpec(8, 16, 12))
