"""Unwrap the ring of a round part into a rectangular strip, and map strip results back.

Strip geometry: row 0 lies at the inner radius and the last row at the outer radius, and rows
sample radii at their pixel centres. Column 0 lies at angle 0, the image +x axis. The angle
increases by 360 / width degrees per column, clockwise as seen on screen because image y
points down. For an elliptical ring (a tilted part) radius and angle are those of the upright
circle that Ring.shape_matrix() maps onto the ellipse.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import cv2
import numpy as np

from edge.preprocess.ring import Ring
from edge.preprocess.transform import PreprocessError

UNWRAP_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
}

# cv2.remap interpolates at 1/32 pixel steps (INTER_BITS = 5 in OpenCV 4.x), so rounding the
# ring to that grid before caching its maps moves samples by less than that resolution.
_GRID_PX = 1.0 / 32


@dataclass(frozen=True)
class UnwrapSpec:
    """Size and sampling of the unwrapped strip.

    `radial_px` is the strip height in rows, from the inner radius (top) to the outer radius
    (bottom). `angular_px` is the strip width in columns over 360 degrees; None uses
    round(2 pi outer_radius), so pixels keep their image size at the outer edge.
    """

    radial_px: int = 64
    angular_px: int | None = None
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        if self.radial_px < 2:
            raise ValueError(f"radial_px {self.radial_px} is too small; use at least 2 rows")
        if self.angular_px is not None and self.angular_px < 8:
            raise ValueError(f"angular_px {self.angular_px} is too small; use at least 8 columns or None")
        if self.interpolation not in UNWRAP_INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not supported; use one of {sorted(UNWRAP_INTERPOLATIONS)}")

    def strip_width(self, ring: Ring) -> int:
        """Return the strip width in columns for this ring."""
        if self.angular_px is not None:
            return self.angular_px
        return max(8, round(2 * math.pi * ring.outer_radius_px))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UnwrapSpec:
        angular_px = data.get("angular_px")
        return cls(
            radial_px=int(data["radial_px"]),
            angular_px=None if angular_px is None else int(angular_px),
            interpolation=data.get("interpolation", "linear"),
        )


def unwrap(image: np.ndarray, ring: Ring, spec: UnwrapSpec) -> np.ndarray:
    """Return the strip (radial_px x width, with the image's channels) of the ring.

    Samples outside the image are 0. The sampling maps are cached per ring (on a 1/32 px
    grid), spec and image size, so a fixed fixture builds them once.
    """
    if image.ndim not in (2, 3):
        raise PreprocessError(f"image shape {image.shape} is not an image; expected HxW or HxWxC")
    key = _grid_key(ring)
    map_x, map_y = _unwrap_maps(key, spec.radial_px, spec.strip_width(ring))
    return cv2.remap(
        image, map_x, map_y, UNWRAP_INTERPOLATIONS[spec.interpolation], borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def strip_to_image(strip_map: np.ndarray, ring: Ring, spec: UnwrapSpec, image_shape: tuple[int, ...]) -> np.ndarray:
    """Map a float strip-space map onto the image: float32 HxW, 0 outside the ring.

    The map may have any resolution (a tile score map, a class activation map). It is taken
    to span the whole strip, inner to outer radius and 0 to 360 degrees. Interpolation, set
    by `spec`, wraps around the 0/360 degree seam.
    """
    if strip_map.ndim != 2:
        raise PreprocessError(f"strip map shape {strip_map.shape} is invalid; pass a 2-D (rows x columns) map")
    height, width = image_shape[:2]
    map_x, map_y, inside = _inverse_maps(_grid_key(ring), strip_map.shape, (height, width))

    # One wrapped column on each side keeps the seam continuous. One repeated row at top and
    # bottom covers the half pixel between the first or last row centre and the ring's edge.
    padded = np.pad(strip_map.astype(np.float32), ((1, 1), (0, 0)), mode="edge")
    padded = np.pad(padded, ((0, 0), (1, 1)), mode="wrap")
    interpolation = UNWRAP_INTERPOLATIONS[spec.interpolation]
    result = cv2.remap(padded, map_x, map_y, interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    result[~inside] = 0.0
    return result


def strip_point_to_image(
    column: float, row: float, ring: Ring, spec: UnwrapSpec, angular_px: int | None = None
) -> tuple[float, float]:
    """Return the image point (x, y) of a strip point; `angular_px` defaults to the spec's strip width."""
    width = angular_px if angular_px is not None else spec.strip_width(ring)
    angle = 2 * math.pi * column / width
    radius = ring.inner_radius_px + (row + 0.5) * (ring.outer_radius_px - ring.inner_radius_px) / spec.radial_px
    offset = ring.shape_matrix() @ np.array([radius * math.cos(angle), radius * math.sin(angle)])
    return float(ring.centre_x + offset[0]), float(ring.centre_y + offset[1])


def image_point_to_strip(
    x: float, y: float, ring: Ring, spec: UnwrapSpec, angular_px: int | None = None
) -> tuple[float, float]:
    """Return the strip point (column, row) of an image point; column in [0, width).

    Rows below 0 or above radial_px - 1 lie inside the inner or outside the outer radius.
    """
    width = angular_px if angular_px is not None else spec.strip_width(ring)
    upright = np.linalg.inv(ring.shape_matrix()) @ np.array([x - ring.centre_x, y - ring.centre_y])
    radius = math.hypot(upright[0], upright[1])
    angle = math.atan2(upright[1], upright[0]) % (2 * math.pi)
    column = (angle * width / (2 * math.pi)) % width
    row = (radius - ring.inner_radius_px) * spec.radial_px / (ring.outer_radius_px - ring.inner_radius_px) - 0.5
    return float(column), float(row)


def angular_offset_px(strip: np.ndarray, reference_strip: np.ndarray) -> int:
    """Return the column shift that aligns `strip` with `reference_strip`.

    rotate_strip(strip, angular_offset_px(strip, reference_strip)) matches the reference.
    The shift maximises the circular cross-correlation along the angle, summed over rows
    (and channels) and computed with FFTs. Each row is normalised to zero mean and unit
    variance first, so a brighter or dimmer image of the same part aligns the same way.
    Returns a value in (-width / 2, width / 2].
    """
    if strip.shape != reference_strip.shape:
        raise PreprocessError(
            f"strip shape {strip.shape} differs from reference shape {reference_strip.shape}; "
            "unwrap both with the same UnwrapSpec (set angular_px) before aligning"
        )
    width = strip.shape[1]
    moving = _normalised_rows(strip)
    reference = _normalised_rows(reference_strip)

    # sum_j reference[j] * moving[j - k] over all rows peaks at the shift k.
    spectrum = np.fft.rfft(reference, axis=1) * np.conj(np.fft.rfft(moving, axis=1))
    correlation = np.fft.irfft(spectrum.sum(axis=0), n=width)
    shift = int(np.argmax(correlation))
    return shift - width if shift > width // 2 else shift


def rotate_strip(strip: np.ndarray, offset_px: int) -> np.ndarray:
    """Return the strip shifted by offset_px columns along the angle, wrapping at the seam."""
    return np.roll(strip, offset_px, axis=1)


def _normalised_rows(strip: np.ndarray) -> np.ndarray:
    """Return float64 rows (channels become extra rows) with zero mean and unit variance."""
    values = strip.astype(np.float64)
    if values.ndim == 3:
        values = values.transpose(2, 0, 1).reshape(-1, values.shape[1])
    values = values - values.mean(axis=1, keepdims=True)
    spread = values.std(axis=1, keepdims=True)
    return values / np.where(spread > 1e-9, spread, 1.0)


def _grid_key(ring: Ring) -> tuple[float, ...]:
    values = (ring.centre_x, ring.centre_y, ring.inner_radius_px, ring.outer_radius_px)
    rounded = tuple(round(value / _GRID_PX) * _GRID_PX for value in values)
    return rounded + (round(ring.axis_ratio, 5), round(ring.angle_deg, 3))


def _ring_from_key(key: tuple[float, ...]) -> Ring:
    return Ring(*key)


@lru_cache(maxsize=16)
def _unwrap_maps(key: tuple[float, ...], radial_px: int, angular_px: int) -> tuple[np.ndarray, np.ndarray]:
    ring = _ring_from_key(key)
    step = (ring.outer_radius_px - ring.inner_radius_px) / radial_px
    radii = ring.inner_radius_px + (np.arange(radial_px) + 0.5) * step
    angles = 2 * np.pi * np.arange(angular_px) / angular_px
    shape = ring.shape_matrix()
    upright_x = radii[:, np.newaxis] * np.cos(angles)[np.newaxis, :]
    upright_y = radii[:, np.newaxis] * np.sin(angles)[np.newaxis, :]
    map_x = ring.centre_x + shape[0, 0] * upright_x + shape[0, 1] * upright_y
    map_y = ring.centre_y + shape[1, 0] * upright_x + shape[1, 1] * upright_y
    return map_x.astype(np.float32), map_y.astype(np.float32)


@lru_cache(maxsize=16)
def _inverse_maps(
    key: tuple[float, ...], map_shape: tuple[int, int], image_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (map_x, map_y, inside) that sample a padded strip map at each image pixel."""
    ring = _ring_from_key(key)
    map_rows, map_columns = map_shape
    height, width = image_shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    inverse = np.linalg.inv(ring.shape_matrix())
    offset_x, offset_y = xs - ring.centre_x, ys - ring.centre_y
    upright_x = inverse[0, 0] * offset_x + inverse[0, 1] * offset_y
    upright_y = inverse[1, 0] * offset_x + inverse[1, 1] * offset_y
    radius = np.hypot(upright_x, upright_y)
    angle = np.arctan2(upright_y, upright_x) % (2 * np.pi)

    column = angle * map_columns / (2 * np.pi)
    row = (radius - ring.inner_radius_px) * map_rows / (ring.outer_radius_px - ring.inner_radius_px) - 0.5
    inside = (radius >= ring.inner_radius_px) & (radius <= ring.outer_radius_px)

    # The padded map has one extra column and row before the first.
    map_x = (column + 1.0).astype(np.float32)
    map_y = (np.clip(row, -0.5, map_rows - 0.5) + 1.0).astype(np.float32)
    return map_x, map_y, inside
