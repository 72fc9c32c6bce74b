"""Overlapping windows over a flat frame, for models that score each window at the frame's resolution.

A package's optional `windows` section (a TileSpec dict) makes the daemon cover the cropped
frame (the ROI, or the whole frame) with windows of tile_height_px x tile_width_px frame pixels.
Nothing is resized, so a window must have the model's input size. Window origins lie every
stride_px from 0 in both axes, plus a last one aligned with the bottom and right edges. Columns
do not wrap, unlike the columns of a ring strip. The shared Preprocessor normalises each window,
and all windows of a part form one [N, 3, H, W] tensor. Export code cuts its training windows
with `windows_for_model`, so training images and live frames pass through one implementation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edge.preprocess.ring_input import ModelInput
from edge.preprocess.tiling import TileSpec, tile_origins, tile_strip
from edge.preprocess.transform import PreprocessError, PreprocessSpec, Preprocessor, Roi

WINDOWS_SECTION = "windows"
WINDOW_KEYS = ("tile_height_px", "tile_width_px", "stride_px")


def parse_windows_section(data: dict[str, Any] | None) -> TileSpec | None:
    """Parse a package's `windows` section; None means no windows (the whole cropped frame is the input).

    Raises ValueError for a section that is not a TileSpec dict, and for a stride above the
    window height, which would leave rows of the frame uncovered.
    """
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"windows section {data!r} is not a mapping; use {{{', '.join(repr(key) + ': ...' for key in WINDOW_KEYS)}}}")
    unknown = sorted(set(data) - set(WINDOW_KEYS))
    missing = [key for key in WINDOW_KEYS if key not in data]
    if unknown or missing:
        raise ValueError(
            f"windows section has keys {', '.join(sorted(data)) or 'none'}; use exactly {', '.join(WINDOW_KEYS)}"
        )
    spec = TileSpec.from_dict(data)
    if spec.stride_px > spec.tile_height_px:
        raise ValueError(
            f"windows.stride_px {spec.stride_px} exceeds the window height {spec.tile_height_px}, which would leave "
            "rows of the frame uncovered; use a stride of at most the window height"
        )
    return spec


def check_windows_match_input(spec: TileSpec, preprocess: PreprocessSpec) -> None:
    """Raise ValueError unless the windows have the model's input size, since windows are never resized."""
    if (spec.tile_height_px, spec.tile_width_px) != (preprocess.input_height, preprocess.input_width):
        raise ValueError(
            f"the windows are {spec.tile_height_px}x{spec.tile_width_px} px (height x width) but the model input is "
            f"{preprocess.input_height}x{preprocess.input_width}; export the model again with windows of the input size"
        )


def window_origins(crop_shape: tuple[int, ...], spec: TileSpec) -> list[tuple[int, int]]:
    """Return the (row, column) of each window's top-left pixel in the cropped frame, row by row.

    Raises PreprocessError when the cropped frame is smaller than a window in either axis.
    """
    height, width = crop_shape[:2]
    if height < spec.tile_height_px or width < spec.tile_width_px:
        raise PreprocessError(
            f"the cropped frame is {width}x{height} px (width x height), smaller than the model's "
            f"{spec.tile_width_px}x{spec.tile_height_px} px window; use a larger ROI (preprocess.roi), or, when "
            "the whole frame is used already, a model with smaller windows (edge-export gdxray --window, then "
            "edge-export attention)"
        )
    return tile_origins(crop_shape, spec, wrap_columns=False)


def cut_windows(cropped: np.ndarray, spec: TileSpec) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Cut a cropped frame into windows [N, h, w(, C)] of its dtype, with each window's (row, column) origin."""
    window_origins(cropped.shape, spec)
    return tile_strip(cropped, spec, wrap_columns=False)


def windows_for_model(
    image: np.ndarray, spec: TileSpec | dict[str, Any], preprocess: PreprocessSpec | None = None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Return the windows of a frame that the daemon gives a windowed model, and their origins.

    The frame is first cropped to `preprocess.roi` when that is set, as the daemon does. The
    windows keep the frame's dtype and channels; the package's Preprocessor then normalises
    each window.
    """
    spec = spec if isinstance(spec, TileSpec) else parse_windows_section(spec)
    if spec is None:
        raise ValueError("the windows section is empty; the whole cropped frame is then the model input")
    cropped = image if preprocess is None else Preprocessor(preprocess).crop(image)
    return cut_windows(cropped, spec)


class WindowPreprocessor:
    """Turn frames into ModelInputs of all their windows, normalised by the package's preprocessing.

    The ModelInput's `tile_origins` are the windows' (row, column) origins in the cropped frame
    and its `crop_shape` the cropped frame's (height, width), which a model needs to stitch the
    window maps. Its `strip_shape` is None, because no strip exists.
    """

    def __init__(self, spec: TileSpec, preprocess: PreprocessSpec, roi: Roi | None = None) -> None:
        check_windows_match_input(spec, preprocess)
        self.spec = spec
        self.crop = Preprocessor(preprocess, roi=roi).crop
        self.normaliser = Preprocessor(dataclasses.replace(preprocess, roi=None))

    def __call__(self, image: np.ndarray) -> ModelInput:
        cropped = self.crop(image)
        crop_shape = (int(cropped.shape[0]), int(cropped.shape[1]))

        # Windows overlap and are never resized, so the cropped frame is normalised once and
        # the windows are cut from the result.
        windows, origins = cut_windows(self.normaliser.normalised(cropped), self.spec)
        tensor = np.ascontiguousarray(windows.transpose(0, 3, 1, 2), dtype=np.float32)
        return ModelInput(tensor, crop_shape, tile_origins=origins)
