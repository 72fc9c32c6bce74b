"""Helpers for daemon tests against simulated line devices on pseudo-terminals."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from edge.acquisition.base import FrameSource, SourceState
from edge.config import validate_config
from edge.parts import Frame
from edge.pipeline import Pipeline

FAST_SERIAL = {"baudrate": 115200, "reply_timeout_ms": 100, "retries": 1, "reopen_backoff_s": [0.05]}


class PatternSource(FrameSource):
    """A live camera whose frame n is bright (fails the brightness model) when n is in `bright`."""

    name = "pattern"
    live = True

    def __init__(self, bright: set[int]) -> None:
        super().__init__()
        self.bright = bright
        self.frames_read = 0

    def open(self) -> None:
        self.state = SourceState.RUNNING

    def read(self, timeout_s: float) -> Frame | None:
        self.frames_read += 1
        image = np.zeros((32, 32, 3), np.uint8)
        if self.frames_read in self.bright:
            image[8:24, 8:24] = 255
        return Frame.now(image, f"pattern/{self.frames_read}")

    def close(self) -> None:
        self.state = SourceState.CLOSED


def line_config(model: Path, endpoint: str, line_io: dict, max_parts: int, **sections):
    return validate_config({
        "model": {"path": str(model)},
        "publish": {"endpoint": endpoint, "status_interval_s": 0.2, "subscriber_grace_ms": 300},
        "pipeline": {"max_parts": max_parts},
        "line_io": line_io,
        **sections,
    })


def ascii_plc_io(port: str, delay_ms: float = 150.0, **reject) -> dict:
    return {
        "plc": {"serial": {"port": port, **FAST_SERIAL}, "protocol": "ascii"},
        "reject": {"output": "plc", "timing": "delay", "delay_ms": delay_ms, "pulse_width_ms": 10, **reject},
        "trigger": {"mode": "plc", "frame_timeout_ms": 200},
    }


def start(pipeline: Pipeline) -> tuple[threading.Thread, dict]:
    """Run the pipeline in a thread and wait until capture runs."""
    holder: dict = {}

    def run() -> None:
        try:
            holder["summary"] = pipeline.run()
        except BaseException as error:  # handed to the test
            holder["error"] = error
            pipeline.capture_started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert pipeline.capture_started.wait(10), "the pipeline did not start"
    assert "error" not in holder, holder.get("error")
    return thread, holder


def present(plc, count: int, spacing_s: float = 0.03) -> None:
    for _ in range(count):
        plc.present_part()
        time.sleep(spacing_s)


def rejected_ids(results: list[dict]) -> list[int]:
    return [result["part_id"] for result in sorted(results, key=lambda r: r["part_id"]) if result["verdict"] != "PASS"]
