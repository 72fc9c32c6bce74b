"""Cut an unwrapped strip into overlapping tiles and stitch tile scores back into a strip map.

The strip's columns are periodic (the angle wraps at 360 degrees), so tiles that cross the
right edge continue at the left edge. Rows do not wrap: vertical tiles start at 0 and the last
one is aligned with the bottom row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from edge.preprocess.transform import PreprocessError


@dataclass(frozen=True)
class TileSpec:
    """Tile size and stride in strip pixels.

    `stride_px` is the step between tile origins along the angle, and also down the strip when
    tile_height_px is less than the strip height. A stride below the tile size makes tiles
    overlap. A stride above it would leave gaps, so it is rejected. Down the strip this applies
    only when tiles are shorter than the strip.
    """

    tile_height_px: int
    tile_width_px: int
    stride_px: int

    def __post_init__(self) -> None:
        if min(self.tile_height_px, self.tile_width_px) < 1:
            raise ValueError(f"tile size {self.tile_height_px}x{self.tile_width_px} is invalid; use at least 1x1 px")
        if not 1 <= self.stride_px <= self.tile_width_px:
            raise ValueError(
                f"stride_px {self.stride_px} is invalid; use 1 to tile_width_px = {self.tile_width_px} "
                "so that tiles cover the strip without gaps"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TileSpec:
        return cls(int(data["tile_height_px"]), int(data["tile_width_px"]), int(data["stride_px"]))


def tile_origins(strip_shape: tuple[int, ...], spec: TileSpec) -> list[tuple[int, int]]:
    """Return the (row, column) of each tile's top-left pixel, row by row.

    There are ceil(width / stride_px) tiles along the angle, so every column is covered once
    the last tiles wrap around the seam.
    """
    height, width = strip_shape[:2]
    if spec.tile_height_px > height or spec.tile_width_px > width:
        raise PreprocessError(
            f"tile {spec.tile_height_px}x{spec.tile_width_px} px does not fit in the {height}x{width} strip; "
            "use smaller tiles or a larger UnwrapSpec"
        )
    if spec.tile_height_px < height and spec.stride_px > spec.tile_height_px:
        raise PreprocessError(
            f"stride_px {spec.stride_px} exceeds tile_height_px {spec.tile_height_px} on a {height}-row strip, "
            "which would leave rows uncovered; lower stride_px or make tiles as tall as the strip"
        )
    rows = list(range(0, height - spec.tile_height_px + 1, spec.stride_px))
    if rows[-1] != height - spec.tile_height_px:
        rows.append(height - spec.tile_height_px)
    columns = [index * spec.stride_px for index in range(math.ceil(width / spec.stride_px))]
    return [(row, column) for row in rows for column in columns]


def tile_strip(strip: np.ndarray, spec: TileSpec) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Cut a strip into tiles: an array [N, h, w] (or [N, h, w, C]) and each tile's (row, column) origin.

    Tiles that cross the 0/360 degree seam take their last columns from the start of the strip.
    """
    origins = tile_origins(strip.shape, spec)
    width = strip.shape[1]
    offsets = np.arange(spec.tile_width_px)
    tiles = np.empty((len(origins), spec.tile_height_px, spec.tile_width_px) + strip.shape[2:], dtype=strip.dtype)
    for index, (row, column) in enumerate(origins):
        tiles[index] = strip[row : row + spec.tile_height_px, (column + offsets) % width]
    return tiles, origins


def stitch_tiles(
    tile_scores: np.ndarray,
    origins: list[tuple[int, int]],
    spec: TileSpec,
    strip_shape: tuple[int, ...],
    fill_value: float = 0.0,
) -> np.ndarray:
    """Combine per-tile scores into a float32 strip map, taking the maximum where tiles overlap.

    `tile_scores` is [N] (one score per tile, spread over the tile) or [N, h', w'] (a map per
    tile at any resolution, resized to the tile size with bilinear interpolation). Tiles wrap
    around the seam as in tile_strip. Pixels that no tile covers get `fill_value`.
    """
    scores = np.asarray(tile_scores, dtype=np.float32)
    if scores.ndim not in (1, 3) or scores.shape[0] != len(origins):
        raise PreprocessError(
            f"tile scores shape {scores.shape} does not match {len(origins)} tiles; pass [N] or [N, h, w] scores"
        )
    height, width = strip_shape[:2]
    stitched = np.full((height, width), -np.inf, dtype=np.float32)
    offsets = np.arange(spec.tile_width_px)
    tile_size = (spec.tile_width_px, spec.tile_height_px)

    for index, (row, column) in enumerate(origins):
        if scores.ndim == 1:
            tile_map = np.full((spec.tile_height_px, spec.tile_width_px), scores[index], dtype=np.float32)
        elif scores.shape[1:] == (spec.tile_height_px, spec.tile_width_px):
            tile_map = scores[index]
        else:
            tile_map = cv2.resize(scores[index], tile_size, interpolation=cv2.INTER_LINEAR)
        columns = (column + offsets) % width
        rows = slice(row, row + spec.tile_height_px)
        stitched[rows, columns] = np.maximum(stitched[rows, columns], tile_map)

    stitched[np.isneginf(stitched)] = fill_value
    return stitched
