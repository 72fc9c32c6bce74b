"""Tile classifier: a CNN scores every tile of a part's unwrapped ring in one call.

The graph takes `tiles` [N, 3, H, W] and returns `defect_probability` [N] (softmax probability
of the defect class) and `cam` [N, h, w] (the defect class's activation map at the last feature
map's resolution, after ReLU). The image score of a part is its highest tile probability. Each
tile's map is its CAM resized to the tile, divided by its maximum within the tile, times the
tile's probability, so the map peaks at the tile probability. The tile maps are stitched into a strip
map, taking the maximum where tiles overlap.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort

from edge.inference.models import InspectionModel, ModelOutput, register_model_kind, ring_section_of, tensor_of
from edge.inference.package import ModelPackage, PackageError
from edge.preprocess.ring_input import ModelInput
from edge.preprocess.tiling import stitch_tiles

PROBABILITY_OUTPUT = "defect_probability"
CAM_OUTPUT = "cam"


@register_model_kind("tile_classifier")
class TileClassifierModel(InspectionModel):
    """Runs an exported tile classifier on all tiles of a part and builds the part's anomaly map."""

    accepts_tiles = True

    @classmethod
    def needs_dynamic_batch(cls, package: ModelPackage) -> bool:
        return ring_section_of(package).tiles is not None

    def __init__(self, session: ort.InferenceSession, package: ModelPackage) -> None:
        super().__init__(session, package)
        outputs = {output.name for output in session.get_outputs()}
        missing = [name for name in (PROBABILITY_OUTPUT, CAM_OUTPUT) if name not in outputs]
        if missing:
            raise PackageError(
                f"{package.path}: the ONNX graph lacks the output(s) {', '.join(missing)} of a tile_classifier "
                f"(it has {', '.join(sorted(outputs))}); export the model again"
            )
        self.tiles = ring_section_of(package).tiles

    def run(self, model_input: ModelInput | np.ndarray, run_options: ort.RunOptions | None = None) -> ModelOutput:
        tensor = tensor_of(model_input)
        probabilities, cams = self.session.run([PROBABILITY_OUTPUT, CAM_OUTPUT], {self.input_name: tensor}, run_options)
        probabilities = np.asarray(probabilities, dtype=np.float32).reshape(-1)
        cams = np.asarray(cams, dtype=np.float32)
        if probabilities.shape[0] != tensor.shape[0] or cams.ndim != 3 or cams.shape[0] != tensor.shape[0]:
            raise ValueError(
                f"the tile classifier returned probabilities {list(probabilities.shape)} and CAMs {list(cams.shape)} "
                f"for {tensor.shape[0]} tiles; export the model again with outputs [N] and [N, h, w]"
            )

        tile_maps = tile_anomaly_maps(probabilities, cams, tensor.shape[2:])
        image_score = float(np.max(probabilities))
        tiled = isinstance(model_input, ModelInput) and model_input.tile_origins is not None
        if not tiled:
            # One tile covers the model input (the frame, or the whole strip): its map is the part's map.
            return ModelOutput(anomaly_map=tile_maps[0], image_score=image_score)

        strip_map = stitch_tiles(tile_maps, model_input.tile_origins, self.tiles, model_input.strip_shape)
        return ModelOutput(anomaly_map=strip_map, image_score=image_score)


def tile_anomaly_maps(probabilities: np.ndarray, cams: np.ndarray, tile_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Return each tile's map: its CAM scaled to a maximum of 1, times its probability.

    The CAMs are first resized to `tile_shape` (height, width) with bilinear interpolation,
    when given. Scaling after the resize keeps each map's peak at exactly the tile
    probability, which bilinear upsampling of a peaked CAM would otherwise lower. A tile
    whose CAM is nowhere positive has no location, so its whole map is its probability.
    """
    if tile_shape is not None and cams.shape[1:] != tuple(tile_shape):
        height, width = tile_shape
        cams = np.stack([cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR) for cam in cams])
    peaks = cams.reshape(cams.shape[0], -1).max(axis=1)
    normalised = np.ones_like(cams)
    positive = peaks > 0
    normalised[positive] = np.clip(cams[positive] / peaks[positive, np.newaxis, np.newaxis], 0.0, 1.0)
    return normalised * probabilities[:, np.newaxis, np.newaxis]

