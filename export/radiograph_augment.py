"""Label-preserving transforms of grey radiograph windows: flips, small rotations, gamma and sensor noise.

X-ray images have no up or left, so both flips are safe. Rotations stay small because a
window's corners would otherwise be filled with reflected content. Gamma changes mimic tube
voltage and exposure; additive Gaussian noise mimics the detector's quantum noise. Every
transform draws from the numpy Generator it is given, so a seeded run repeats exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

MAX_ROTATION_DEG = 10.0
ROTATION_PROBABILITY = 0.5
GAMMA_RANGE = (0.7, 1.4)
MAX_NOISE_SIGMA = 4.0


def augment_window(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return a randomly flipped, rotated, gamma-changed and noisy copy of a uint8 [h, w] window."""
    if rng.random() < 0.5:
        window = window[:, ::-1]
    if rng.random() < 0.5:
        window = window[::-1, :]
    window = np.ascontiguousarray(window)
    if rng.random() < ROTATION_PROBABILITY:
        window = rotated(window, rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    window = gamma_changed(window, rng.uniform(*GAMMA_RANGE))
    return with_noise(window, rng.uniform(0.0, MAX_NOISE_SIGMA), rng)


def rotated(window: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate about the centre, filling the corners by reflection."""
    height, width = window.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle_deg, 1.0)
    return cv2.warpAffine(window, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def gamma_changed(window: np.ndarray, gamma: float) -> np.ndarray:
    table = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(window, table)


def with_noise(window: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if sigma <= 0.0:
        return window
    noisy = window.astype(np.float32) + rng.normal(0.0, sigma, size=window.shape).astype(np.float32)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
