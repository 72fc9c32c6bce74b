"""Locate a round part in a frame: the ring between an inner and an outer radius.

Centre candidates come from a Hough vote along edge gradients. Around each one the outer
edge is refined by robust least-squares circle and ellipse fits to radial edge points. The
inner radius is a fixed fraction of the outer edge radius, so the ring covers the same share
of every part.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from edge.preprocess.transform import PreprocessError

# Centre voting runs on a copy scaled down to at most this many pixels on its longest side,
# which bounds its cost. Refinement always samples the full-resolution image.
VOTE_SIZE_PX = 100
CENTRE_CANDIDATES = 3

# Radial edge sampling: one ray every 2 degrees.
RAY_COUNT = 180
RAY_STEP_PX = 0.5
REFINE_ITERATIONS = 3

# Support above which the first centre candidate's fit is taken without trying the others.
CLEAR_EDGE_SUPPORT = 0.9

# An edge point further than this from the fitted circle does not support it.
INLIER_TOLERANCE_PX = 2.0


class RingNotFound(PreprocessError):
    """No ring with enough edge support in the expected radius range; the message names the setting to change."""


@dataclass(frozen=True)
class Ring:
    """A ring in image pixels: centre and the inner and outer radius of the band to unwrap.

    A round part seen at a slight tilt images as an ellipse. `axis_ratio` (minor / major,
    at most 1) and `angle_deg` (direction of the major axis, clockwise from the image +x
    axis because image y points down) describe it. The radii are measured along the major
    axis, which keeps the part's true size. With the defaults the ring is circular.
    """

    centre_x: float
    centre_y: float
    inner_radius_px: float
    outer_radius_px: float
    axis_ratio: float = 1.0
    angle_deg: float = 0.0

    def __post_init__(self) -> None:
        values = (self.centre_x, self.centre_y, self.inner_radius_px, self.outer_radius_px, self.axis_ratio, self.angle_deg)
        if not all(math.isfinite(value) for value in values):
            raise ValueError(f"ring {self} has a value that is not finite; use finite pixel coordinates")
        if not 0 <= self.inner_radius_px < self.outer_radius_px:
            raise ValueError(
                f"ring radii inner={self.inner_radius_px} outer={self.outer_radius_px} are invalid; "
                "use 0 <= inner_radius_px < outer_radius_px"
            )
        if not 0 < self.axis_ratio <= 1:
            raise ValueError(f"ring axis_ratio {self.axis_ratio} is invalid; use minor / major axis in (0, 1]")

    def shape_matrix(self) -> np.ndarray:
        """Return the 2x2 matrix that maps offsets on the upright circle to image offsets.

        A point at radius r and angle t on the circle lies at
        (centre_x, centre_y) + shape_matrix() @ (r cos t, r sin t) in the image. The matrix
        shrinks the direction of the minor axis by axis_ratio and leaves the major axis as is.
        """
        return _shape_matrix(self.axis_ratio, self.angle_deg)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Ring:
        required = ("centre_x", "centre_y", "inner_radius_px", "outer_radius_px")
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"ring {data!r} is missing {', '.join(missing)}; give all of {', '.join(required)}")
        names = [item.name for item in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"ring {data!r} has unknown keys {', '.join(unknown)}; use only {', '.join(names)}")
        return cls(**{name: float(value) for name, value in data.items()})


def _shape_matrix(axis_ratio: float, angle_deg: float) -> np.ndarray:
    angle = math.radians(angle_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return rotation @ np.diag([1.0, axis_ratio]) @ rotation.T


@dataclass(frozen=True)
class RingSearch:
    """Settings of the ring search.

    `min_outer_radius_fraction` and `max_outer_radius_fraction` bound the radius of the part's
    outer edge, as fractions of min(image height, width). The defaults (0.35 to 0.5) suit parts
    that fill much of the frame: the cast impellers have outer edges at 0.38 to 0.48 of their
    300 px frames. The lower bound also keeps out the impeller's second strong circle, the
    inner edge of the flange, at up to 0.33 of the frame on the largest parts.

    `inner_radius_fraction` sets the inner radius of the ring as a fraction of the outer edge
    radius. The default 0.15 reaches past the impeller's bore, whose edge lies at 0.20 to 0.24
    of the outer radius (median over the angles of each of the 1,215 images). The hub sits a
    few pixels off the outer edge's centre, so at single angles the bore edge comes down to
    about 0.16. The strip thus covers the hub face, the vanes and the flange, all of which can carry defects.

    `outer_margin_fraction` extends the ring beyond the fitted edge by this fraction of the
    edge radius, so chips and burrs on the rim (which stick out of the circle) stay in the strip.

    `min_edge_support` is the fraction of rays around the circle that must hit an edge within
    1.5 px of the fitted circle. `min_edge_contrast` is the smallest radial intensity change
    that counts as an edge, in grey levels per pixel after a 5x5 Gaussian blur.

    `min_axis_ratio` is the flattest ellipse (minor / major axis) accepted for the outer edge;
    1.0 fits circles only. The impellers, photographed slightly off-axis, measure 0.90 to 1.

    `fixed` skips the search for fixtures that hold every part at the same place: the
    configured ring is used as is, after checking that it lies in the image.
    """

    min_outer_radius_fraction: float = 0.35
    max_outer_radius_fraction: float = 0.5
    inner_radius_fraction: float = 0.15
    outer_margin_fraction: float = 0.03
    min_edge_support: float = 0.6
    min_edge_contrast: float = 4.0
    min_axis_ratio: float = 0.85
    fixed: Ring | None = None

    def __post_init__(self) -> None:
        if not 0 < self.min_outer_radius_fraction < self.max_outer_radius_fraction <= 1:
            raise ValueError(
                f"outer radius range {self.min_outer_radius_fraction}..{self.max_outer_radius_fraction} is invalid; "
                "use 0 < min_outer_radius_fraction < max_outer_radius_fraction <= 1"
            )
        if not 0 <= self.inner_radius_fraction < 1:
            raise ValueError(f"inner_radius_fraction {self.inner_radius_fraction} is invalid; use a value in [0, 1)")
        if not 0 <= self.outer_margin_fraction <= 0.5:
            raise ValueError(f"outer_margin_fraction {self.outer_margin_fraction} is invalid; use a value in [0, 0.5]")
        if not 0 < self.min_edge_support <= 1:
            raise ValueError(f"min_edge_support {self.min_edge_support} is invalid; use a value in (0, 1]")
        if not 0 < self.min_axis_ratio <= 1:
            raise ValueError(f"min_axis_ratio {self.min_axis_ratio} is invalid; use a value in (0, 1]")
        if self.min_edge_contrast <= 0:
            raise ValueError(f"min_edge_contrast {self.min_edge_contrast} is invalid; use a positive value")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fixed"] = self.fixed.to_dict() if self.fixed else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RingSearch:
        values = dict(data)
        if values.get("fixed") is not None:
            values["fixed"] = Ring.from_dict(values["fixed"])
        return cls(**values)


@dataclass(frozen=True)
class _EdgeFit:
    """The outer edge as an ellipse (a circle when axis_ratio is 1) with its edge support."""

    centre_x: float
    centre_y: float
    radius_px: float
    axis_ratio: float
    angle_deg: float
    support: float
    mean_contrast: float


def find_ring(image: np.ndarray, search: RingSearch) -> Ring:
    """Locate the ring of a round part in a BGR or grey uint8 image.

    Each centre candidate gets a start radius in the expected range, which robust circle and
    ellipse fits to radial edge points then refine. The fit with the most edge support wins.
    Raises RingNotFound when no fit passes the range and support checks.

    Takes about 3 ms on a 300x300 impeller image: the mean over the 1,215 casting images, on
    one thread of an AMD EPYC server core (time.perf_counter around each call).
    """
    grey = _as_grey(image)
    height, width = grey.shape

    if search.fixed is not None:
        _check_inside(search.fixed, width, height)
        return search.fixed

    min_side = min(height, width)
    min_radius_px = search.min_outer_radius_fraction * min_side
    max_radius_px = search.max_outer_radius_fraction * min_side
    blurred = cv2.GaussianBlur(grey, (5, 5), 0)

    fits = []
    for centre_x, centre_y in _centre_candidates(blurred, search.min_edge_contrast, min_radius_px, max_radius_px):
        start = _outer_edge(blurred, centre_x, centre_y, min_radius_px, max_radius_px, search.min_edge_contrast)
        if start is None:
            continue
        radius_px, window_px = start
        fit = _refine(
            blurred, (centre_x, centre_y, radius_px), window_px + 3.0, search.min_edge_contrast, search.min_axis_ratio
        )
        if fit is None:
            continue
        fits.append(fit)
        # A clear edge all round needs no second opinion. On the impellers this cuts the mean time from 5.2 to 3.1 ms.
        if fit.support >= CLEAR_EDGE_SUPPORT and min_radius_px <= fit.radius_px <= max_radius_px:
            break
    if not fits:
        raise RingNotFound(
            f"no circular edge with radius {min_radius_px:.0f}-{max_radius_px:.0f} px and contrast of at least "
            f"{search.min_edge_contrast} grey levels per pixel found in the {width}x{height} image; check that the "
            "part is in view, or export the model again with other --ring-radius or --ring-min-contrast values"
        )

    in_range = [fit for fit in fits if min_radius_px <= fit.radius_px <= max_radius_px]
    if not in_range:
        radii = ", ".join(f"{fit.radius_px:.1f}" for fit in fits)
        raise RingNotFound(
            f"no refined edge has a radius in {min_radius_px:.0f}-{max_radius_px:.0f} px "
            f"(refined radii: {radii}); export the model again with a --ring-radius range that contains the part's edge"
        )

    best = max(in_range, key=lambda fit: (fit.support, fit.mean_contrast))
    if best.support < search.min_edge_support:
        raise RingNotFound(
            f"best edge at ({best.centre_x:.1f}, {best.centre_y:.1f}) radius {best.radius_px:.1f} px is found on "
            f"{best.support:.0%} of its rays, below min_edge_support {search.min_edge_support:.0%}; check focus "
            "and lighting of the part's outer edge, or export the model again with a lower --ring-min-contrast"
        )

    return Ring(
        centre_x=best.centre_x,
        centre_y=best.centre_y,
        inner_radius_px=search.inner_radius_fraction * best.radius_px,
        outer_radius_px=(1 + search.outer_margin_fraction) * best.radius_px,
        axis_ratio=best.axis_ratio,
        angle_deg=best.angle_deg,
    )


def draw_ring(image: np.ndarray, ring: Ring) -> np.ndarray:
    """Return a BGR copy of the image with the ring's centre and both circles drawn on it."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3].copy()

    # Draw with 4 fractional bits so the overlay sits within 1/16 px of the ring.
    shift = 4
    scale = 1 << shift
    centre = (round(ring.centre_x * scale), round(ring.centre_y * scale))
    thickness = max(1, round(min(canvas.shape[:2]) / 300))
    for radius_px, colour in ((ring.outer_radius_px, (0, 255, 0)), (ring.inner_radius_px, (0, 200, 255))):
        axes = (round(radius_px * scale), round(radius_px * ring.axis_ratio * scale))
        cv2.ellipse(canvas, centre, axes, ring.angle_deg, 0, 360, colour, thickness, cv2.LINE_AA, shift)
    cv2.drawMarker(
        canvas, (round(ring.centre_x), round(ring.centre_y)), (0, 0, 255), cv2.MARKER_CROSS, 6 * thickness, thickness
    )
    return canvas


