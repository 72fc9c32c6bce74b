"""Pass/fail decision from the image score and the calibrated thresholds."""

from __future__ import annotations

from dataclasses import dataclass

from edge.config import DecisionConfig
from edge.decision.regions import find_regions
from edge.inference.models import ModelOutput
from edge.inference.package import Thresholds
from edge.parts import Region, Verdict


@dataclass(frozen=True)
class Decider:
    """Apply the image threshold to the image score and extract defect regions from the map.

    A part fails when its image score reaches the image threshold (score >= threshold). Regions
    are reported for failed parts only: a good part's map also has a few pixels above the
    pixel threshold (the calibration allows that share), and boxes on a passed part would
    mislead an operator.
    """

    thresholds: Thresholds
    config: DecisionConfig = DecisionConfig()

    def decide(self, output: ModelOutput, to_frame: tuple[float, float, int, int]) -> tuple[Verdict, list[Region]]:
        if output.image_score < self.thresholds.image:
            return Verdict.PASS, []
        regions = find_regions(
            output.anomaly_map,
            self.thresholds.pixel,
            to_frame,
            min_area_px=self.config.min_region_area_map_px,
            max_regions=self.config.max_regions,
        )
        return Verdict.FAIL, regions
