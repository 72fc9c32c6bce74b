"""A simulated camera that renders machined round parts, with and without surface defects.

A fresh machine has no camera, so the demo and the tests draw their own parts: `render_part`
draws a turned washer seen from above with numpy and OpenCV (no photographs, so the images are
free to redistribute), `SyntheticSource` hands such parts out as a FrameSource, and
`write_synthetic_dataset` writes them in the MVTec AD folder layout for fitting and evaluation.

Sizes and radii below are fractions of the image side, so a part looks the same at any `size_px`.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import structlog

from edge.acquisition.base import FrameSource, SourceError, SourceState, SourceTimeout
from edge.config import SourceConfig
from edge.parts import Frame

log = structlog.get_logger(__name__)

DEFECT_KINDS: tuple[str, ...] = ("scratch", "pit", "chip", "stain")

MIN_SIZE_PX = 64

# Part geometry, as fractions of the image side.
_OUTER_RADIUS = 0.40
_OUTER_CHAMFER = 0.025
_GROOVE_RADII = (0.30, 0.205)
_GROOVE_WIDTH = 0.005
_BORE_RADIUS = 0.115
_BORE_CHAMFER = 0.02

# Variation between good parts.
_CENTRE_JITTER = 0.016
_SCALE_JITTER = 0.015
_BRIGHTNESS_JITTER = 0.05
_NOISE_SIGMA = 2.5

# Unit vector from the part towards the lamp in image axes (x right, y down), so the light comes from the top left.
_LIGHT = np.array([-1.0, -1.0], dtype=np.float32) / np.float32(math.sqrt(2.0))

# Colour multipliers applied to the grey rendering, in BGR order.
_METAL_TINT = np.array([1.03, 1.0, 0.96], dtype=np.float32)
_BACKGROUND_TINT = np.array([1.10, 1.0, 0.90], dtype=np.float32)

# Share of the shadowed background's brightness that the part's shadow removes.
_SHADOW_STRENGTH = 0.5

# Seed of the static texture, so every process renders the same part surface.
_TEXTURE_SEED = 20240531


@dataclass(frozen=True)
class _Layers:
    """The parts of the image that do not change between parts, rendered once per size.

    `part` stacks three HxW float32 planes: luminance premultiplied by coverage, coverage
    (alpha) and shadow. `texture` is the machining texture as a relative brightness change, and
    it turns with the part. `background` is the grey level of the empty scene.
    """

    background: np.ndarray
    part: np.ndarray
    texture: np.ndarray


@dataclass
class _Scene:
    """Placement of the rendered part in output pixels, used to put defects on its face."""

    size_px: int
    centre_x: float
    centre_y: float
    pixels_per_unit: float
    alpha: np.ndarray
    background_bgr: np.ndarray

    def face_radii_px(self) -> tuple[float, float]:
        """Return the inner and outer radius of the flat face that defects are placed on."""
        inner = (_BORE_RADIUS + _BORE_CHAMFER) * self.pixels_per_unit + 2.0
        outer = (_OUTER_RADIUS - _OUTER_CHAMFER) * self.pixels_per_unit - 2.0
        return inner, outer

    def distance_from_centre_px(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray | float:
        return np.hypot(np.asarray(x) - self.centre_x, np.asarray(y) - self.centre_y)


def render_part(rng: np.random.Generator, defect: str | None, size_px: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Render one part seen from above, with the named defect or none.

    Returns the HxWx3 BGR uint8 image and an HxW bool mask of the defect's pixels (all False
    for a good part). The pose, brightness and noise are drawn from `rng` before the defect, so
    the same generator state renders the same part with or without a defect.
    """
    if defect is not None and defect not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {defect!r}; use None for a good part or one of {', '.join(DEFECT_KINDS)}")
    if size_px < MIN_SIZE_PX:
        raise ValueError(f"size_px={size_px} is too small to draw a part; use at least {MIN_SIZE_PX}")

    layers = _layers(size_px)

    centre = (size_px - 1) / 2.0
    offset_px = rng.uniform(-_CENTRE_JITTER, _CENTRE_JITTER, size=2) * size_px
    scale = 1.0 + rng.uniform(-_SCALE_JITTER, _SCALE_JITTER)
    angle_deg = rng.uniform(0.0, 360.0)
    brightness = 1.0 + rng.uniform(-_BRIGHTNESS_JITTER, _BRIGHTNESS_JITTER)
    noise = rng.standard_normal((size_px, size_px), dtype=np.float32)

    # The lamp stays where it is, so shading and shadow only move with the part; the machining
    # texture also turns with it.
    place = np.array([[scale, 0.0, (1.0 - scale) * centre + offset_px[0]], [0.0, scale, (1.0 - scale) * centre + offset_px[1]]])
    turn = cv2.getRotationMatrix2D((centre, centre), angle_deg, scale)
    turn[:, 2] += offset_px
    size = (size_px, size_px)
    part = cv2.warpAffine(layers.part, place, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    texture = cv2.warpAffine(layers.texture, turn, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    luminance_premultiplied, alpha, shadow = part[..., 0], part[..., 1], part[..., 2]
    background = layers.background * (1.0 - _SHADOW_STRENGTH * shadow)
    luminance = background * (1.0 - alpha) + luminance_premultiplied * (1.0 + texture)
    tint = _BACKGROUND_TINT + alpha[..., None] * (_METAL_TINT - _BACKGROUND_TINT)
    image = luminance[..., None] * tint * np.float32(brightness)

    mask = np.zeros(size, dtype=bool)
    if defect is not None:
        scene = _Scene(
            size_px=size_px,
            centre_x=centre + offset_px[0],
            centre_y=centre + offset_px[1],
            pixels_per_unit=size_px * scale,
            alpha=alpha,
            background_bgr=background[..., None] * _BACKGROUND_TINT * np.float32(brightness),
        )
        mask = _DEFECT_PAINTERS[defect](image, scene, rng)

    image += noise[..., None] * np.float32(_NOISE_SIGMA)
    np.clip(image, 0.0, 255.0, out=image)
    return np.rint(image).astype(np.uint8), mask


@functools.lru_cache(maxsize=8)
def _layers(size_px: int) -> _Layers:
    """Render the background, the part's shading and its machining texture for one image size."""
    side = float(size_px)
    coordinates = np.arange(size_px, dtype=np.float32) - (size_px - 1) / 2.0
    x = coordinates[None, :]
    y = coordinates[:, None]
    radius = np.hypot(x, y)
    angle = np.arctan2(y, x)
    # Cosine between the outward radial direction and the light: +1 where a surface sloping
    # outwards faces the lamp.
    facing_light = (x * _LIGHT[0] + y * _LIGHT[1]) / np.maximum(radius, 1e-3)

    texture_rng = np.random.default_rng(_TEXTURE_SEED)
    part = np.stack(
        [_part_luminance(radius, facing_light, x, y, side), _part_alpha(radius, side), np.zeros_like(radius)], axis=-1
    )
    part[..., 0] *= part[..., 1]
    part[..., 2] = _shadow(part[..., 1], side)
    layers = _Layers(
        background=_background(radius, side, texture_rng),
        part=part,
        texture=_machining_texture(radius, angle, side, texture_rng),
    )
    for array in (layers.background, layers.part, layers.texture):
        array.flags.writeable = False
    return layers


def _ramp(value: np.ndarray) -> np.ndarray:
    """Clip to [0, 1]. Applied to a signed distance in pixels, this anti-aliases an edge over one pixel."""
    return np.clip(value + 0.5, 0.0, 1.0)


def _part_alpha(radius: np.ndarray, side: float) -> np.ndarray:
    return _ramp(_OUTER_RADIUS * side - radius) * _ramp(radius - _BORE_RADIUS * side)


def _part_luminance(radius: np.ndarray, facing_light: np.ndarray, x: np.ndarray, y: np.ndarray, side: float) -> np.ndarray:
    """Grey level of the part under a lamp at the top left: flat face, two grooves, two chamfers."""
    flat_face = np.full_like(radius, 170.0)
    hub = _ramp(_GROOVE_RADII[1] * side - radius)
    flat_face += 12.0 * hub
    # The flat face is slightly brighter towards the lamp.
    flat_face *= 1.0 + 0.06 * (x * _LIGHT[0] + y * _LIGHT[1]) / (_OUTER_RADIUS * side)

    groove_width = max(_GROOVE_WIDTH * side, 1.0)
    for groove_radius in _GROOVE_RADII:
        distance = (radius - groove_radius * side) / groove_width
        flat_face *= 1.0 - 0.5 * np.exp(-(distance**2))
        # The groove's outer wall catches the light on the side away from the lamp.
        flat_face *= 1.0 - 0.25 * np.exp(-((distance - 1.2) ** 2)) * facing_light

    outer_chamfer = 150.0 * (1.0 + 0.45 * facing_light)
    bore_chamfer = 140.0 * (1.0 - 0.45 * facing_light)
    on_outer_chamfer = _ramp(radius - (_OUTER_RADIUS - _OUTER_CHAMFER) * side)
    on_bore_chamfer = _ramp((_BORE_RADIUS + _BORE_CHAMFER) * side - radius)
    luminance = flat_face * (1.0 - on_outer_chamfer) + outer_chamfer * on_outer_chamfer
    return luminance * (1.0 - on_bore_chamfer) + bore_chamfer * on_bore_chamfer


def _shadow(alpha: np.ndarray, side: float) -> np.ndarray:
    """Soft shadow of the part, cast away from the lamp."""
    shift = np.float32([[1.0, 0.0, 0.012 * side], [0.0, 1.0, 0.016 * side]])
    shifted = cv2.warpAffine(alpha, shift, alpha.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.GaussianBlur(shifted, (0, 0), sigmaX=max(0.012 * side, 0.8))


def _background(radius: np.ndarray, side: float, rng: np.random.Generator) -> np.ndarray:
    """Render the empty scene, a dark conveyor with vignetting and faint blotches."""
    vignette = 1.0 - 0.25 * (radius / (0.7 * side)) ** 2
    blotches = cv2.resize(rng.standard_normal((8, 8)).astype(np.float32), (int(side), int(side)), interpolation=cv2.INTER_CUBIC)
    return (48.0 * vignette * (1.0 + 0.04 * blotches)).astype(np.float32)


def _machining_texture(radius: np.ndarray, angle: np.ndarray, side: float, rng: np.random.Generator) -> np.ndarray:
    """Render the relative brightness change left by facing the part on a lathe.

    The turning tool leaves a fine spiral groove (circular marks), and the ground hub has a
    finer one. A random angular profile adds faint radial streaks, so the texture visibly
    changes when the part turns.
    """
    face_period_px = max(0.016 * side, 3.0)
    hub_period_px = max(0.011 * side, 2.5)
    face_spiral = 0.035 * np.cos(2.0 * np.pi * radius / face_period_px + angle)
    hub_spiral = 0.02 * np.cos(2.0 * np.pi * radius / hub_period_px + angle)
    hub = _ramp(_GROOVE_RADII[1] * side - radius)
    texture = face_spiral * (1.0 - hub) + hub_spiral * hub

    radial_samples = int(side)
    radial_profile = _smooth_profile(rng.standard_normal(radial_samples), sigma=1.5, circular=False)
    texture += 0.02 * np.interp(radius, np.arange(radial_samples), radial_profile)

    angular_samples = 1024
    angular_profile = _smooth_profile(rng.standard_normal(angular_samples), sigma=1.5, circular=True)
    positions = (angle + np.pi) / (2.0 * np.pi) * angular_samples
    texture += 0.025 * np.interp(positions, np.arange(angular_samples + 1), np.append(angular_profile, angular_profile[0]))
    return texture.astype(np.float32)


def _smooth_profile(values: np.ndarray, sigma: float, circular: bool) -> np.ndarray:
    """Blur a 1-D noise profile and scale it back to unit standard deviation."""
    # GaussianBlur has no wrap-around border, so a circular profile is padded with its own ends.
    pad = int(math.ceil(4.0 * sigma))
    padded = np.pad(values.astype(np.float32), pad, mode="wrap" if circular else "reflect")
    smoothed = cv2.GaussianBlur(padded.reshape(1, -1), (0, 0), sigmaX=sigma, sigmaY=1e-3).ravel()[pad:-pad]
    return smoothed / max(float(smoothed.std()), 1e-6)


def _point_on_face(scene: _Scene, rng: np.random.Generator, clearance_px: float) -> tuple[float, float]:
    """Draw a point on the flat face at least `clearance_px` away from its inner and outer edge."""
    inner, outer = scene.face_radii_px()
    low = inner + clearance_px
    high = max(outer - clearance_px, low)
    radius = rng.uniform(low, high)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return scene.centre_x + radius * math.cos(angle), scene.centre_y + radius * math.sin(angle)


def _window(scene: _Scene, x: float, y: float, half_px: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Return the slices of a square window around (x, y) and the pixel offsets from (x, y) in it."""
    x0 = max(int(math.floor(x - half_px)), 0)
    x1 = min(int(math.ceil(x + half_px)) + 1, scene.size_px)
    y0 = max(int(math.floor(y - half_px)), 0)
    y1 = min(int(math.ceil(y + half_px)) + 1, scene.size_px)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(x)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(y)
    return (slice(y0, y1), slice(x0, x1)), dx, dy


def _smoothstep(low: float, high: float, value: np.ndarray) -> np.ndarray:
    t = np.clip((value - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _paint_scratch(image: np.ndarray, scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Draw a thin, slightly bent bright or dark line that lies wholly on the flat face."""
    inner, outer = scene.face_radii_px()
    length_px = rng.uniform(0.12, 0.25) * scene.pixels_per_unit
    points = None
    for _ in range(100):
        start_x, start_y = _point_on_face(scene, rng, clearance_px=0.0)
        direction = rng.uniform(0.0, 2.0 * np.pi)
        bend_px = rng.uniform(-0.08, 0.08) * length_px
        candidate = _bent_segment(start_x, start_y, direction, length_px, bend_px)
        if _polyline_on_face(scene, candidate, inner, outer) and not _runs_along_rings(scene, candidate):
            points = candidate
            break
    if points is None:
        # A radial segment centred on the face always fits on it.
        length_px = min(length_px, outer - inner)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        start_radius = (inner + outer - length_px) / 2.0
        start_x = scene.centre_x + start_radius * math.cos(angle)
        start_y = scene.centre_y + start_radius * math.sin(angle)
        points = _bent_segment(start_x, start_y, angle, length_px, 0.0)

    thickness_px = int(rng.integers(1, 3)) * max(1, round(scene.size_px / 256))
    canvas = np.zeros((scene.size_px, scene.size_px), dtype=np.uint8)
    subpixel_bits = 4
    fixed_point = np.round(points * (1 << subpixel_bits)).astype(np.int32)
    cv2.polylines(canvas, [fixed_point], isClosed=False, color=255, thickness=thickness_px, lineType=cv2.LINE_AA, shift=subpixel_bits)
    profile = canvas.astype(np.float32) / 255.0 * scene.alpha

    sign = 1.0 if rng.random() < 0.5 else -1.0
    image += (sign * rng.uniform(60.0, 90.0) * profile)[..., None]
    return (profile > 0.25) & (scene.alpha > 0.5)


def _bent_segment(start_x: float, start_y: float, direction: float, length_px: float, bend_px: float) -> np.ndarray:
    """Return points of a segment whose middle is pushed sideways by `bend_px` along a parabola."""
    steps = np.linspace(0.0, 1.0, 9)
    along_x, along_y = math.cos(direction), math.sin(direction)
    sideways = 4.0 * steps * (1.0 - steps) * bend_px
    xs = start_x + steps * length_px * along_x - sideways * along_y
    ys = start_y + steps * length_px * along_y + sideways * along_x
    return np.stack([xs, ys], axis=1)


def _runs_along_rings(scene: _Scene, points: np.ndarray) -> bool:
    """Tell whether a segment runs within 25 degrees of the rings, where a groove could hide it."""
    middle_x, middle_y = points[len(points) // 2]
    radial = np.array([middle_x - scene.centre_x, middle_y - scene.centre_y])
    chord = points[-1] - points[0]
    cosine = abs(float(radial @ chord)) / max(float(np.linalg.norm(radial) * np.linalg.norm(chord)), 1e-6)
    return cosine < math.sin(math.radians(25.0))


def _polyline_on_face(scene: _Scene, points: np.ndarray, inner: float, outer: float) -> bool:
    fine = np.linspace(0.0, len(points) - 1.0, 4 * len(points))
    xs = np.interp(fine, np.arange(len(points)), points[:, 0])
    ys = np.interp(fine, np.arange(len(points)), points[:, 1])
    radii = scene.distance_from_centre_px(xs, ys)
    return bool(np.all((radii >= inner) & (radii <= outer)))


def _paint_pit(image: np.ndarray, scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Darken a small elliptical hollow whose wall facing the lamp catches a highlight."""
    major_px = rng.uniform(0.015, 0.024) * scene.pixels_per_unit
    minor_px = major_px * rng.uniform(0.65, 1.0)
    orientation = rng.uniform(0.0, np.pi)
    x, y = _point_on_face(scene, rng, clearance_px=1.5 * major_px)
    window, dx, dy = _window(scene, x, y, 1.6 * major_px + 2.0)

    cos_o, sin_o = math.cos(orientation), math.sin(orientation)
    along = (dx * cos_o + dy * sin_o) / major_px
    across = (-dx * sin_o + dy * cos_o) / minor_px
    distance = np.sqrt(along**2 + across**2)
    depth = 1.0 - _smoothstep(0.7, 1.1, distance)

    # The wall on the far side from the lamp faces it and is lit.
    offset_length = np.maximum(np.hypot(dx, dy), 1e-3)
    far_side = np.maximum(-(dx * _LIGHT[0] + dy * _LIGHT[1]) / offset_length, 0.0)
    highlight = 70.0 * np.exp(-(((distance - 0.8) / 0.2) ** 2)) * far_side

    alpha = scene.alpha[window]
    region = image[window]
    region *= (1.0 - 0.7 * depth * alpha)[..., None]
    region += (highlight * alpha)[..., None]

    mask = np.zeros((scene.size_px, scene.size_px), dtype=bool)
    mask[window] = (distance <= 1.0) & (alpha > 0.5)
    return mask


def _paint_chip(image: np.ndarray, scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Cut a ragged wedge out of the outer edge, so the background shows through it."""
    outer_px = _OUTER_RADIUS * scene.pixels_per_unit
    depth_px = rng.uniform(0.045, 0.08) * scene.pixels_per_unit
    half_width = math.radians(rng.uniform(6.0, 11.0))
    middle = rng.uniform(0.0, 2.0 * np.pi)

    # Two corners outside the rim and a ragged fracture line between them.
    angles = [middle - 1.1 * half_width]
    radii = [outer_px + 4.0]
    fracture_angles = middle + half_width * np.array([-0.6, -0.15, 0.3, 0.7]) + rng.uniform(-0.1, 0.1, size=4) * half_width
    fracture_depths = depth_px * rng.uniform(0.5, 1.0, size=4)
    fracture_depths[rng.integers(1, 3)] = depth_px
    angles += list(fracture_angles)
    radii += list(outer_px - fracture_depths)
    angles.append(middle + 1.1 * half_width)
    radii.append(outer_px + 4.0)
    points = np.stack(
        [scene.centre_x + np.array(radii) * np.cos(angles), scene.centre_y + np.array(radii) * np.sin(angles)], axis=1
    )

    canvas = np.zeros((scene.size_px, scene.size_px), dtype=np.uint8)
    subpixel_bits = 4
    cv2.fillPoly(canvas, [np.round(points * (1 << subpixel_bits)).astype(np.int32)], color=255, lineType=cv2.LINE_AA, shift=subpixel_bits)
    missing = canvas.astype(np.float32) / 255.0

    # The fracture surface shows as a dark rim along the cut.
    rim = cv2.dilate(canvas, np.ones((3, 3), np.uint8)).astype(np.float32) / 255.0 - missing
    image *= (1.0 - 0.45 * rim * scene.alpha)[..., None]
    image *= (1.0 - missing)[..., None]
    image += scene.background_bgr * missing[..., None]
    return (missing > 0.5) & (scene.alpha > 0.5)


def _paint_stain(image: np.ndarray, scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Tint a soft, irregular blob brown, like dried coolant or beginning rust."""
    radius_px = rng.uniform(0.04, 0.07) * scene.pixels_per_unit
    x, y = _point_on_face(scene, rng, clearance_px=0.0)
    window, dx, dy = _window(scene, x, y, 2.2 * radius_px)

    weight = np.zeros((dy.shape[0], dx.shape[1]), dtype=np.float32)
    for _ in range(3):
        blob_x, blob_y = rng.normal(0.0, 0.35 * radius_px, size=2)
        sigma_px = rng.uniform(0.45, 0.7) * radius_px
        weight += rng.uniform(0.6, 1.0) * np.exp(-((dx - blob_x) ** 2 + (dy - blob_y) ** 2) / (2.0 * sigma_px**2))
    weight = _smoothstep(0.15, 0.6, weight / weight.max()) * scene.alpha[window]

    # Blue falls most and red least, which turns the grey metal brown.
    strength = rng.uniform(0.3, 0.45)
    channel_loss = np.array([1.0, 0.7, 0.35], dtype=np.float32) * np.float32(strength)
    image[window] *= 1.0 - weight[..., None] * channel_loss

    mask = np.zeros((scene.size_px, scene.size_px), dtype=bool)
    mask[window] = (weight > 0.35) & (scene.alpha[window] > 0.5)
    return mask


_DEFECT_PAINTERS = {
    "scratch": _paint_scratch,
    "pit": _paint_pit,
    "chip": _paint_chip,
    "stain": _paint_stain,
}


class SyntheticSource(FrameSource):
    """Rendered parts as a frame source, a share of them defective, repeatable for a seed.

    Frame n is drawn from a generator seeded with (`synthetic_seed`, n), and defective frames
    take the kinds of DEFECT_KINDS in turn, so a run repeats frame for frame. `source_ref` names
    the frame number and the ground truth, for example "synthetic/000013_scratch". With
    `rate_fps` set the source is live and hands out frames on a monotonic schedule at that rate;
    otherwise each read returns at once.

    `illumination`, when given, returns the light's brightness relative to the nominal recipe
    (1.0 nominal, 0.0 dark) at the moment of capture, so a simulated light fault shows in the image.
    """

    name = "synthetic"

    def __init__(self, config: SourceConfig, size_px: int = 256, illumination: Callable[[], float] | None = None) -> None:
        super().__init__()
        if size_px < MIN_SIZE_PX:
            raise ValueError(f"size_px={size_px} is too small to draw a part; use at least {MIN_SIZE_PX}")
        self.config = config
        self.size_px = size_px
        self.illumination = illumination
        self.live = config.rate_fps is not None
        self._period_ns = round(1e9 / config.rate_fps) if config.rate_fps is not None else 0
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._frames_read = 0
        self._defective_frames = 0
        self._late_frames = 0
        self._due_ns = 0
        # A frame rendered by a read that timed out, handed out by the next read.
        self._pending: tuple[np.ndarray, str] | None = None

    def open(self) -> None:
        """Start the sequence from frame 0; reopening repeats the same frames."""
        self._reset_counters()
        self._due_ns = time.monotonic_ns()
        self.state = SourceState.RUNNING
        log.info(
            "source opened",
            source=self.name,
            seed=self.config.synthetic_seed,
            defect_rate=self.config.synthetic_defect_rate,
            rate_fps=self.config.rate_fps,
            max_frames=self.config.max_frames,
            size_px=self.size_px,
        )

    def read(self, timeout_s: float) -> Frame | None:
        """Return the next rendered part, or None after `max_frames` frames.

        A live source raises SourceTimeout when the next frame is due later than `timeout_s`
        from now, and hands that frame out on the next read.
        """
        if self.state == SourceState.FINISHED:
            return None
        if self.state != SourceState.RUNNING:
            raise SourceError(f"synthetic source is {self.state.value}; call open() before read()")

        max_frames = self.config.max_frames
        if max_frames is not None and self._frames_read >= max_frames:
            self.state = SourceState.FINISHED
            log.info("source finished", source=self.name, frames=self._frames_read, defective_frames=self._defective_frames)
            return None

        if self._pending is None:
            self._pending = self._render(self._frames_read)
        if self.live:
            self._wait_until_due(timeout_s)

        image, source_ref = self._pending
        self._pending = None
        self._frames_read += 1
        if self.illumination is not None:
            image = _lit(image, self.illumination())
        return Frame.now(image, source_ref)

    def _render(self, index: int) -> tuple[np.ndarray, str]:
        rng = np.random.default_rng([self.config.synthetic_seed, index])
        defect = None
        if rng.random() < self.config.synthetic_defect_rate:
            defect = DEFECT_KINDS[self._defective_frames % len(DEFECT_KINDS)]
            self._defective_frames += 1
        image, _ = render_part(rng, defect, self.size_px)
        return image, f"synthetic/{index:06d}_{defect or 'good'}"

    def _wait_until_due(self, timeout_s: float) -> None:
        """Sleep until the pending frame is due on the rate schedule."""
        now_ns = time.monotonic_ns()
        if now_ns - self._due_ns > self._period_ns:
            # The reader fell more than a frame behind. Like a camera, the source skips the
            # missed slots rather than hand out a burst to catch up.
            self._late_frames += 1
            if self._late_frames == 1:
                log.warning("reader is slower than rate_fps, so missed frame slots are skipped", source=self.name, rate_fps=self.config.rate_fps)
            self._due_ns = now_ns

        wait_ns = self._due_ns - now_ns
        if wait_ns > timeout_s * 1e9:
            time.sleep(max(timeout_s, 0.0))
            raise SourceTimeout(
                f"synthetic source: the next frame is due in {wait_ns / 1e9:.3f} s, after the read timeout of "
                f"{timeout_s:.3f} s; read again, or raise rate_fps"
            )
        if wait_ns > 0:
            time.sleep(wait_ns / 1e9)
        self._due_ns += self._period_ns

    def close(self) -> None:
        if self.state != SourceState.CLOSED:
            log.info(
                "source closed",
                source=self.name,
                frames=self._frames_read,
                defective_frames=self._defective_frames,
                late_frames=self._late_frames,
            )
        self._pending = None
        self.state = SourceState.CLOSED

    def describe(self) -> dict:
        return super().describe() | {
            "frames_read": self._frames_read,
            "defective_frames": self._defective_frames,
            "late_frames": self._late_frames,
            "seed": self.config.synthetic_seed,
            "defect_rate": self.config.synthetic_defect_rate,
        }


def _lit(image: np.ndarray, relative_brightness: float) -> np.ndarray:
    """Return the image as captured under a light at `relative_brightness` of the nominal one."""
    if relative_brightness == 1.0:
        return image
    return np.clip(image.astype(np.float32) * max(relative_brightness, 0.0), 0, 255).astype(np.uint8)


def write_synthetic_dataset(
    out_dir: Path,
    good_train: int = 60,
    good_test: int = 10,
    defective_per_kind: int = 5,
    size_px: int = 256,
    seed: int = 0,
) -> Path:
    """Write rendered parts in the MVTec AD layout and return `out_dir`.

    Writes `train/good/000.png`, ..., `test/good/`, `test/<kind>/` and
    `ground_truth/<kind>/<name>_mask.png` (0 or 255 per pixel) for every kind in DEFECT_KINDS.
    An `out_dir` that already contains files is rejected, so no image of the user's is
    overwritten. Each image depends only on `seed`, its folder and its number.
    """
    counts = {"good_train": good_train, "good_test": good_test, "defective_per_kind": defective_per_kind}
    for name, count in counts.items():
        if count < 0:
            raise ValueError(f"{name}={count} is negative; pass 0 or more images")
    if size_px < MIN_SIZE_PX:
        raise ValueError(f"size_px={size_px} is too small to draw a part; use at least {MIN_SIZE_PX}")

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file; choose a folder for the rendered dataset")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it or choose another output folder")
    _write_split(out_dir / "train" / "good", None, None, good_train, size_px, [seed, 0])
    _write_split(out_dir / "test" / "good", None, None, good_test, size_px, [seed, 1])
    for number, kind in enumerate(DEFECT_KINDS):
        masks_dir = out_dir / "ground_truth" / kind
        _write_split(out_dir / "test" / kind, masks_dir, kind, defective_per_kind, size_px, [seed, 2 + number])

    log.info("synthetic dataset written", path=str(out_dir), size_px=size_px, seed=seed, **counts)
    return out_dir


def _write_split(
    images_dir: Path, masks_dir: Path | None, defect: str | None, count: int, size_px: int, stream: list[int]
) -> None:
    for folder in (images_dir, masks_dir):
        if folder is None:
            continue
        folder.mkdir(parents=True, exist_ok=True)

    digits = max(3, len(str(max(count - 1, 0))))
    for index in range(count):
        image, mask = render_part(np.random.default_rng([*stream, index]), defect, size_px)
        name = f"{index:0{digits}d}"
        _write_png(images_dir / f"{name}.png", image)
        if masks_dir is not None:
            _write_png(masks_dir / f"{name}_mask.png", mask.astype(np.uint8) * 255)


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"failed to write {path}; check that the folder is writable and the disk has space")
