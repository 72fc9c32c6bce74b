"""PaDiM: an anomaly map of Mahalanobis distances to the good-part feature distribution."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edge.inference.models import InspectionModel, ModelOutput, register_model_kind, tensor_of
from edge.preprocess.ring_input import ModelInput

ANOMALY_MAP_OUTPUT = "anomaly_map"
IMAGE_SCORE_OUTPUT = "image_score"


@register_model_kind("padim")
class PadimModel(InspectionModel):
    """Runs an exported PaDiM graph, which computes the smoothed map and its maximum itself.

    A package with a `ring` section is fitted on unwrapped strips. The map then covers the strip.
    """

    def run(self, model_input: ModelInput | np.ndarray, run_options: ort.RunOptions | None = None) -> ModelOutput:
        anomaly_map, image_score = self.session.run(
            [ANOMALY_MAP_OUTPUT, IMAGE_SCORE_OUTPUT], {self.input_name: tensor_of(model_input)}, run_options
        )
        return ModelOutput(anomaly_map=anomaly_map[0, 0].astype(np.float32, copy=False), image_score=float(image_score[0]))
