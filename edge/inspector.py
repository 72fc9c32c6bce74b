"""The inspection of one frame: preprocessing, model and decision, as the daemon runs them.

The pipeline runs these three steps in separate threads; evaluation runs them one after another
through `Inspector.inspect`. Both use the same objects, so evaluation scores parts exactly as the
daemon does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.config import DecisionConfig, InferenceConfig
from edge.decision.verdict import Decider
from edge.inference.models import InspectionModel, load_model
from edge.inference.package import ModelPackage, Thresholds, load_package
from edge.parts import Region, Verdict
from edge.preprocess.transform import Preprocessor, Roi


@dataclass
class Inspection:
    """The outcome of inspecting one frame."""

    anomaly_map: np.ndarray
    image_score: float
    verdict: Verdict
    regions: list[Region]
    stage_ms: dict[str, float] = field(default_factory=dict)


class Inspector:
    """Preprocessor, model and decider built from one model package."""

    def __init__(
        self,
        package: ModelPackage,
        inference: InferenceConfig | None = None,
        decision: DecisionConfig | None = None,
        roi: Roi | None = None,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
    ) -> None:
        self.package = package
        self.thresholds = Thresholds(
            image=package.thresholds.image if image_threshold is None else image_threshold,
            pixel=package.thresholds.pixel if pixel_threshold is None else pixel_threshold,
        )
        self.preprocessor = Preprocessor(package.preprocess, roi=roi)
        self.model: InspectionModel = load_model(package, inference or InferenceConfig())
        self.decider = Decider(self.thresholds, decision or DecisionConfig())

    @classmethod
    def from_path(cls, model_dir: Path | str, **kwargs) -> Inspector:
        return cls(load_package(model_dir), **kwargs)

    def inspect(self, image: np.ndarray) -> Inspection:
        """Inspect one BGR or grey uint8 frame."""
        started = time.perf_counter()
        tensor = self.preprocessor(image)
        preprocessed = time.perf_counter()
        output = self.model.run(tensor)
        inferred = time.perf_counter()
        verdict, regions = self.decider.decide(
            output, self.preprocessor.map_to_frame(image.shape, output.anomaly_map.shape)
        )
        decided = time.perf_counter()

        return Inspection(
            anomaly_map=output.anomaly_map,
            image_score=output.image_score,
            verdict=verdict,
            regions=regions,
            stage_ms={
                "preprocess": (preprocessed - started) * 1000.0,
                "inference": (inferred - preprocessed) * 1000.0,
                "decision": (decided - inferred) * 1000.0,
            },
        )
