"""Training images: listing, splitting and preprocessing through the daemon's own preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch

from edge.preprocess.transform import Preprocessor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(folder: Path) -> list[Path]:
    """Return the images under `folder`, searched recursively, in name order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; pass a folder of good-part images")
    images = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}; add images there or remove the folder"
        )
    return images


def split_calibration(images: Sequence[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Split images into (fitting, calibration) with a seeded shuffle; both keep name order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--calibration-fraction {fraction} is invalid; use a value between 0 and 1, for example 0.2")
    # Two held-out images are the least from which a spread of good scores can be estimated.
    count = max(2, int(round(len(images) * fraction)))
    if len(images) - count < 2:
        raise ValueError(
            f"{len(images)} images leave fewer than 2 for fitting after holding out {count} for calibration; "
            "add good images or lower --calibration-fraction"
        )
    order = np.random.default_rng(seed).permutation(len(images))
    calibration = sorted(images[index] for index in order[:count])
    fitting = sorted(images[index] for index in order[count:])
    return fitting, calibration


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image {path}; remove it or replace it with a readable PNG/JPEG")
    return image


def tensor_batches(
    images: Sequence[Path], preprocessor: Preprocessor, batch_size: int
) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """Yield (paths, N x 3 x H x W float32 tensor) batches preprocessed exactly as the daemon does."""
    for start in range(0, len(images), batch_size):
        paths = list(images[start : start + batch_size])
        arrays = [preprocessor(read_image(path)) for path in paths]
        yield paths, torch.from_numpy(np.concatenate(arrays, axis=0))
