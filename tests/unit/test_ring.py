"""Ring localisation on synthetic round parts drawn with OpenCV."""

from __future__ import annotations

import numpy as np
import pytest

import cv2

from edge.preprocess.ring import Ring, RingNotFound, RingSearch, draw_ring, find_ring
from edge.preprocess.transform import PreprocessError

SHIFT = 4  # fractional bits for sub-pixel drawing


def _part_image(
    centre: tuple[float, float] = (152.3, 147.6),
    radius: float = 110.0,
    axes_ratio: float = 1.0,
    angle_deg: float = 0.0,
    size: int = 300,
) -> np.ndarray:
    """Draw an impeller-like part: bright flange, dark inner area, bright hub with a bore."""
    rng = np.random.default_rng(0)
    image = np.full((size, size), 90, np.uint8)
    scale = 1 << SHIFT
    centre_fixed = (round(centre[0] * scale), round(centre[1] * scale))
    for fraction, value in ((1.0, 200), (0.6, 35), (0.3, 170), (0.18, 110)):
        axes = (round(radius * fraction * scale), round(radius * fraction * axes_ratio * scale))
        cv2.ellipse(image, centre_fixed, axes, angle_deg, 0, 360, value, -1, cv2.LINE_AA, SHIFT)
    noise = rng.normal(0, 3, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_find_ring_circle_centre_and_radii():
    search = RingSearch()
    ring = find_ring(_part_image(), search)
    edge_radius = ring.outer_radius_px / (1 + search.outer_margin_fraction)
    assert abs(ring.centre_x - 152.3) <= 1.0
    assert abs(ring.centre_y - 147.6) <= 1.0
    assert abs(edge_radius - 110.0) <= 1.5
    assert ring.inner_radius_px == pytest.approx(search.inner_radius_fraction * edge_radius)
    assert ring.axis_ratio >= 0.98


def test_find_ring_bgr_matches_grey():
    grey = _part_image()
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    from_grey = find_ring(grey, RingSearch())
    from_bgr = find_ring(bgr, RingSearch())
    assert from_bgr.centre_x == pytest.approx(from_grey.centre_x, abs=0.01)
    assert from_bgr.outer_radius_px == pytest.approx(from_grey.outer_radius_px, abs=0.01)


def test_find_ring_circles_only_when_ratio_one():
    ring = find_ring(_part_image(), RingSearch(min_axis_ratio=1.0))
    assert ring.axis_ratio == 1.0
    assert abs(ring.outer_radius_px / 1.03 - 110.0) <= 1.5


def test_find_ring_tilted_part_ellipse():
    image = _part_image(centre=(148.0, 151.0), radius=115.0, axes_ratio=0.92, angle_deg=30.0)
    ring = find_ring(image, RingSearch())
    assert abs(ring.centre_x - 148.0) <= 1.0
    assert abs(ring.centre_y - 151.0) <= 1.0
    assert abs(ring.outer_radius_px / 1.03 - 115.0) <= 1.5
    assert ring.axis_ratio == pytest.approx(0.92, abs=0.015)
    assert ring.angle_deg == pytest.approx(30.0, abs=4.0)


def test_find_ring_large_frame():
    image = cv2.resize(_part_image(), (900, 900), interpolation=cv2.INTER_CUBIC)
    ring = find_ring(image, RingSearch())
    assert abs(ring.centre_x - (152.3 * 3 + 1)) <= 2.0
    assert abs(ring.centre_y - (147.6 * 3 + 1)) <= 2.0
    assert abs(ring.outer_radius_px / 1.03 - 330.0) <= 3.0


def test_find_ring_chipped_rim():
    image = _part_image()
    # Chips and burrs on the rim: bites out of the flange and lumps outside it.
    for angle_deg in (20, 95, 200, 290):
        angle = np.radians(angle_deg)
        point = (round(152.3 + 110 * np.cos(angle)), round(147.6 + 110 * np.sin(angle)))
        cv2.circle(image, point, 7, 90 if angle_deg % 2 else 200, -1)
    ring = find_ring(image, RingSearch())
    assert abs(ring.centre_x - 152.3) <= 1.0
    assert abs(ring.centre_y - 147.6) <= 1.0
    assert abs(ring.outer_radius_px / 1.03 - 110.0) <= 1.5


def test_fixed_ring_used_as_is():
    fixed = Ring(150.0, 150.0, 20.0, 120.0)
    assert find_ring(np.zeros((300, 300), np.uint8), RingSearch(fixed=fixed)) == fixed


def test_fixed_ring_outside_image():
    fixed = Ring(100.0, 150.0, 20.0, 120.0)
    with pytest.raises(RingNotFound, match="does not lie in the 300x300 image"):
        find_ring(np.zeros((300, 300), np.uint8), RingSearch(fixed=fixed))


def test_blank_image_not_found():
    with pytest.raises(RingNotFound, match="--ring-radius"):
        find_ring(np.full((300, 300), 128, np.uint8), RingSearch())


def test_square_part_not_found():
    image = np.full((300, 300), 90, np.uint8)
    cv2.rectangle(image, (40, 40), (260, 260), 200, -1)
    with pytest.raises(RingNotFound):
        find_ring(image, RingSearch())


def test_small_part_outside_radius_range():
    image = _part_image(radius=60.0)
    with pytest.raises(RingNotFound, match="--ring-radius"):
        find_ring(image, RingSearch())


def test_find_ring_rejects_float_image():
    with pytest.raises(PreprocessError, match="uint8"):
        find_ring(np.zeros((300, 300), np.float32), RingSearch())


def test_draw_ring_marks_circles():
    ring = Ring(150.0, 150.0, 30.0, 100.0)
    overlay = draw_ring(np.zeros((300, 300), np.uint8), ring)
    assert overlay.shape == (300, 300, 3)
    assert overlay[150, 250, 1] > 100  # outer circle, green
    assert overlay[150, 180, 2] > 100  # inner circle, orange
    assert overlay[100, 150].sum() == 0


def test_ring_dict_round_trip():
    ring = Ring(1.5, 2.5, 3.0, 40.0, 0.95, 12.0)
    assert Ring.from_dict(ring.to_dict()) == ring
    assert Ring.from_dict({"centre_x": 1, "centre_y": 2, "inner_radius_px": 3, "outer_radius_px": 4}).axis_ratio == 1.0


def test_ring_invalid_values():
    with pytest.raises(ValueError, match="inner_radius_px < outer_radius_px"):
        Ring(0.0, 0.0, 50.0, 40.0)
    with pytest.raises(ValueError, match="missing outer_radius_px"):
        Ring.from_dict({"centre_x": 1, "centre_y": 2, "inner_radius_px": 3})
    with pytest.raises(ValueError, match="axis_ratio"):
        Ring(0.0, 0.0, 1.0, 2.0, axis_ratio=1.5)


def test_search_dict_round_trip():
    search = RingSearch(inner_radius_fraction=0.2, fixed=Ring(10.0, 10.0, 1.0, 5.0))
    assert RingSearch.from_dict(search.to_dict()) == search


def test_search_invalid_range():
    with pytest.raises(ValueError, match="outer radius range"):
        RingSearch(min_outer_radius_fraction=0.5, max_outer_radius_fraction=0.4)
