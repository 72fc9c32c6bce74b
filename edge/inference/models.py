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


@dataclass(slots=True)
class ModelOutput:
    """Output of every model kind for one part: an anomaly map at model input size and an image score."""

    anomaly_map: np.ndarray
    image_score: float


class InspectionModel(ABC):
    """One model kind running on an ONNX Runtime session."""

    kind: str = ""

    def __init__(self, session: ort.InferenceSession, package: ModelPackage) -> None:
        self.session = session
        self.package = package
        self.input_name = session.get_inputs()[0].name

    @abstractmethod
    def run(self, tensor: np.ndarray, run_options: ort.RunOptions | None = None) -> ModelOutput:
        """Score one preprocessed 1x3xHxW tensor; `run_options` lets a watchdog terminate the call."""


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
    from edge.inference import padim  # noqa: F401

    model_class = MODEL_KINDS.get(package.kind)
    if model_class is None:
        raise PackageError(
            f"{package.path}: model kind {package.kind!r} is not supported by this daemon "
            f"(supported: {', '.join(sorted(MODEL_KINDS))}); update the daemon"
        )
    session = create_session(package.onnx_path, config)
    _check_input_shape(session, package)
    model = model_class(session, package)
    warm_up(session, config.warmup_runs)
    return model


def _check_input_shape(session: ort.InferenceSession, package: ModelPackage) -> None:
    """Reject a package whose description does not match the graph's fixed input size."""
    shape = session.get_inputs()[0].shape
    expected = [package.preprocess.input_height, package.preprocess.input_width]
    if len(shape) != 4 or list(shape[2:]) != expected:
        raise PackageError(
            f"{package.path}: the ONNX input shape {shape} does not match the input size {expected} in "
            "model.json; export the model again"
        )
