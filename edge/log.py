"""structlog setup: readable lines on a terminal, JSON lines otherwise, and repeat counting."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", format: str = "auto") -> None:
    """Send structured events to stderr; `format` is auto, json or console."""
    use_console = format == "console" or (format == "auto" and sys.stderr.isatty())
    renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()) if use_console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=_current_stderr_logger,
        cache_logger_on_first_use=False,
    )


def _current_stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # Resolve sys.stderr at each use, not once at setup, so redirected or replaced streams
    # (test runners, daemon wrappers) are followed.
    return structlog.PrintLogger(file=sys.stderr)


class RepeatLimiter:
    """Log an error the first time it occurs, then at most once per interval with a repeat count.

    A camera that fails every frame, or a subscriber that is always too slow, must not flood the
    journal; the count keeps the information.
    """

    def __init__(self, logger: Any, interval_s: float = 10.0) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, int]] = {}

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            last_logged, suppressed = self._state.get(event, (None, 0))
            if last_logged is not None and now - last_logged < self._interval_s:
                self._state[event] = (last_logged, suppressed + 1)
                return
            self._state[event] = (now, 0)
        if suppressed:
            fields = {**fields, "repeats_since_last_log": suppressed}
        getattr(self._logger, level)(event, **fields)
