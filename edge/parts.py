"""The records a part carries through the pipeline: frame, verdict, reject reason, regions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge.preprocess.ring_input import ModelInput


class Verdict(str, Enum):
    """Outcome published for every captured part."""

    PASS = "PASS"
    FAIL = "FAIL"
    # The part was not inspected, so it must not pass (fail-safe reject).
    REJECT = "REJECT"


class RejectReason(str, Enum):
    """Reason a part was rejected without an inspection verdict."""

    OVERLOAD = "overload"
    BAD_FRAME = "bad_frame"
    PREPROCESS_ERROR = "preprocess_error"
    INFERENCE_ERROR = "inference_error"
    DECISION_ERROR = "decision_error"
    SHUTDOWN = "shutdown"
    # The light controller had not confirmed the recipe, so the image cannot be trusted.
    LIGHT_FAULT = "light_fault"
    # The part reached the ejector before its verdict.
    LATE = "late"
    # The PLC reported a part that the station never received a trigger for.
    MISSED_TRIGGER = "missed_trigger"
    # A ring model found no ring on the part (not in view, out of focus, a different part).
    RING_NOT_FOUND = "ring_not_found"


@dataclass(slots=True)
class Frame:
    """One captured image with its capture timestamps.

    `image` is HxWx3 uint8 in BGR order (OpenCV's convention) or HxW uint8 grey. It is None
    when the source delivered something that could not be decoded; `error` then gives the reason.
    """

    image: np.ndarray | None
    capture_time_ns: int
    capture_monotonic_ns: int
    source_ref: str = ""
    error: str | None = None

    @classmethod
    def now(cls, image: np.ndarray | None, source_ref: str = "", error: str | None = None) -> Frame:
        """Stamp a frame with the current wall-clock and monotonic time."""
        return cls(image, time.time_ns(), time.monotonic_ns(), source_ref, error)


@dataclass(slots=True)
class Region:
    """A connected defect region of the anomaly map above the pixel threshold.

    Coordinates are pixels of the captured frame, so they stay meaningful whatever the model's
    input size and ROI. Ring models also locate the peak on the part's ring: `peak_angle_deg`
    (0 at the image +x axis, clockwise on screen) and `peak_radius_px` (from the ring centre).
    Both are None for other models.
    """

    area_px: int
    bbox_xywh: tuple[int, int, int, int]
    peak_score: float
    peak_xy: tuple[int, int]
    peak_angle_deg: float | None = None
    peak_radius_px: float | None = None

    def to_dict(self) -> dict:
        data = {
            "area_px": self.area_px,
            "bbox_xywh": list(self.bbox_xywh),
            "peak_score": self.peak_score,
            "peak_xy": list(self.peak_xy),
        }
        if self.peak_angle_deg is not None and self.peak_radius_px is not None:
            data["peak_angle_deg"] = self.peak_angle_deg
            data["peak_radius_px"] = self.peak_radius_px
        return data


@dataclass(slots=True)
class Part:
    """A part on its way through the stages; each stage fills in its fields."""

    part_id: int
    frame: Frame
    # Inference drops the input's tensor and keeps the ring geometry that the decision maps the result back with.
    model_input: ModelInput | None = None
    anomaly_map: np.ndarray | None = None
    image_score: float | None = None
    verdict: Verdict | None = None
    reason: RejectReason | None = None
    detail: str | None = None
    regions: list[Region] = field(default_factory=list)
    # Frame rectangle (x, y, width, height in pixels) that the anomaly map covers: the ROI.
    map_frame_xywh: tuple[int, int, int, int] | None = None
    stage_ms: dict[str, float] = field(default_factory=dict)
    decision_time_ns: int | None = None
    decision_monotonic_ns: int | None = None
    # Set once the part was handed to the publisher, so no part is published twice.
    finished: bool = False

    def reject(self, reason: RejectReason, detail: str | None = None) -> Part:
        """Mark the part as not inspected and drop its pixel data."""
        self.verdict = Verdict.REJECT
        self.reason = reason
        self.detail = detail
        self.model_input = None
        self.anomaly_map = None
        self.regions = []
        return self

    def stamp_decision(self) -> None:
        self.decision_time_ns = time.time_ns()
        self.decision_monotonic_ns = time.monotonic_ns()
