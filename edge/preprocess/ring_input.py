"""The ring preprocessing of a part, as a model package's `ring` section describes it.

With `ring.unwrap` set, a frame (cropped to the ROI) goes through find_ring and unwrap. An
optional `ring.alignment` reference turns the strip to a canonical angle. With `ring.tiles` set,
the strip is then cut into tiles, and each tile is normalised by the shared Preprocessor into one
[N, 3, H, W] tensor. Without tiles, the whole strip is resized to the model input by the same
Preprocessor (N = 1). Export code calls `strip_for_model` and `tiles_for_model`, so training
images and live frames pass through one implementation.

Without `ring.unwrap` (no section, or all entries null) the whole frame is the model input,
as for every other package.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.preprocess.polar import UnwrapSpec, angular_offset_px, image_point_to_strip, rotate_strip, strip_to_image, unwrap
from edge.preprocess.ring import Ring, RingSearch, find_ring
from edge.preprocess.tiling import TileSpec, tile_strip
from edge.preprocess.transform import PreprocessError, PreprocessSpec, Preprocessor, Roi

RING_SECTION_KEYS = ("search", "unwrap", "tiles", "alignment")


@dataclass(frozen=True)
class RingSection:
    """The parsed `ring` section of a model package.

    `alignment_reference` is a grey (0-255) float32 reference strip, rows x columns. Its
    columns span 360 degrees like the strip's. Strips are turned by angular_offset_px to match
    it before they reach the model.
    """

    search: RingSearch | None = None
    unwrap: UnwrapSpec | None = None
    tiles: TileSpec | None = None
    alignment_reference: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.unwrap is None and (self.tiles is not None or self.alignment_reference is not None):
            raise ValueError("ring.tiles and ring.alignment need ring.unwrap; set unwrap or remove them")
        reference = self.alignment_reference
        if reference is not None and (reference.ndim != 2 or min(reference.shape) < 1 or reference.shape[1] < 8):
            raise ValueError(
                f"ring.alignment.reference has shape {list(reference.shape)}; pass a rows x columns list with "
                "at least 8 columns"
            )

    @property
    def unwraps(self) -> bool:
        return self.unwrap is not None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RingSection:
        """Parse a `ring` section; None or a section with all entries null means no ring preprocessing."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"ring section {data!r} is not a mapping; use {{'search': ..., 'unwrap': ..., 'tiles': ...}}")
        unknown = sorted(set(data) - set(RING_SECTION_KEYS))
        if unknown:
            raise ValueError(f"ring section has unknown keys {', '.join(unknown)}; use only {', '.join(RING_SECTION_KEYS)}")

        reference = None
        alignment = data.get("alignment")
        if alignment is not None:
            if not isinstance(alignment, dict) or "reference" not in alignment:
                raise ValueError("ring.alignment must be {'reference': [[...], ...]}, a grey reference strip")
            reference = np.asarray(alignment["reference"], dtype=np.float32)
            if not np.all(np.isfinite(reference)):
                raise ValueError("ring.alignment.reference contains values that are not finite; export the model again")

        unwrap_data, tiles_data = data.get("unwrap"), data.get("tiles")
        unwrap_spec = UnwrapSpec.from_dict(unwrap_data) if unwrap_data is not None else None

        # The search has defaults, so an unwrapping package may leave it null.
        search = None
        if data.get("search") is not None:
            search = RingSearch.from_dict(data["search"])
        elif unwrap_spec is not None:
            search = RingSearch()

        return cls(
            search=search,
            unwrap=unwrap_spec,
            tiles=TileSpec.from_dict(tiles_data) if tiles_data is not None else None,
            alignment_reference=reference,
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "search": self.search.to_dict() if self.search else None,
            "unwrap": self.unwrap.to_dict() if self.unwrap else None,
            "tiles": self.tiles.to_dict() if self.tiles else None,
        }
        if self.alignment_reference is not None:
            data["alignment"] = {"reference": self.alignment_reference.tolist()}
        return data


