"""Reject timing: parts in transit from the camera to the ejector, and the pulse when each arrives.

Every captured part enters a FIFO in capture order with the moment it reaches the ejector: a
fixed delay after capture, or a conveyor distance in encoder counts. When a part arrives, the
scheduler calls the pipeline's `settle(part) -> (reject, late)`. A part with a verdict is
rejected when that verdict is FAIL or REJECT. A part still without a verdict is published as
REJECT with reason `late` and rejected, so a slow inspection cannot pass a part.

The pulse is `RejectOutput.pulse_start`, followed by `pulse_end` one pulse width later. A part that
arrives while the output is still on for the previous one extends the pulse (counted as
`merged_pulses`) instead of switching it off between the two. The timing error of each pulse (start
of the output command minus the moment the part reached the ejector) goes to the status message.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import structlog

from edge.config import RejectConfig
from edge.lineio.base import LineIOError, PlcInput, RejectOutput
from edge.log import RepeatLimiter
from edge.parts import Part

log = structlog.get_logger(__name__)

# Maximum sleep between checks of the encoder while a part approaches the ejector.
_ENCODER_POLL_S = 0.002
# Pulses kept for the status message between two status messages.
_RECENT_PULSES = 200
_ERROR_WINDOW = 2000


class EncoderClock:
    """Converts between encoder counts and monotonic time from the PLC's latest encoder readings.

    A reading's timestamp is when the station received it, which comes late by a varying
    transmission and scheduling delay. A straight line fitted to the readings of a short window
    averages that delay out, so the estimate of where the conveyor is now does not jump with the
    lateness of the last reading.
    """

    def __init__(self, plc: PlcInput, window_s: float = 0.5) -> None:
        self._plc = plc
        self._window_ns = int(window_s * 1e9)
        self._readings: collections.deque[tuple[int, int]] = collections.deque(maxlen=512)
        self._fit: tuple[int, float, float] | None = None  # (origin_ns, counts at origin, counts per ns)
        self._lock = threading.Lock()

    def _update(self) -> tuple[int, float, float] | None:
        reading = self._plc.encoder_counts()
        with self._lock:
            if reading is None or (self._readings and reading[1] == self._readings[-1][1]):
                return self._fit
            self._readings.append(reading)
            while len(self._readings) > 2 and self._readings[-1][1] - self._readings[0][1] > self._window_ns:
                self._readings.popleft()
            self._fit = self._line_fit()
            return self._fit

    def _line_fit(self) -> tuple[int, float, float]:
        counts = np.array([value for value, _ in self._readings], dtype=np.float64)
        origin_ns = self._readings[-1][1]
        times_s = np.array([(at_ns - origin_ns) / 1e9 for _, at_ns in self._readings], dtype=np.float64)
        if len(counts) < 2 or np.ptp(times_s) == 0:
            return origin_ns, float(counts[-1]), 0.0
        slope_per_s, intercept = np.polyfit(times_s, counts, 1)
        return origin_ns, float(intercept), float(slope_per_s) / 1e9

    def speed_counts_per_ns(self) -> float | None:
        fit = self._update()
        if fit is None or fit[2] == 0.0:
            return None
        return fit[2]

    def counts_at(self, monotonic_ns: int) -> int | None:
        """Encoder position at a moment, from the fitted line; None before any reading."""
        fit = self._update()
        if fit is None:
            return None
        origin_ns, counts, speed = fit
        return int(round(counts + speed * (monotonic_ns - origin_ns)))

    def time_at(self, counts: int) -> int | None:
        """Estimate the moment the encoder reaches `counts`; None while the conveyor is stopped or before readings."""
        fit = self._update()
        if fit is None or fit[2] <= 0:
            return None
        origin_ns, origin_counts, speed = fit
        return int(origin_ns + (counts - origin_counts) / speed)


@dataclass(slots=True)
class _Transit:
    part: Part
    due_ns: int | None
    target_counts: int | None


class RejectScheduler:
    """The FIFO of parts between camera and ejector, served by one thread that fires the pulses."""

    def __init__(
        self,
        config: RejectConfig,
        output: RejectOutput,
        settle: Callable[[Part], tuple[bool, bool]],
        encoder: EncoderClock | None = None,
    ) -> None:
        if config.timing == "encoder" and encoder is None:
            raise ValueError("encoder timing needs an EncoderClock on the PLC input")
        self.config = config
        self.output = output
        self._settle = settle
        self._encoder = encoder
        self._pulse_width_ns = int(config.pulse_width_ms * 1e6)
        self._transit: collections.deque[_Transit] = collections.deque()
        self._condition = threading.Condition()
        self._off_due_ns: int | None = None
        self._off_part_id: int | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._errors = RepeatLimiter(log)
        self._counters = dict.fromkeys(
            ("parts", "pulses", "late", "passed", "pulse_failures", "merged_pulses", "abandoned"), 0
        )
        self._timing_errors_ms: collections.deque[float] = collections.deque(maxlen=_ERROR_WINDOW)
        self._recent: collections.deque[dict] = collections.deque(maxlen=_RECENT_PULSES)

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="reject", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Serve the parts still in transit for up to `timeout_s`, then stop; parts left are counted as abandoned."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(timeout_s, 0.0))
            if self._thread.is_alive():
                with self._condition:
                    self._counters["abandoned"] += len(self._transit)
                    left = len(self._transit)
                    self._transit.clear()
                    self._condition.notify_all()
                self._thread.join(timeout=1.0)
                log.error("parts still in transit at stop were not served by the reject output", parts=left)
            self._thread = None

    def register(self, part: Part, reference_ns: int, reference_counts: int | None = None) -> None:
        """Add a part in capture order.

        `reference_ns` is when the part was at the camera (monotonic). `reference_counts`, the
        encoder position the PLC latched for it, replaces the position estimated from that time.
        """
        if self.config.timing == "delay":
            entry = _Transit(part, reference_ns + int(self.config.delay_ms * 1e6), None)
        else:
            counts = reference_counts if reference_counts is not None else self._encoder.counts_at(reference_ns)
            if counts is None:
                # No encoder reading yet: the part cannot be tracked, so it is rejected at once.
                entry = _Transit(part, reference_ns, None)
                self._errors.warning("no encoder reading yet; part rejected at once", part_id=part.part_id)
            else:
                entry = _Transit(part, None, counts + int(self.config.distance_counts))
        with self._condition:
            self._transit.append(entry)
            self._counters["parts"] += 1
            self._condition.notify_all()

    def in_transit(self) -> int:
        with self._condition:
            return len(self._transit)

    def describe(self, drain_recent: bool = False) -> dict:
        """Counters, timing error percentiles and the pulses since the last call with `drain_recent`."""
        with self._condition:
            counters = dict(self._counters)
            errors = np.asarray(self._timing_errors_ms, dtype=np.float64)
            recent = list(self._recent)
            if drain_recent:
                self._recent.clear()
            in_transit = len(self._transit)
        timing: dict = {"count": int(errors.size), "p50": None, "p99": None, "max": None}
        if errors.size:
            p50, p99 = np.percentile(errors, [50, 99])
            timing.update(p50=round(float(p50), 3), p99=round(float(p99), 3), max=round(float(errors.max()), 3))
        return {
            "timing": self.config.timing,
            "output": self.output.describe(),
            "in_transit": in_transit,
            "counters": counters,
            "timing_error_ms": timing,
            "pulses": recent,
        }

    # The serving thread

    def _run(self) -> None:
        self._raise_priority()
        while True:
            with self._condition:
                if self._stopping and not self._transit and self._off_due_ns is None:
                    return
                wait_s = self._seconds_to_next_event()
                if wait_s > 0:
                    self._condition.wait(timeout=wait_s)
                    continue
                now_ns = time.monotonic_ns()
                switch_off = self._off_due_ns is not None and now_ns >= self._off_due_ns
                entry = self._transit.popleft() if self._transit and self._due(self._transit[0], now_ns) else None
                # A part due at the same moment as the switch-off extends the pulse instead.
                if switch_off and entry is None:
                    off_part_id = self._off_part_id
                    self._off_due_ns = self._off_part_id = None
            if entry is not None:
                self._arrive(entry)
            elif switch_off:
                self._switch_off(off_part_id)

    def _raise_priority(self) -> None:
        """Run this thread with real-time priority where allowed, so other load on the PC delays pulses less."""
        priority = self.config.realtime_priority
        if priority is None or not hasattr(os, "sched_setscheduler"):
            return
        try:
            # On Linux, pid 0 names the calling thread, not the whole process.
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            log.info("reject thread runs with real-time priority", policy="SCHED_FIFO", priority=priority)
        except (PermissionError, OSError) as error:
            log.warning("reject thread runs with normal priority; grant CAP_SYS_NICE for real-time priority",
                        error=str(error))

    def _seconds_to_next_event(self) -> float:
        now_ns = time.monotonic_ns()
        candidates = []
        if self._off_due_ns is not None:
            candidates.append(self._off_due_ns - now_ns)
        if self._transit:
            head = self._transit[0]
            if head.due_ns is not None:
                candidates.append(head.due_ns - now_ns)
            else:
                due_ns = self._encoder.time_at(head.target_counts)
                if due_ns is None:
                    candidates.append(int(_ENCODER_POLL_S * 1e9))
                else:
                    candidates.append(min(due_ns - now_ns, int(_ENCODER_POLL_S * 1e9)) if due_ns > now_ns else 0)
        if not candidates:
            return 0.5
        return max(min(candidates), 0) / 1e9

    def _due(self, entry: _Transit, now_ns: int) -> bool:
        if entry.due_ns is not None:
            return now_ns >= entry.due_ns
        due_ns = self._encoder.time_at(entry.target_counts)
        if due_ns is not None and now_ns >= due_ns:
            entry.due_ns = due_ns
            return True
        return False

    def _arrive(self, entry: _Transit) -> None:
        """Settle a part that reached the ejector, and pulse unless it passed."""
        part = entry.part
        try:
            reject, late = self._settle(part)
        except Exception as error:  # a failure to settle must still reject the part
            self._errors.error("settling a part at the ejector failed; rejecting it", part_id=part.part_id, error=repr(error))
            reject, late = True, False
        with self._condition:
            if late:
                self._counters["late"] += 1
            if not reject:
                self._counters["passed"] += 1
                return

        started_ns = time.monotonic_ns()
        error_ms = (started_ns - entry.due_ns) / 1e6
        try:
            self.output.pulse_start(part.part_id)
        except LineIOError as error:
            with self._condition:
                self._counters["pulse_failures"] += 1
            self._errors.error("reject pulse failed", part_id=part.part_id, error=str(error))
            return

        with self._condition:
            if self._off_due_ns is not None:
                self._counters["merged_pulses"] += 1
            self._off_due_ns = started_ns + self._pulse_width_ns
            self._off_part_id = part.part_id
            self._counters["pulses"] += 1
            self._timing_errors_ms.append(error_ms)
            self._recent.append({"part_id": part.part_id, "timing_error_ms": round(error_ms, 3), "late": late})

    def _switch_off(self, part_id: int) -> None:
        try:
            self.output.pulse_end(part_id)
        except LineIOError as error:
            with self._condition:
                self._counters["pulse_failures"] += 1
            self._errors.error("switching the reject output off failed", part_id=part_id, error=str(error))
