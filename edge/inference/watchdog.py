"""A watchdog that terminates ONNX Runtime calls running longer than their limit."""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

import onnxruntime as ort
import structlog

log = structlog.get_logger(__name__)

Result = TypeVar("Result")


class InferenceTimeout(RuntimeError):
    """An inference call was terminated because it ran past its time limit or the drain deadline."""


class InferenceWatchdog:
    """Terminate the running call through `RunOptions.terminate` when it exceeds `timeout_s`.

    ONNX Runtime checks the flag between graph nodes, so a call stuck inside one node (a driver
    that never returns) is not interrupted. The pipeline's forced stop covers that case.
    """

    def __init__(self, timeout_s: float, poll_s: float = 0.02) -> None:
        self.timeout_s = timeout_s
        self.timeouts = 0
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._current: tuple[float, ort.RunOptions] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="inference-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def run(self, call: Callable[[ort.RunOptions], Result]) -> Result:
        """Run `call(run_options)` under the watchdog; raise InferenceTimeout when it was terminated."""
        options = ort.RunOptions()
        with self._lock:
            self._current = (time.monotonic(), options)
        try:
            return call(options)
        except Exception as error:
            if options.terminate:
                raise InferenceTimeout(
                    f"inference was terminated after {self.timeout_s * 1000:.0f} ms or at the drain deadline; "
                    "check the model and the providers, or raise inference.timeout_ms"
                ) from error
            raise
        finally:
            with self._lock:
                self._current = None

    def terminate_current(self) -> None:
        """Terminate the running call now, if any (used at the drain deadline)."""
        with self._lock:
            if self._current is not None:
                self._current[1].terminate = True

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            with self._lock:
                if self._current is None:
                    continue
                started, options = self._current
                if options.terminate or time.monotonic() - started <= self.timeout_s:
                    continue
                options.terminate = True
                self.timeouts += 1
            log.error("inference timed out, terminating the call", timeout_s=self.timeout_s, timeouts=self.timeouts)
