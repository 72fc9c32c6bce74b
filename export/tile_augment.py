"""Label-preserving tile transforms and the CAM-guided crops of semi-supervised data augmentation.

Tiles are uint8 [h, w, 3] arrays. Every transform draws from the numpy Generator it is given,
so a seeded run repeats exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

# Small shifts along the strip, in pixels, for the minority expansion.
MAX_SHIFT_FRACTION = 0.125
BRIGHTNESS_RANGE = (-20.0, 20.0)
CONTRAST_RANGE = (0.85, 1.15)
# Side of a CAM-guided crop, as a fraction of the tile side.
CROP_FRACTION_RANGE = (0.6, 0.85)


def brightness_contrast(tile: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """Scale contrast about the tile's mean by `gain` and add `offset` grey levels."""
    values = tile.astype(np.float32)
    mean = float(values.mean())
    return np.clip((values - mean) * gain + mean + offset, 0, 255).astype(np.uint8)


def random_photometric(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain = rng.uniform(*CONTRAST_RANGE)
    offset = rng.uniform(*BRIGHTNESS_RANGE)
    return brightness_contrast(tile, gain, offset)


def random_flip(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        tile = tile[:, ::-1]
    if rng.random() < 0.5:
        tile = tile[::-1, :]
    return np.ascontiguousarray(tile)


def shifted_tile(
    strip: np.ndarray | None, origin: tuple[int, int] | None, tile: np.ndarray, shift_px: int
) -> np.ndarray:
    """Return the tile cut `shift_px` columns further along the strip, wrapping at the 0/360 degree seam.

    Without a strip (whole-frame tiles) the tile itself is rolled, which wraps its own columns.
    """
    if strip is None or origin is None:
        return np.roll(tile, shift_px, axis=1)
    row, column = origin
    height, width = tile.shape[:2]
    columns = (column + shift_px + np.arange(width)) % strip.shape[1]
    return strip[row : row + height, columns]


def expansion_variant(
    tile: np.ndarray, strip: np.ndarray | None, origin: tuple[int, int] | None, rng: np.random.Generator
) -> np.ndarray:
    """Return one label-preserving variant: a small shift along the strip, flips, brightness and contrast."""
    max_shift_px = max(1, int(tile.shape[1] * MAX_SHIFT_FRACTION))
    shift_px = int(rng.integers(-max_shift_px, max_shift_px + 1))
    variant = shifted_tile(strip, origin, tile, shift_px)
    return random_photometric(random_flip(variant, rng), rng)


def online_augment(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Augment a training sample on each draw: flips, then brightness and contrast."""
    return random_photometric(random_flip(tile, rng), rng)


def cam_guided_crop(tile: np.ndarray, cam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Crop a square around a point drawn with probability proportional to the CAM and resize it back.

    A CAM that is zero everywhere gives a uniformly placed crop. The crop lies inside the tile.
    """
    height, width = tile.shape[:2]
    weights = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    weights = np.clip(weights, 0.0, None).ravel().astype(np.float64)
    total = weights.sum()
    probabilities = weights / total if total > 0 else None
    centre = int(rng.choice(weights.size, p=probabilities))
    centre_y, centre_x = divmod(centre, width)

    side_px = max(2, int(round(min(height, width) * rng.uniform(*CROP_FRACTION_RANGE))))
    top = int(np.clip(centre_y - side_px // 2, 0, height - side_px))
    left = int(np.clip(centre_x - side_px // 2, 0, width - side_px))
    crop = tile[top : top + side_px, left : left + side_px]
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
