"""Replay pacing: frame due times at a fixed rate on the monotonic clock."""

from __future__ import annotations

import threading
import time

import structlog

from edge.acquisition.base import SourceTimeout

log = structlog.get_logger(__name__)


class RatePacer:
    """Schedule of frame due times at a fixed rate on the monotonic clock.

    Without a rate every frame is due at once. A reader that falls behind gets the next frame
    immediately and the schedule continues from there, so it never receives a burst of
    catch-up frames. Setting `wakeup` ends a wait early (the source was closed).
    """

    def __init__(self, rate_fps: float | None, wakeup: threading.Event, name: str = "replay") -> None:
        self.period_ns = None if rate_fps is None else max(1, round(1e9 / rate_fps))
        self.rate_fps = rate_fps
        self.name = name
        self.late_frames = 0
        self._wakeup = wakeup
        self._due_ns: int | None = None

    def wait(self, timeout_s: float) -> bool:
        """Sleep until the next frame is due and return True, or return False after `timeout_s` if it is due later."""
        if self.period_ns is None:
            return True

        now_ns = time.monotonic_ns()
        if self._due_ns is None:
            self._due_ns = now_ns
        remaining_s = (self._due_ns - now_ns) / 1e9
        if remaining_s > timeout_s:
            self._wakeup.wait(max(0.0, timeout_s))
            return False
        if remaining_s > 0:
            self._wakeup.wait(remaining_s)
        return True

    def advance(self) -> None:
        """Schedule the frame after the one just handed out, counting frames handed out late."""
        if self.period_ns is None or self._due_ns is None:
            return
        now_ns = time.monotonic_ns()
        if now_ns - self._due_ns > self.period_ns:
            self.late_frames += 1
            if self.late_frames == 1:
                log.warning(
                    "replay is slower than rate_fps: frames come out late, at the rate the source can read them",
                    source=self.name,
                    rate_fps=self.rate_fps,
                )
        self._due_ns = max(self._due_ns + self.period_ns, now_ns)

    def restart(self) -> None:
        """Make the next frame due at once, as after opening."""
        self._due_ns = None


def pacing_timeout(source: str, rate_fps: float | None, timeout_s: float) -> SourceTimeout:
    """Build the SourceTimeout for a paced replay whose next frame is not due within `timeout_s`."""
    return SourceTimeout(
        f"next frame of {source} is not due within {timeout_s:.3f} s at {rate_fps} fps; read again"
    )
