"""Training parts of a tile classifier: class folders, ring tiles of each image, and the 3:1:1 split.

Every image goes through the geometry a `tile_classifier` package describes in its `ring`
section: find_ring, unwrap into a strip as tall as one tile, and tile_strip. Without unwrapping
the whole frame, resized to the tile size, is the one tile of its image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import structlog
import torch

from edge.evaluation.classification_runner import class_folders
from edge.preprocess.polar import UnwrapSpec
from edge.preprocess.ring import RingNotFound, RingSearch
from edge.preprocess.ring_input import RingSection, strip_and_tiles
from edge.preprocess.tiling import TileSpec
from edge.preprocess.transform import INTERPOLATIONS, PreprocessSpec, Preprocessor
from export.images import list_images, read_image

log = structlog.get_logger(__name__)

# Shares of each class's images in the training, validation and test splits.
SPLIT_SHARES = (3, 1, 1)
MIN_IMAGES_PER_CLASS = sum(SPLIT_SHARES)

GOOD_LABEL = 0
DEFECT_LABEL = 1


@dataclass(frozen=True)
class TileLayout:
    """Geometry that turns an image into tiles, stored as the package's `ring` section.

    Without unwrapping, `search`, `unwrap` and `tiles` are all None.
    """

    search: RingSearch | None
    unwrap: UnwrapSpec | None
    tiles: TileSpec | None
    tile_size_px: int
    interpolation: str = "area"

    @classmethod
    def for_tiles(cls, tile_size_px: int, stride_px: int, unwrapped: bool, search: RingSearch | None = None) -> TileLayout:
        """Build the layout for square tiles; the strip is one tile tall and a whole number of strides wide."""
        if not unwrapped:
            return cls(None, None, None, tile_size_px)
        search = search or RingSearch()
        spec = UnwrapSpec(radial_px=tile_size_px, angular_px=strip_width_px(tile_size_px, stride_px, search))
        return cls(search, spec, TileSpec(tile_size_px, tile_size_px, stride_px), tile_size_px)

    def ring_section(self) -> dict:
        return {
            "search": self.search.to_dict() if self.search else None,
            "unwrap": self.unwrap.to_dict() if self.unwrap else None,
            "tiles": self.tiles.to_dict() if self.tiles else None,
        }

    @classmethod
    def from_ring_section(cls, section: dict | None, tile_size_px: int) -> TileLayout:
        if section is None or section.get("unwrap") is None:
            return cls(None, None, None, tile_size_px)
        search = RingSearch.from_dict(section["search"]) if section.get("search") else RingSearch()
        return cls(search, UnwrapSpec.from_dict(section["unwrap"]), TileSpec.from_dict(section["tiles"]), tile_size_px)

    def cut(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, list[tuple[int, int]] | None]:
        """Return (uint8 tiles [N, h, w, 3] in the image's BGR order, the strip, the tile origins).

        Raises RingNotFound when the part's ring is not found. Without unwrapping the strip and
        origins are None and the one tile is the frame resized to the tile size.
        """
        if self.unwrap is None:
            size = (self.tile_size_px, self.tile_size_px)
            resized = cv2.resize(_as_bgr(image), size, interpolation=INTERPOLATIONS[self.interpolation])
            return resized[np.newaxis], None, None
        section = RingSection(search=self.search, unwrap=self.unwrap, tiles=self.tiles)
        strip, tiles, origins = strip_and_tiles(_as_bgr(image), section)
        return tiles, strip, origins


def strip_width_px(tile_size_px: int, stride_px: int, search: RingSearch) -> int:
    """Return a strip width that keeps pixels about square at the ring's mean radius, in whole strides.

    The strip's rows span (outer - inner) radius and its columns the circumference at the mean
    radius, pi (outer + inner). Both radii are fixed fractions of the outer edge, so the ratio
    does not depend on the part's size.
    """
    outer = 1.0 + search.outer_margin_fraction
    inner = search.inner_radius_fraction
    width_px = math.pi * (outer + inner) / (outer - inner) * tile_size_px
    return max(tile_size_px, stride_px * round(width_px / stride_px))


@dataclass
class Part:
    """One training image and its tiles; `label` is 1 for every class folder other than the good one."""

    path: Path
    class_name: str
    label: int
    tiles: np.ndarray
    strip: np.ndarray | None = None
    origins: list[tuple[int, int]] | None = None


@dataclass
class PartSplit:
    train: list[Part]
    validation: list[Part]
    test: list[Part]
    skipped: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)


def load_parts(data_dir: Path, good: str, layout: TileLayout, seed: int) -> PartSplit:
    """Cut every image of `data_dir` into tiles and split the parts 3:1:1 per class, seeded.

    Images whose ring is not found are skipped and listed in `skipped`. Raises ValueError when a
    class keeps fewer than MIN_IMAGES_PER_CLASS images.
    """
    good_folder, defect_folders = class_folders(data_dir, good)
    rng = np.random.default_rng(seed)
    split = PartSplit([], [], [])

    for folder in [good_folder, *defect_folders]:
        label = GOOD_LABEL if folder == good_folder else DEFECT_LABEL
        parts = []
        for path in list_images(folder):
            try:
                tiles, strip, origins = layout.cut(read_image(path))
            except RingNotFound as error:
                log.warning("ring not found, image skipped", path=str(path), error=str(error))
                split.skipped.append(str(path.relative_to(data_dir)))
                continue
            parts.append(Part(path, folder.name, label, tiles, strip, origins))

        if len(parts) < MIN_IMAGES_PER_CLASS:
            raise ValueError(
                f"class folder {folder} has {len(parts)} usable images, too few for a 3:1:1 "
                f"train/validation/test split; add images until it has at least {MIN_IMAGES_PER_CLASS}"
            )
        split.class_counts[folder.name] = len(parts)
        train, validation, test = _split_class(parts, rng)
        split.train += train
        split.validation += validation
        split.test += test

    log.info(
        "training parts loaded",
        train=len(split.train),
        validation=len(split.validation),
        test=len(split.test),
        skipped=len(split.skipped),
        tiles_per_part=int(split.train[0].tiles.shape[0]),
    )
    return split


def _split_class(parts: list[Part], rng: np.random.Generator) -> tuple[list[Part], list[Part], list[Part]]:
    total_shares = sum(SPLIT_SHARES)
    validation_count = max(1, round(len(parts) * SPLIT_SHARES[1] / total_shares))
    test_count = max(1, round(len(parts) * SPLIT_SHARES[2] / total_shares))
    order = rng.permutation(len(parts))
    validation = [parts[index] for index in order[:validation_count]]
    test = [parts[index] for index in order[validation_count : validation_count + test_count]]
    train = [parts[index] for index in order[validation_count + test_count :]]
    return train, validation, test


def normalised_batch(tiles: np.ndarray | list[np.ndarray], preprocessor: Preprocessor) -> torch.Tensor:
    """Return the model input [N, 3, H, W] of uint8 BGR tiles, normalised by the daemon's Preprocessor."""
    return torch.from_numpy(np.concatenate([preprocessor(tile) for tile in tiles], axis=0))


def tile_preprocessor(tile_size_px: int, normalization: str) -> tuple[PreprocessSpec, Preprocessor]:
    spec = PreprocessSpec.with_normalization(tile_size_px, normalization)
    return spec, Preprocessor(spec)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image
