"""Pipeline counters and latency percentiles, shared by the stage threads and the status message."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from edge.parts import Part, RejectReason, Verdict

DEFAULT_WINDOW_SIZE = 1000

# Counters every snapshot contains, so that the status message keeps one shape from the start.
BASE_COUNTERS = ("frames", "pass", "fail", "reject", "published", "send_dropped", "publish_overflow")


class PipelineStats:
    """Thread-safe counters and per-stage latency windows.

    Stage threads count frames, verdicts and latencies. The publisher counts `published`,
    `send_dropped` and `publish_overflow` itself. `record_part` counts a finished part's verdict and latencies,
    so the pipeline calls it once per part, not once per stage.

    Latency windows keep the last `window_size` values per stage, so percentiles follow the
    recent behaviour of the line rather than its whole history.
    """

    def __init__(self, window_size: int = DEFAULT_WINDOW_SIZE) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {window_size}")
        self._lock = threading.Lock()
        self._window_size = window_size
        self._started_monotonic_s = time.monotonic()
        self._counters: dict[str, int] = dict.fromkeys(BASE_COUNTERS, 0)
        self._rejected_by_reason: dict[str, int] = {reason.value: 0 for reason in RejectReason}
        self._latency_ms: dict[str, deque[float]] = {}

    def increment(self, counter: str, amount: int = 1) -> None:
        """Add `amount` to a named counter, creating it at zero when new."""
        with self._lock:
            self._counters[counter] = self._counters.get(counter, 0) + amount

    def count_frame(self) -> None:
        self.increment("frames")

    def count_published(self) -> None:
        self.increment("published")

    def count_send_dropped(self) -> None:
        self.increment("send_dropped")

    def count_publish_overflow(self) -> None:
        self.increment("publish_overflow")

    def count_verdict(self, verdict: Verdict, reason: RejectReason | None = None) -> None:
        """Count one part's verdict. A REJECT also counts under its reason, or under "unknown" without one."""
        verdict = Verdict(verdict)
        with self._lock:
            key = verdict.value.lower()
            self._counters[key] = self._counters.get(key, 0) + 1
            if verdict is Verdict.REJECT:
                reason_key = RejectReason(reason).value if reason is not None else "unknown"
                self._rejected_by_reason[reason_key] = self._rejected_by_reason.get(reason_key, 0) + 1

    def record_latency(self, stage: str, latency_ms: float) -> None:
        """Add one latency in ms to a stage's window, ignoring non-finite values."""
        if not np.isfinite(latency_ms):
            return
        with self._lock:
            window = self._latency_ms.get(stage)
            if window is None:
                window = self._latency_ms[stage] = deque(maxlen=self._window_size)
            window.append(float(latency_ms))

    def record_part(self, part: Part) -> None:
        """Count a finished part's verdict and record its stage latencies and total latency.

        The total runs from capture to decision on the monotonic clock and is recorded only
        when the part was stamped with `Part.stamp_decision()`.
        """
        if part.verdict is not None:
            self.count_verdict(part.verdict, part.reason)
        for stage, latency_ms in part.stage_ms.items():
            self.record_latency(stage, latency_ms)
        if part.decision_monotonic_ns is not None:
            total_ms = (part.decision_monotonic_ns - part.frame.capture_monotonic_ns) / 1e6
            self.record_latency("total", total_ms)

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counters.get(name, 0)

    def snapshot(self, queue_depths: dict | None = None, source: dict | None = None) -> dict:
        """Return a JSON-safe copy of all counters and latency percentiles.

        `queue_depths` (queue name to number of waiting parts) and `source` (as returned by
        `FrameSource.describe()`) are copied into the result unchanged. Percentiles of an
        empty window are None.
        """
        with self._lock:
            counters = dict(self._counters)
            rejected_by_reason = dict(self._rejected_by_reason)
            windows = {stage: list(values) for stage, values in self._latency_ms.items()}
            uptime_s = time.monotonic() - self._started_monotonic_s

        return {
            "uptime_s": round(uptime_s, 3),
            "counters": counters,
            "rejected_by_reason": rejected_by_reason,
            "queue_depths": dict(queue_depths or {}),
            "latency_ms": {stage: _percentiles(values) for stage, values in windows.items()},
            "source": dict(source or {}),
        }


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "count": 0}
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "count": len(values)}
