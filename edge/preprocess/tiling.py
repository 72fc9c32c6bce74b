"""Cut an image into overlapping tiles and stitch tile scores back into a map of the image.

By default the image is an unwrapped strip, whose columns are periodic (the angle wraps at
360 degrees), so tiles that cross the right edge continue at the left edge. With
`wrap_columns=False` (windows over a flat frame) columns behave like rows. Rows never wrap:
tiles start at 0 and the last one is aligned with the bottom row.
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


def tile_origins(
    strip_shape: tuple[int, ...], spec: TileSpec, wrap_columns: bool = True
) -> list[tuple[int, int]]:
    """Return the (row, column) of each tile's top-left pixel, row by row.

    With `wrap_columns` there are ceil(width / stride_px) tiles along the angle, so every
    column is covered once the last tiles wrap around the seam. Without it, columns are cut
    like rows: an origin every stride_px from 0, plus a last one aligned with the right edge.
    """
    height, width = strip_shape[:2]
    if spec.tile_height_px > height or spec.tile_width_px > width:
        if wrap_columns:
            raise PreprocessError(
                f"tile {spec.tile_height_px}x{spec.tile_width_px} px does not fit in the {height}x{width} strip; "
                "use smaller tiles or a larger UnwrapSpec"
            )
        raise PreprocessError(
            f"tile {spec.tile_height_px}x{spec.tile_width_px} px does not fit in the {height}x{width} image; "
            "use smaller tiles or a larger image"
        )
    if spec.tile_height_px < height and spec.stride_px > spec.tile_height_px:
        surface = "strip" if wrap_columns else "image"
        raise PreprocessError(
            f"stride_px {spec.stride_px} exceeds tile_height_px {spec.tile_height_px} on a {height}-row {surface}, "
            f"which would leave rows uncovered; lower stride_px or make tiles as tall as the {surface}"
        )
    rows = _aligned_starts(height, spec.tile_height_px, spec.stride_px)
    if wrap_columns:
        columns = [index * spec.stride_px for index in range(math.ceil(width / spec.stride_px))]
    else:
        columns = _aligned_starts(width, spec.tile_width_px, spec.stride_px)
    return [(row, column) for row in rows for column in columns]


def _aligned_starts(length: int, tile_length: int, stride: int) -> list[int]:
    """Return tile starts every `stride` from 0, plus a last start aligned with the end of the axis."""
    starts = list(range(0, length - tile_length + 1, stride))
    if starts[-1] != length - tile_length:
        starts.append(length - tile_length)
    return starts


def tile_strip(
    strip: np.ndarray, spec: TileSpec, wrap_columns: bool = True
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Cut a strip into tiles: an array [N, h, w] (or [N, h, w, C]) and each tile's (row, column) origin.

    With `wrap_columns`, tiles that cross the 0/360 degree seam take their last columns from
    the start of the strip. Without it, every tile lies inside the image (see tile_origins).
    """
    origins = tile_origins(strip.shape, spec, wrap_columns)
    tiles = np.empty((len(origins), spec.tile_height_px, spec.tile_width_px) + strip.shape[2:], dtype=strip.dtype)
    for index, (row, column) in enumerate(origins):
        tiles[index] = strip[row : row + spec.tile_height_px, _tile_columns(column, spec, strip.shape[1], wrap_columns)]
    return tiles, origins


def _tile_columns(column: int, spec: TileSpec, width: int, wrap_columns: bool) -> slice | np.ndarray:
    """Return the columns of a tile starting at `column`: indices modulo the width when wrapping, else a slice."""
    if wrap_columns:
        return (column + np.arange(spec.tile_width_px)) % width
    if not 0 <= column <= width - spec.tile_width_px:
        raise PreprocessError(
            f"tile column {column} with width {spec.tile_width_px} px leaves the {width}-column image, which "
            "only wrapping columns allow; pass origins from tile_origins with wrap_columns=False"
        )
    return slice(column, column + spec.tile_width_px)


def stitch_tiles(
    tile_scores: np.ndarray,
    origins: list[tuple[int, int]],
    spec: TileSpec,
    strip_shape: tuple[int, ...],
    fill_value: float = 0.0,
    wrap_columns: bool = True,
) -> np.ndarray:
    """Combine per-tile scores into a float32 strip map, taking the maximum where tiles overlap.

    `tile_scores` is [N] (one score per tile, spread over the tile) or [N, h', w'] (a map per
    tile at any resolution, resized to the tile size with bilinear interpolation). With
    `wrap_columns`, tiles wrap around the seam as in tile_strip. Without it, a tile that leaves
    the image raises PreprocessError. Pixels that no tile covers get `fill_value`.
    """
    scores = np.asarray(tile_scores, dtype=np.float32)
    if scores.ndim not in (1, 3) or scores.shape[0] != len(origins):
        raise PreprocessError(
            f"tile scores shape {scores.shape} does not match {len(origins)} tiles; pass [N] or [N, h, w] scores"
        )
    height, width = strip_shape[:2]
    stitched = np.full((height, width), -np.inf, dtype=np.float32)
    tile_size = (spec.tile_width_px, spec.tile_height_px)

    for index, (row, column) in enumerate(origins):
        if scores.ndim == 1:
            tile_map = np.full((spec.tile_height_px, spec.tile_width_px), scores[index], dtype=np.float32)
        elif scores.shape[1:] == (spec.tile_height_px, spec.tile_width_px):
            tile_map = scores[index]
        else:
            tile_map = cv2.resize(scores[index], tile_size, interpolation=cv2.INTER_LINEAR)
        columns = _tile_columns(column, spec, width, wrap_columns)
        rows = slice(row, row + spec.tile_height_px)
        stitched[rows, columns] = np.maximum(stitched[rows, columns], tile_map)

    stitched[np.isneginf(stitched)] = fill_value
    return stitched