@dataclass(slots=True)
class ModelInput:
    """The model input of one part and the geometry that maps the model's output back to the frame.

    `tensor` is [N, 3, H, W] float32. `ring` is in pixels of the cropped frame (the ROI, or the
    whole frame) and is None for whole-frame packages. `strip_shape` is (rows, columns) of the
    unwrapped strip, `tile_origins` the (row, column) of each tile in it, and `rotation_px` the
    column shift applied to align the strip. `crop_shape` is (height, width) of the cropped frame.
    """

    tensor: np.ndarray | None
    crop_shape: tuple[int, int]
    ring: Ring | None = None
    strip_shape: tuple[int, int] | None = None
    tile_origins: list[tuple[int, int]] | None = None
    rotation_px: int = 0

    def without_tensor(self) -> ModelInput:
        """Return the geometry alone, so a part does not hold its tensor after inference."""
        return dataclasses.replace(self, tensor=None)


def as_ring_section(section: RingSection | dict[str, Any] | None) -> RingSection:
    return section if isinstance(section, RingSection) else RingSection.from_dict(section)


def strip_for_model(image: np.ndarray, ring_section: RingSection | dict[str, Any]) -> np.ndarray:
    """Return the aligned strip of a frame that the daemon gives a ring model: uint8, the image's channels.

    The Preprocessor of the package then resizes and normalises it (the whole strip, or each
    tile of `tiles_for_model`). Raises RingNotFound when the part's ring is not found.
    """
    _, strip, _ = _aligned_strip(image, _unwrapping(as_ring_section(ring_section)))
    return strip


