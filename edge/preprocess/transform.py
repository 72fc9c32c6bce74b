"""The one preprocessing implementation, shared by model export, evaluation and the daemon.

A frame is cropped to the ROI, resized to the model's input size with the named interpolation,
put in the model's colour order, scaled to [0, 1] and normalised with the model's mean and std.
Export feeds training images through this same code, so the exported model receives exactly
the input it was fitted on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}

# Normalisation conventions a backbone may have been trained with. The EfficientNet-Lite
# weights were ported from TensorFlow, which maps pixels with (x - 127.5) / 128.
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf": ((127.5 / 255.0,) * 3, (128.0 / 255.0,) * 3),
}


class PreprocessError(ValueError):
    """A frame that cannot be preprocessed (wrong shape, ROI outside the frame)."""


@dataclass(frozen=True)
class Roi:
    """Crop rectangle in frame pixels."""

    x: int
    y: int
    width: int
    height: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PreprocessSpec:
    """Input format of a model, stored in the model package."""

    input_height: int
    input_width: int
    color_order: str = "RGB"
    resize_interpolation: str = "area"
    normalization: str = "tf"
    mean: tuple[float, float, float] = field(default=NORMALIZATIONS["tf"][0])
    std: tuple[float, float, float] = field(default=NORMALIZATIONS["tf"][1])
    roi: Roi | None = None

    def __post_init__(self) -> None:
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order {self.color_order!r} is not supported; use RGB or BGR")
        if self.resize_interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"resize_interpolation {self.resize_interpolation!r} is not supported; use one of {sorted(INTERPOLATIONS)}"
            )
        if min(self.input_height, self.input_width) < 8:
            raise ValueError(f"input size {self.input_height}x{self.input_width} is too small; use at least 8x8")

    @classmethod
    def with_normalization(cls, input_size: int, normalization: str, **kwargs) -> PreprocessSpec:
        """Build a spec for a square input whose mean and std follow a named convention."""
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {normalization!r} is unknown; use one of {sorted(NORMALIZATIONS)}")
        mean, std = NORMALIZATIONS[normalization]
        return cls(input_size, input_size, normalization=normalization, mean=mean, std=std, **kwargs)

    def to_dict(self) -> dict:
        return {
            "input_size": [self.input_height, self.input_width],
            "color_order": self.color_order,
            "resize_interpolation": self.resize_interpolation,
            "normalization": self.normalization,
            "mean": list(self.mean),
            "std": list(self.std),
            "roi": self.roi.to_dict() if self.roi else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        height, width = data["input_size"]
        roi = Roi(**data["roi"]) if data.get("roi") else None
        return cls(
            input_height=int(height),
            input_width=int(width),
            color_order=data["color_order"],
            resize_interpolation=data["resize_interpolation"],
            normalization=data.get("normalization", "custom"),
            mean=tuple(float(value) for value in data["mean"]),
            std=tuple(float(value) for value in data["std"]),
            roi=roi,
        )


class Preprocessor:
    """Turn BGR or grey uint8 frames into the model's NCHW float32 input tensor."""

    def __init__(self, spec: PreprocessSpec, roi: Roi | None = None) -> None:
        self.spec = spec
        self.roi = roi if roi is not None else spec.roi
        self._scale = (1.0 / (255.0 * np.asarray(spec.std, dtype=np.float32))).reshape(3, 1, 1)
        self._offset = (np.asarray(spec.mean, dtype=np.float32) / np.asarray(spec.std, dtype=np.float32)).reshape(3, 1, 1)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """Return the ROI of a frame (the whole frame when no ROI is set)."""
        if self.roi is None:
            return image
        height, width = image.shape[:2]
        roi = self.roi
        if roi.x + roi.width > width or roi.y + roi.height > height:
            raise PreprocessError(
                f"ROI x={roi.x} y={roi.y} width={roi.width} height={roi.height} does not fit in a "
                f"{width}x{height} frame; shrink the ROI (preprocess.roi, or --roi of edge-export)"
            )
        return image[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width]

    def resized_rgb(self, image: np.ndarray) -> np.ndarray:
        """Crop, convert to 3 channels in the model's colour order and resize; uint8 HxWx3."""
        image = _as_bgr(image)
        image = self.crop(image)
        size = (self.spec.input_width, self.spec.input_height)
        image = cv2.resize(image, size, interpolation=INTERPOLATIONS[self.spec.resize_interpolation])
        if self.spec.color_order == "RGB":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return image

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Return the normalised 1x3xHxW float32 tensor for one frame."""
        resized = self.resized_rgb(image)
        chw = resized.transpose(2, 0, 1).astype(np.float32)
        tensor = chw * self._scale - self._offset
        return np.ascontiguousarray(tensor[np.newaxis], dtype=np.float32)

    def normalised(self, image: np.ndarray) -> np.ndarray:
        """Return a BGR or grey uint8 image as normalised float32 HxWx3 at its own size, neither cropped nor resized.

        Each value equals the one __call__ gives the same pixel when no resize is needed, so
        windows cut from this array equal windows normalised one by one.
        """
        image = _as_bgr(image)
        if self.spec.color_order == "RGB":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return image.astype(np.float32) * self._scale.reshape(3) - self._offset.reshape(3)

    def covered_area(self, frame_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Return (x, y, width, height) of the frame area given to the model: the ROI or the whole frame."""
        if self.roi is not None:
            return self.roi.x, self.roi.y, self.roi.width, self.roi.height
        height, width = frame_shape[:2]
        return 0, 0, width, height

    def map_to_frame(
        self, frame_shape: tuple[int, ...], map_shape: tuple[int, ...] | None = None
    ) -> tuple[float, float, int, int]:
        """Return (scale_x, scale_y, offset_x, offset_y) from map pixels to frame pixels.

        The map covers the ROI (or the whole frame); `map_shape` defaults to the model input size.
        """
        offset_x, offset_y, width, height = self.covered_area(frame_shape)
        map_height, map_width = map_shape[:2] if map_shape is not None else (self.spec.input_height, self.spec.input_width)
        return width / map_width, height / map_height, offset_x, offset_y


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise PreprocessError(f"frame dtype is {image.dtype}; the pipeline expects 8-bit images (uint8)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    raise PreprocessError(f"frame shape {image.shape} is not an image; expected HxW or HxWx3")
