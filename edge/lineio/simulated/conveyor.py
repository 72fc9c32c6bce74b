"""The simulated conveyor: an encoder that counts at a constant speed from a start time."""

from __future__ import annotations

import time


class Conveyor:
    """Encoder position of a belt that moves at `speed_counts_per_s` on the monotonic clock."""

    def __init__(self, speed_counts_per_s: float, start_counts: int = 0) -> None:
        if speed_counts_per_s <= 0:
            raise ValueError(f"speed_counts_per_s must be positive, got {speed_counts_per_s}")
        self.speed_counts_per_s = speed_counts_per_s
        self._start_counts = start_counts
        self._start_ns = time.monotonic_ns()

    def position_counts(self, monotonic_ns: int | None = None) -> int:
        now_ns = time.monotonic_ns() if monotonic_ns is None else monotonic_ns
        return self._start_counts + int((now_ns - self._start_ns) * self.speed_counts_per_s / 1e9)

    def time_at_counts_ns(self, counts: int) -> int:
        """Monotonic time at which the encoder reaches `counts`."""
        return self._start_ns + int((counts - self._start_counts) * 1e9 / self.speed_counts_per_s)