def _as_grey(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise PreprocessError(f"image type {kind} is not supported; pass an 8-bit (uint8) BGR or grey image")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise PreprocessError(f"image shape {image.shape} is not an image; expected HxW or HxWx3")


def _check_inside(ring: Ring, width: int, height: int) -> None:
    inside = (
        ring.centre_x - ring.outer_radius_px >= -0.5
        and ring.centre_y - ring.outer_radius_px >= -0.5
        and ring.centre_x + ring.outer_radius_px <= width - 0.5
        and ring.centre_y + ring.outer_radius_px <= height - 0.5
    )
    if not inside:
        raise RingNotFound(
            f"fixed ring at ({ring.centre_x}, {ring.centre_y}) with outer radius {ring.outer_radius_px} px does not "
            f"lie in the {width}x{height} image; correct the fixed ring for this camera or remove it to search"
        )


def _centre_candidates(
    blurred: np.ndarray, min_contrast: float, min_radius_px: float, max_radius_px: float
) -> list[tuple[float, float]]:
    """Return up to CENTRE_CANDIDATES likely circle centres (x, y) in full-image pixels, best first.

    Every strong edge pixel of a scaled-down copy votes along its gradient line, in both
    directions, for centres min_radius_px / 2 to max_radius_px away (a Hough transform for
    circles in that radius range, accumulated over all radii). Besides the outer edge, the
    part's concentric inner edges of at least half the outer radius (a flange step) vote for
    the same point. This sharpens the peak when the outer edge is weak or partly out of view. On every fourth impeller image this put the first candidate within 9 px of
    the final centre, against up to 45 px when only the outer radius range voted.
    """
    height, width = blurred.shape
    scale = min(1.0, VOTE_SIZE_PX / max(height, width))
    small = blurred if scale == 1.0 else cv2.resize(blurred, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    small_height, small_width = small.shape

    # Sobel with scale 1/8 gives grey levels per pixel of the small copy, which is 1/scale
    # original pixels wide; the threshold is per original pixel.
    gradient_x = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gradient_y = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    magnitude = cv2.magnitude(gradient_x, gradient_y)
    threshold = max(min_contrast / scale, float(np.percentile(magnitude, 90)))
    rows, columns = np.nonzero(magnitude >= threshold)
    if rows.size == 0:
        return []

    unit_x = gradient_x[rows, columns] / magnitude[rows, columns]
    unit_y = gradient_y[rows, columns] / magnitude[rows, columns]
    distances = np.arange(0.5 * min_radius_px * scale, max_radius_px * scale + 1.0, 1.0, dtype=np.float32)
    distances = np.concatenate([distances, -distances])
    votes_x = np.rint(columns[:, np.newaxis] + unit_x[:, np.newaxis] * distances).astype(np.int32)
    votes_y = np.rint(rows[:, np.newaxis] + unit_y[:, np.newaxis] * distances).astype(np.int32)
    valid = (votes_x >= 0) & (votes_x < small_width) & (votes_y >= 0) & (votes_y < small_height)
    flat = votes_y[valid] * small_width + votes_x[valid]
    accumulator = np.bincount(flat, minlength=small_height * small_width).astype(np.float32)
    # Votes of a real centre spread over a few pixels (edge noise, perspective), while clutter
    # votes scatter widely, so a wide blur makes the centre the peak.
    sigma = 0.03 * min(small_height, small_width)
    accumulator = cv2.GaussianBlur(accumulator.reshape(small_height, small_width), (0, 0), sigma)

    # Take the strongest peaks, blanking a neighbourhood around each one taken.
    candidates = []
    blank_radius = max(2, round(0.05 * min(small_height, small_width)))
    for _ in range(CENTRE_CANDIDATES):
        _, peak_value, _, (peak_x, peak_y) = cv2.minMaxLoc(accumulator)
        if peak_value <= 0:
            break
        candidates.append(((peak_x + 0.5) / scale - 0.5, (peak_y + 0.5) / scale - 0.5))
        cv2.circle(accumulator, (peak_x, peak_y), blank_radius, 0.0, -1)
    return candidates


def _polar_derivative(
    blurred: np.ndarray, centre_x: float, centre_y: float, radii: np.ndarray, step_px: float, shape: np.ndarray | None = None
) -> np.ndarray:
    """Return the radial derivative (grey levels per pixel) on RAY_COUNT rays x len(radii) samples.

    Rays start at the centre at angles 2 pi k / RAY_COUNT on the upright circle and are mapped
    into the image by the 2x2 `shape` matrix (identity when None). Samples outside the image,
    and derivatives that would use them, are 0.
    """
    angles = np.linspace(0.0, 2 * np.pi, RAY_COUNT, endpoint=False)
    directions = np.stack([np.cos(angles), np.sin(angles)])
    if shape is not None:
        directions = shape @ directions
    map_x = (centre_x + radii[np.newaxis, :] * directions[0][:, np.newaxis]).astype(np.float32)
    map_y = (centre_y + radii[np.newaxis, :] * directions[1][:, np.newaxis]).astype(np.float32)
    profiles = cv2.remap(blurred, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    profiles = profiles.astype(np.float32)
    height, width = blurred.shape
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)

    derivative = np.zeros_like(profiles)
    derivative[:, 1:-1] = (profiles[:, 2:] - profiles[:, :-2]) / (2 * step_px)
    derivative[:, 1:-1] *= inside[:, 2:] & inside[:, :-2]
    return derivative


def _outer_edge(
    blurred: np.ndarray, centre_x: float, centre_y: float, min_radius_px: float, max_radius_px: float, min_contrast: float
) -> tuple[float, float] | None:
    """Return (radius, window) of the part's outer edge around a rough centre, or None.

    Each ray contributes its strongest edge within `window` px of a radius, which tolerates
    a centre that far off. Of the radii whose summed edge strength reaches half the maximum,
    the outermost wins: a part's outer edge encloses its inner steps, which can be stronger.
    """
    window_px = max(3, round(0.06 * max_radius_px))
    radii = np.arange(max(1.0, min_radius_px - window_px), max_radius_px + window_px + 1.0, 1.0, dtype=np.float32)
    strength = np.abs(_polar_derivative(blurred, centre_x, centre_y, radii, 1.0))
    strength[strength < min_contrast] = 0.0
    strength = cv2.dilate(strength, np.ones((1, 2 * window_px + 1), np.uint8))
    score = strength.sum(axis=0)
    score[(radii < min_radius_px) | (radii > max_radius_px)] = 0.0
    best_score = float(score.max())
    if best_score <= 0:
        return None

    # The dilation turns an edge into a plateau 2 * window wide; its peak is the edge.
    strong = score >= 0.5 * best_score
    last = int(np.nonzero(strong)[0][-1])
    first = last
    while first > 0 and strong[first - 1]:
        first -= 1
    radius = float(radii[first + int(np.argmax(score[first : last + 1]))])
    return radius, float(window_px)


def _refine(
    blurred: np.ndarray, start: tuple[float, float, float], band_px: float, min_contrast: float, min_axis_ratio: float
) -> _EdgeFit | None:
    """Refine the outer edge by repeated robust fits to the strongest radial edge on each ray.

    The first fit is a circle, which tolerates the outliers of a rough start; later fits are
    ellipses unless min_axis_ratio is 1. Both edge polarities count: light falls unevenly on
    a part, so its outer edge can be brighter than the background on one side and darker on
    the other. Returns None when too few rays find an edge or the ellipse is too flat.
    """
    centre_x, centre_y, radius = start
    axis_ratio, angle_deg = 1.0, 0.0
    angles = np.linspace(0.0, 2 * np.pi, RAY_COUNT, endpoint=False)
    unit = np.stack([np.cos(angles), np.sin(angles)])
    fit: _EdgeFit | None = None

    for iteration in range(REFINE_ITERATIONS):
        shape = _shape_matrix(axis_ratio, angle_deg)
        radii = radius + np.arange(-band_px, band_px + RAY_STEP_PX, RAY_STEP_PX, dtype=np.float32)
        strength = np.abs(_polar_derivative(blurred, centre_x, centre_y, radii, RAY_STEP_PX, shape))

        peak = np.argmax(strength, axis=1)
        contrast = strength[np.arange(RAY_COUNT), peak]
        edge_radius = radii[peak] + RAY_STEP_PX * _parabola_offset(strength, peak)
        found = contrast >= min_contrast
        if np.count_nonzero(found) < 6:
            return None

        offsets = shape @ (unit[:, found] * edge_radius[found])
        points = np.stack([centre_x + offsets[0], centre_y + offsets[1]], axis=1)
        ellipse = min_axis_ratio < 1 and iteration > 0
        edge = _robust_fit(points, ellipse)
        if edge is None:
            return None
        (centre_x, centre_y, radius, axis_ratio, angle_deg), inliers = edge
        if axis_ratio < min_axis_ratio or not inliers.any():
            return None
        band_px = 3.0

        support = np.count_nonzero(inliers) / RAY_COUNT
        fit = _EdgeFit(
            centre_x, centre_y, radius, axis_ratio, angle_deg, support, float(contrast[found][inliers].mean())
        )

    return fit


def _parabola_offset(values: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Return the sub-sample offset (-0.5..0.5) of each row's peak from a parabola through 3 samples."""
    rows = np.arange(values.shape[0])
    inner = np.clip(peak, 1, values.shape[1] - 2)
    left, middle, right = values[rows, inner - 1], values[rows, inner], values[rows, inner + 1]
    curvature = left - 2 * middle + right
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(curvature < 0, 0.5 * (left - right) / curvature, 0.0)
    # A peak on the first or last sample has no neighbour on one side, so it keeps offset 0.
    return np.where(peak == inner, np.clip(offset, -0.5, 0.5), 0.0)


def _robust_fit(
    points: np.ndarray, ellipse: bool
) -> tuple[tuple[float, float, float, float, float], np.ndarray] | None:
    """Fit a circle or ellipse to edge points, dropping outliers (rim chips, burrs) twice.

    Returns ((centre_x, centre_y, radius, axis_ratio, angle_deg), inlier mask), where the
    radius is the semi-major axis and the mask marks points within INLIER_TOLERANCE_PX of the
    final fit, or None when the points are too few or degenerate.
    """
    inliers = np.ones(len(points), dtype=bool)
    shape_fit = None
    residuals = np.zeros(len(points))
    for _ in range(3):
        if np.count_nonzero(inliers) < 6:
            return None
        shape_fit = _fit_ellipse(points[inliers]) if ellipse else _fit_circle(points[inliers])
        if shape_fit is None:
            return None
        residuals = _radial_residuals(points, shape_fit)
        spread = 1.4826 * np.median(residuals[inliers])
        inliers = residuals <= max(INLIER_TOLERANCE_PX, 3.0 * spread)

    # Support counts only points close to the final fit, whatever the spread.
    return shape_fit, residuals <= INLIER_TOLERANCE_PX


def _radial_residuals(points: np.ndarray, shape_fit: tuple[float, float, float, float, float]) -> np.ndarray:
    """Return each point's distance to the ellipse along its ray from the centre, in major-axis pixels."""
    centre_x, centre_y, radius, axis_ratio, angle_deg = shape_fit
    upright = np.linalg.inv(_shape_matrix(axis_ratio, angle_deg)) @ (points - (centre_x, centre_y)).T
    return np.abs(np.hypot(upright[0], upright[1]) - radius)


def _fit_ellipse(points: np.ndarray) -> tuple[float, float, float, float, float] | None:
    """Fit an ellipse with OpenCV's direct least-squares fit (Fitzgibbon)."""
    (centre_x, centre_y), (width, height), angle_deg = cv2.fitEllipse(points.astype(np.float32))
    if not (math.isfinite(width) and math.isfinite(height)) or min(width, height) <= 0:
        return None
    if width >= height:
        return centre_x, centre_y, width / 2, height / width, angle_deg % 180.0
    return centre_x, centre_y, height / 2, width / height, (angle_deg + 90.0) % 180.0


def _fit_circle(points: np.ndarray) -> tuple[float, float, float, float, float] | None:
    """Kasa fit: solve x^2 + y^2 + D x + E y + F = 0 in the least-squares sense."""
    mean_x, mean_y = points.mean(axis=0)
    x = points[:, 0] - mean_x
    y = points[:, 1] - mean_y
    design = np.column_stack([x, y, np.ones_like(x)])
    target = -(x * x + y * y)
    solution, _, rank, _ = np.linalg.lstsq(design, target, rcond=None)
    if rank < 3:
        return None
    d, e, f = solution
    radius_squared = (d * d + e * e) / 4 - f
    if radius_squared <= 0:
        return None
    return float(mean_x - d / 2), float(mean_y - e / 2), float(math.sqrt(radius_squared)), 1.0, 0.0
