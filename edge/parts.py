"""The records a part carries through the pipeline: frame, verdict, reject reason, regions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

import numpy as np


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
    input size and ROI.
    """

    area_px: int
    bbox_xywh: tuple[int, int, int, int]
    peak_score: float
    peak_xy: tuple[int, int]

    def to_dict(self) -> dict:
        return {
            "area_px": self.area_px,
            "bbox_xywh": list(self.bbox_xywh),
            "peak_score": self.peak_score,
            "peak_xy": list(self.peak_xy),
        }


@dataclass(slots=True)
class Part:
    """A part on its way through the stages; each stage fills in its fields."""

    part_id: int
    frame: Frame
    tensor: np.ndarray | None = None
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
        self.tensor = None
        self.anomaly_map = None
        self.regions = []
        return self

    def stamp_decision(self) -> None:
        self.decision_time_ns = time.time_ns()
        self.decision_monotonic_ns = time.monotonic_ns()