def tiles_for_model(
    image: np.ndarray, ring_section: RingSection | dict[str, Any]
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Return the uint8 tiles [N, h, w(, C)] of a frame's aligned strip and their (row, column) origins."""
    _, tiles, origins = strip_and_tiles(image, ring_section)
    return tiles, origins


def strip_and_tiles(
    image: np.ndarray, ring_section: RingSection | dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Return the aligned strip of a frame, its uint8 tiles and their (row, column) origins.

    Training cuts its tiles here, so it sees exactly the tiles the daemon scores.
    """
    section = _unwrapping(as_ring_section(ring_section))
    if section.tiles is None:
        raise ValueError("the ring section has no tiles; use strip_for_model for untiled ring models")
    _, strip, _ = _aligned_strip(image, section)
    tiles, origins = tile_strip(strip, section.tiles)
    return strip, tiles, origins


class RingPreprocessor:
    """Turn frames into ModelInputs following a package's `ring` section, and map results back.

    `roi` crops the frame first, so the ring and every map are in ROI pixels.
    """

    def __init__(self, section: RingSection, spec: PreprocessSpec, roi: Roi | None = None) -> None:
        self.section = _unwrapping(section)
        self.crop = Preprocessor(spec, roi=roi).crop
        # Tiles and strips are already cut from the cropped frame, so this one crops nothing.
        self.normaliser = Preprocessor(dataclasses.replace(spec, roi=None))

    def __call__(self, image: np.ndarray) -> ModelInput:
        cropped = self.crop(image)
        crop_shape = (int(cropped.shape[0]), int(cropped.shape[1]))
        ring, strip, rotation_px = _aligned_strip(cropped, self.section)
        strip_shape = (int(strip.shape[0]), int(strip.shape[1]))

        if self.section.tiles is None:
            return ModelInput(self.normaliser(strip), crop_shape, ring, strip_shape, None, rotation_px)

        tiles, origins = tile_strip(strip, self.section.tiles)
        tensor = np.concatenate([self.normaliser(tile) for tile in tiles], axis=0)
        return ModelInput(tensor, crop_shape, ring, strip_shape, origins, rotation_px)

    def strip_map_to_image(self, strip_map: np.ndarray, model_input: ModelInput) -> np.ndarray:
        """Draw a map of the aligned strip (any resolution) back onto the cropped frame: float32, 0 off the ring.

        The map is resized to the strip size and turned back by the alignment shift first, so
        each value lands where its pixel was captured. Interpolation onto the image lowers a
        narrow peak a little, so a positive result is scaled to keep the strip map's maximum.
        The part's image score thus stays the map's maximum, and a failed part's peak stays
        above the pixel threshold when that equals the image threshold.
        """
        rows, columns = model_input.strip_shape
        strip_map = np.asarray(strip_map, dtype=np.float32)
        if strip_map.shape != (rows, columns):
            strip_map = cv2.resize(strip_map, (columns, rows), interpolation=cv2.INTER_LINEAR)
        if model_input.rotation_px:
            strip_map = rotate_strip(strip_map, -model_input.rotation_px)
        image_map = strip_to_image(strip_map, model_input.ring, self.section.unwrap, model_input.crop_shape)

        strip_peak, image_peak = float(strip_map.max()), float(image_map.max())
        if strip_peak > 0 and image_peak > 0:
            image_map *= np.float32(strip_peak / image_peak)
        return image_map

    def polar_position(self, x: float, y: float, model_input: ModelInput) -> tuple[float, float]:
        """Return (angle in degrees, radius in pixels) of a point of the cropped frame on the part's ring.

        The angle is 0 at +x and grows clockwise on screen, as in the strip. The radius is the
        distance from the ring centre along the upright circle, which is the image distance
        for a circular ring and is measured along the major axis for a tilted part.
        """
        ring = model_input.ring
        columns = model_input.strip_shape[1]
        column, row = image_point_to_strip(x, y, ring, self.section.unwrap, angular_px=columns)
        angle_deg = column * 360.0 / columns
        radius_px = ring.inner_radius_px + (row + 0.5) * (ring.outer_radius_px - ring.inner_radius_px) / self.section.unwrap.radial_px
        return angle_deg, radius_px


def _unwrapping(section: RingSection) -> RingSection:
    if not section.unwraps:
        raise ValueError("the ring section has no unwrap; the whole frame is the model input, so no strip exists")
    return section


def _aligned_strip(image: np.ndarray, section: RingSection) -> tuple[Ring, np.ndarray, int]:
    """Find the ring, unwrap it and turn the strip to the reference angle; return (ring, strip, shift in columns)."""
    ring = find_ring(image, section.search)
    strip = unwrap(image, ring, section.unwrap)
    if section.alignment_reference is None:
        return ring, strip, 0
    rotation_px = _alignment_shift(strip, section.alignment_reference)
    return ring, rotate_strip(strip, rotation_px), rotation_px


def _alignment_shift(strip: np.ndarray, reference: np.ndarray) -> int:
    """Return the column shift that turns `strip` onto `reference`, in strip columns.

    The strip is converted to grey and resized to the reference's rows and columns. A shift
    found at the reference's width is scaled to the strip's width.
    """
    if strip.ndim == 3 and strip.shape[2] == 3:
        grey = cv2.cvtColor(strip, cv2.COLOR_BGR2GRAY)
    elif strip.ndim == 3:
        grey = strip[..., 0]
    else:
        grey = strip
    reference_rows, reference_columns = reference.shape
    small = cv2.resize(grey.astype(np.float32), (reference_columns, reference_rows), interpolation=cv2.INTER_AREA)
    shift = angular_offset_px(small, reference)
    width = strip.shape[1]
    if reference_columns == width:
        return shift
    return int(math.floor(shift * width / reference_columns + 0.5))


def check_tiles_match_input(section: RingSection, spec: PreprocessSpec) -> None:
    """Raise PreprocessError unless the tiles have the model's input size and fit the strip height."""
    tiles = section.tiles
    if tiles is None:
        return
    if (tiles.tile_height_px, tiles.tile_width_px) != (spec.input_height, spec.input_width):
        raise PreprocessError(
            f"ring.tiles are {tiles.tile_height_px}x{tiles.tile_width_px} px but the model input is "
            f"{spec.input_height}x{spec.input_width}; export the model again with tiles of the input size"
        )
    if section.unwrap.radial_px < tiles.tile_height_px:
        raise PreprocessError(
            f"ring.unwrap.radial_px {section.unwrap.radial_px} is below the tile height {tiles.tile_height_px}; "
            "export the model again with radial_px of at least the tile height"
        )
