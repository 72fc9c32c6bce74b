"""Model kinds: the registry that turns a model package into something that scores a tensor."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnxruntime as ort

from edge.config import InferenceConfig
from edge.inference.package import ModelPackage, PackageError
from edge.inference.session import create_session, warm_up
from edge.preprocess.ring_input import ModelInput, RingSection
from edge.preprocess.tiling import TileSpec


@dataclass(slots=True)
class ModelOutput:
    """Output of every model kind for one part: an anomaly map and an image score.

    The map covers the model's input: the cropped frame at model input size for whole-frame
    packages, or the whole unwrapped strip (at any resolution) for ring packages.
    """

    anomaly_map: np.ndarray
    image_score: float


class InspectionModel(ABC):
    """One model kind running on an ONNX Runtime session."""

    kind: str = ""
    # Whether the kind scores the tiles of a `ring.tiles` section; other kinds reject such packages.
    accepts_tiles: bool = False
    # The frame windows of a `windows` section, for kinds that score them; None covers the frame with one input.
    windows: TileSpec | None = None

    @classmethod
    def needs_dynamic_batch(cls, package: ModelPackage) -> bool:
        """Return whether this kind sends several images per call for the package."""
        return False

    def __init__(self, session: ort.InferenceSession, package: ModelPackage) -> None:
        self.session = session
        self.package = package
        self.input_name = session.get_inputs()[0].name

    @abstractmethod
    def run(self, model_input: ModelInput | np.ndarray, run_options: ort.RunOptions | None = None) -> ModelOutput:
        """Score one part's preprocessed input; `run_options` lets a watchdog terminate the call.

        `model_input` is a ModelInput or its bare Nx3xHxW tensor.
        """


def tensor_of(model_input: ModelInput | np.ndarray) -> np.ndarray:
    """Return the tensor of a ModelInput, or the array itself."""
    if isinstance(model_input, ModelInput):
        if model_input.tensor is None:
            raise ValueError("the model input has no tensor (it was already run); preprocess the frame again")
        return model_input.tensor
    return model_input


MODEL_KINDS: dict[str, type[InspectionModel]] = {}


def register_model_kind(kind: str) -> Callable[[type[InspectionModel]], type[InspectionModel]]:
    def register(cls: type[InspectionModel]) -> type[InspectionModel]:
        cls.kind = kind
        MODEL_KINDS[kind] = cls
        return cls

    return register


def load_model(package: ModelPackage, config: InferenceConfig) -> InspectionModel:
    """Create the session for a package, pick its model kind and warm it up before the first part."""
    # Importing the kind modules registers them.
    from edge.inference import attention, padim, tile_classifier  # noqa: F401

    model_class = MODEL_KINDS.get(package.kind)
    if model_class is None:
        raise PackageError(
            f"{package.path}: model kind {package.kind!r} is not supported by this daemon "
            f"(supported: {', '.join(sorted(MODEL_KINDS))}); update the daemon"
        )
    session = create_session(package.onnx_path, config)
    _check_input_shape(session, package, model_class.needs_dynamic_batch(package))
    model = model_class(session, package)
    warm_up(session, config.warmup_runs)
    return model


def _check_input_shape(session: ort.InferenceSession, package: ModelPackage, dynamic_batch: bool) -> None:
    """Reject a package whose description does not match the graph's input size.

    Height and width must be fixed and equal the description's input size. The batch axis may
    be fixed or dynamic (a name or None in ONNX Runtime's shape), and must be dynamic when the
    kind runs all tiles of a part in one call.
    """
    shape = session.get_inputs()[0].shape
    expected = [package.preprocess.input_height, package.preprocess.input_width]
    if len(shape) != 4 or list(shape[2:]) != expected:
        raise PackageError(
            f"{package.path}: the ONNX input shape {shape} does not match the input size {expected} in "
            "model.json; export the model again"
        )
    if dynamic_batch and isinstance(shape[0], int):
        raise PackageError(
            f"{package.path}: the ONNX input shape {shape} has a fixed batch of {shape[0]}, but a {package.kind} "
            "model scores all tiles of a part in one call; export the model again with a dynamic batch axis"
        )


def ring_section_of(package: ModelPackage) -> RingSection:
    """Parse the package's `ring` section; a package without one gets an empty section (no unwrap)."""
    try:
        return RingSection.from_dict(package.description.get("ring"))
    except (ValueError, TypeError, KeyError) as error:
        raise PackageError(
            f"{package.path}: the ring section of model.json is invalid ({error}); export the model again"
        ) from error
