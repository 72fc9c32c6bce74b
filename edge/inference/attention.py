"""Attention model: a defect classifier whose Bi-CAM map locates what it scores, run on frame windows.

The graph takes `windows` [N, 3, H, W] and returns two outputs. `defect_probability` [N] is the
probability that a window contains a defect. `bicam` [N, H, W] is the Bi-CAM map of the defect
class at the input resolution, in raw values that can be negative. A package with a `windows` section is run on
overlapping windows of the cropped frame at native resolution (see edge.preprocess.windows).
Without one, the whole cropped frame is resized to the input (N = 1).

The image score of a part is its highest window probability. Each window's map is ReLU(bicam)
scaled to a maximum of 1, times the window's probability, so a window map peaks at the window
probability. The window maps are stitched over the cropped frame, taking the maximum where
windows overlap, so the part's map is in cropped-frame pixels like a ring package's map.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edge.inference.models import InspectionModel, ModelOutput, register_model_kind, ring_section_of, tensor_of
from edge.inference.package import ModelPackage, PackageError
from edge.inference.tile_classifier import tile_anomaly_maps
from edge.preprocess.ring_input import ModelInput
from edge.preprocess.tiling import TileSpec, stitch_tiles
from edge.preprocess.windows import WINDOWS_SECTION, check_windows_match_input, parse_windows_section

PROBABILITY_OUTPUT = "defect_probability"
BICAM_OUTPUT = "bicam"
OUTPUT_RANKS = {PROBABILITY_OUTPUT: 1, BICAM_OUTPUT: 3}


def window_spec_of(package: ModelPackage) -> TileSpec | None:
    """Parse and check the package's `windows` section; None when the package has none.

    Raises PackageError for an invalid section, for windows combined with a ring unwrap, and
    for windows whose size differs from the model's input size.
    """
    try:
        spec = parse_windows_section(package.description.get(WINDOWS_SECTION))
    except (ValueError, TypeError, KeyError) as error:
        raise PackageError(
            f"{package.path}: the windows section of model.json is invalid ({error}); export the model again"
        ) from error
    if spec is None:
        return None

    if ring_section_of(package).unwraps:
        raise PackageError(
            f"{package.path}: model.json has both a windows section and ring.unwrap, but windows cover a flat frame "
            "and cannot be cut from a ring strip; export the model again with only one of them"
        )
    try:
        check_windows_match_input(spec, package.preprocess)
    except ValueError as error:
        raise PackageError(f"{package.path}: {error}") from error
    return spec


@register_model_kind("attention")
class AttentionModel(InspectionModel):
    """Runs an exported attention classifier on all windows of a part and builds the part's anomaly map."""

    @classmethod
    def needs_dynamic_batch(cls, package: ModelPackage) -> bool:
        return window_spec_of(package) is not None

    def __init__(self, session: ort.InferenceSession, package: ModelPackage) -> None:
        super().__init__(session, package)
        self.windows = window_spec_of(package)
        _check_outputs(session, package)

    def run(self, model_input: ModelInput | np.ndarray, run_options: ort.RunOptions | None = None) -> ModelOutput:
        tensor = tensor_of(model_input)
        window_count = tensor.shape[0]
        probabilities, bicams = self.session.run([PROBABILITY_OUTPUT, BICAM_OUTPUT], {self.input_name: tensor}, run_options)
        probabilities = np.asarray(probabilities, dtype=np.float32)
        bicams = np.asarray(bicams, dtype=np.float32)
        if probabilities.shape != (window_count,) or bicams.shape != (window_count,) + tuple(tensor.shape[2:]):
            raise ValueError(
                f"the attention model returned probabilities {list(probabilities.shape)} and Bi-CAMs "
                f"{list(bicams.shape)} for input {list(tensor.shape)}; export the model again with outputs "
                f"[N] and [N, H, W] at the input resolution"
            )
        if not (np.all(np.isfinite(probabilities)) and np.all(np.isfinite(bicams))):
            raise ValueError("the attention model returned values that are not finite (NaN or infinity); check the model")

        window_maps = tile_anomaly_maps(probabilities, bicams)
        image_score = float(np.max(probabilities))
        origins = model_input.tile_origins if isinstance(model_input, ModelInput) else None
        if self.windows is None or origins is None:
            if window_count != 1:
                raise ValueError(
                    f"the attention model received {window_count} images without window origins, so their maps "
                    "cannot be placed; pass the ModelInput from Inspector.preprocess"
                )
            # The one input covers the cropped frame (resized): its map is the part's map.
            return ModelOutput(anomaly_map=window_maps[0], image_score=image_score)

        frame_map = stitch_tiles(window_maps, origins, self.windows, model_input.crop_shape, wrap_columns=False)
        return ModelOutput(anomaly_map=frame_map, image_score=image_score)


def _check_outputs(session: ort.InferenceSession, package: ModelPackage) -> None:
    """Raise PackageError unless the graph has both outputs with ranks [N] and [N, H, W].

    Axes that the graph leaves symbolic, and outputs of unknown rank (ONNX Runtime reports
    their shape as []), are checked when the model runs.
    """
    outputs = {output.name: output.shape for output in session.get_outputs()}
    missing = [name for name in OUTPUT_RANKS if name not in outputs]
    if missing:
        raise PackageError(
            f"{package.path}: the ONNX graph lacks the output(s) {', '.join(missing)} of an attention model "
            f"(it has {', '.join(sorted(outputs))}); export the model again"
        )
    for name, rank in OUTPUT_RANKS.items():
        shape = outputs[name] or []
        if shape and len(shape) != rank:
            raise PackageError(
                f"{package.path}: the ONNX output {name} has shape {shape}, but an attention model needs "
                f"{'[N]' if rank == 1 else '[N, H, W]'}; export the model again"
            )

    expected = [package.preprocess.input_height, package.preprocess.input_width]
    map_size = list((outputs[BICAM_OUTPUT] or [])[1:])
    if map_size and all(isinstance(size, int) for size in map_size) and map_size != expected:
        raise PackageError(
            f"{package.path}: the ONNX output {BICAM_OUTPUT} has shape {outputs[BICAM_OUTPUT]}, but its maps must have "
            f"the input size {expected}; export the model again with the Bi-CAM at the input resolution"
        )
