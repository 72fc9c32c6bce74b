"""Polling for a condition in tests that talk to devices in other threads."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout_s: float = 2.0, poll_s: float = 0.005) -> bool:
    """Poll `condition` until it is true or `timeout_s` has passed; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()
