"""The inspection of one frame: preprocessing, model and decision, as the daemon runs them.

The pipeline runs these three steps in separate threads; evaluation runs them one after another
through `Inspector.inspect`. Both use the same objects, so evaluation scores parts exactly as the
daemon does.

A package whose `ring` section sets `unwrap` is preprocessed by RingPreprocessor: the part's
ring is found and unwrapped (and tiled for a tile classifier). Its map, which covers the strip,
is drawn back onto the cropped frame before the decision, so regions and the published map are
in frame geometry for every kind. An attention package with a `windows` section is preprocessed
by WindowPreprocessor into overlapping windows of the cropped frame, and its model stitches the
window maps into a map of the cropped frame.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.config import DecisionConfig, InferenceConfig
from edge.decision.verdict import Decider
from edge.inference.models import InspectionModel, ModelOutput, load_model, ring_section_of
from edge.inference.package import ModelPackage, PackageError, Thresholds, load_package
from edge.parts import Region, Verdict
from edge.preprocess.ring import Ring
from edge.preprocess.ring_input import ModelInput, RingPreprocessor, check_tiles_match_input
from edge.preprocess.transform import PreprocessError, Preprocessor, Roi
from edge.preprocess.windows import WINDOWS_SECTION, WindowPreprocessor


@dataclass
class Decision:
    """The verdict of one part with its regions and the anomaly map in frame geometry.

    `anomaly_map` covers `map_frame_xywh` (the ROI, or the whole frame). It has the model's
    input size for whole-frame packages and the size of that rectangle for ring and windowed
    packages.
    """

    verdict: Verdict
    regions: list[Region]
    anomaly_map: np.ndarray
    map_frame_xywh: tuple[int, int, int, int]


@dataclass
class Inspection:
    """The outcome of inspecting one frame. `ring` is in frame pixels, None for whole-frame packages."""

    anomaly_map: np.ndarray
    image_score: float
    verdict: Verdict
    regions: list[Region]
    stage_ms: dict[str, float] = field(default_factory=dict)
    map_frame_xywh: tuple[int, int, int, int] | None = None
    ring: Ring | None = None


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
        self.ring_section = ring_section_of(package)
        self.model: InspectionModel = load_model(package, inference or InferenceConfig())
        self.ring_preprocessor = self._ring_preprocessor()
        self.window_preprocessor = self._window_preprocessor()
        self.decider = Decider(self.thresholds, decision or DecisionConfig())

    @classmethod
    def from_path(cls, model_dir: Path | str, **kwargs) -> Inspector:
        return cls(load_package(model_dir), **kwargs)

    def preprocess(self, image: np.ndarray) -> ModelInput:
        """Return the model input of a BGR or grey uint8 frame.

        Raises RingNotFound when a ring package finds no ring, and PreprocessError when the
        cropped frame is smaller than a windowed package's window.
        """
        if self.ring_preprocessor is not None:
            return self.ring_preprocessor(image)
        if self.window_preprocessor is not None:
            return self.window_preprocessor(image)
        cropped_shape = self.preprocessor.crop(image).shape
        return ModelInput(self.preprocessor(image), (int(cropped_shape[0]), int(cropped_shape[1])))

    def infer(self, model_input: ModelInput, run_options: ort.RunOptions | None = None) -> ModelOutput:
        """Run the model on one part's input; `run_options` lets a watchdog terminate the call."""
        return self.model.run(model_input, run_options)

    def decide(self, output: ModelOutput, model_input: ModelInput, frame_shape: tuple[int, ...]) -> Decision:
        """Draw a ring model's strip map back onto the frame, then apply the thresholds.

        `model_input` needs only its geometry here, so it may come without its tensor.
        """
        map_frame_xywh = self.preprocessor.covered_area(frame_shape)
        anomaly_map = output.anomaly_map
        if self.ring_preprocessor is not None:
            anomaly_map = self.ring_preprocessor.strip_map_to_image(anomaly_map, model_input)

        to_frame = self.preprocessor.map_to_frame(frame_shape, anomaly_map.shape)
        verdict, regions = self.decider.decide(ModelOutput(anomaly_map, output.image_score), to_frame)
        if self.ring_preprocessor is not None:
            regions = [self._locate_on_ring(region, model_input, map_frame_xywh) for region in regions]
        return Decision(verdict, regions, anomaly_map, map_frame_xywh)

    def inspect(self, image: np.ndarray) -> Inspection:
        """Inspect one BGR or grey uint8 frame; raises RingNotFound when a ring package finds no ring."""
        started = time.perf_counter()
        model_input = self.preprocess(image)
        preprocessed = time.perf_counter()
        output = self.infer(model_input)
        inferred = time.perf_counter()
        decision = self.decide(output, model_input, image.shape)
        decided = time.perf_counter()

        return Inspection(
            anomaly_map=decision.anomaly_map,
            image_score=output.image_score,
            verdict=decision.verdict,
            regions=decision.regions,
            stage_ms={
                "preprocess": (preprocessed - started) * 1000.0,
                "inference": (inferred - preprocessed) * 1000.0,
                "decision": (decided - inferred) * 1000.0,
            },
            map_frame_xywh=decision.map_frame_xywh,
            ring=self.ring_in_frame(model_input, image.shape),
        )

    def ring_in_frame(self, model_input: ModelInput, frame_shape: tuple[int, ...]) -> Ring | None:
        """Return the part's ring moved from ROI pixels to frame pixels, or None without a ring."""
        ring = model_input.ring
        if ring is None:
            return None
        x, y, _, _ = self.preprocessor.covered_area(frame_shape)
        return dataclasses.replace(ring, centre_x=ring.centre_x + x, centre_y=ring.centre_y + y)

    def _ring_preprocessor(self) -> RingPreprocessor | None:
        section = self.ring_section
        if not section.unwraps:
            return None
        if section.tiles is not None and not self.model.accepts_tiles:
            raise PackageError(
                f"{self.package.path}: a {self.package.kind} package cannot have ring.tiles; export it again "
                "with tiles null, or as a tile_classifier"
            )
        try:
            check_tiles_match_input(section, self.package.preprocess)
        except PreprocessError as error:
            raise PackageError(f"{self.package.path}: {error}") from error
        return RingPreprocessor(section, self.package.preprocess, roi=self.preprocessor.roi)

    def _window_preprocessor(self) -> WindowPreprocessor | None:
        if self.package.description.get(WINDOWS_SECTION) is None:
            return None
        if self.model.windows is None:
            raise PackageError(
                f"{self.package.path}: a {self.package.kind} package cannot have a windows section; export it again "
                "without windows, or as an attention model"
            )
        return WindowPreprocessor(self.model.windows, self.package.preprocess, roi=self.preprocessor.roi)

    def _locate_on_ring(self, region: Region, model_input: ModelInput, map_frame_xywh: tuple[int, int, int, int]) -> Region:
        x, y = region.peak_xy[0] - map_frame_xywh[0], region.peak_xy[1] - map_frame_xywh[1]
        angle_deg, radius_px = self.ring_preprocessor.polar_position(x, y, model_input)
        return dataclasses.replace(region, peak_angle_deg=round(angle_deg, 2) % 360.0, peak_radius_px=round(radius_px, 2))

