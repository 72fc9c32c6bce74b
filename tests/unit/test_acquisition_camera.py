"""Tests of the camera source: real OpenCV capture of a video file, and scripted freezes and hangs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.acquisition.base import SourceError, SourceState, SourceTimeout
from edge.acquisition.camera import CameraSource, describe_camera, frame_fingerprint
from edge.config import SourceConfig

FRAME_SHAPE = (48, 64, 3)


def write_video(path: Path, frame_count: int) -> Path:
    """Write an MJPG AVI of at most 32 frames that all differ: frame i is filled with brightness 8 * i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (FRAME_SHAPE[1], FRAME_SHAPE[0]))
    assert writer.isOpened()
    for index in range(frame_count):
        writer.write(np.full(FRAME_SHAPE, 8 * index, np.uint8))
    writer.release()
    return path


def camera_config(**overrides: object) -> SourceConfig:
    values = {"kind": "camera", "device": 0, "read_timeout_ms": 2000, "reopen_backoff_s": [0.05]}
    values.update(overrides)
    return SourceConfig(**values)


class ScriptedCapture:
    """A capture that behaves like a camera which freezes or hangs, which no real device does on demand.

    It returns `frame_count` distinct frames, each tagged with `number` in pixel (0, 0), and then
    repeats its last frame (`then="repeat"`), blocks inside read() until `unblock` is set
    (`then="hang"`) or fails every read (`then="fail"`). With `then="unopened"` it does not open.
    """

    def __init__(self, number: int, frame_count: int, then: str) -> None:
        self.number = number
        self.frame_count = frame_count
        self.then = then
        self.unblock = threading.Event()
        self.released = threading.Event()
        self.reads = 0

    def _image(self, index: int) -> np.ndarray:
        image = np.full((24, 32, 3), index % 200, np.uint8)
        image[0, 0] = self.number
        return image

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(0.005)
        if self.reads >= self.frame_count:
            if self.then == "hang":
                self.unblock.wait()
                return False, None
            if self.then == "fail":
                return False, None
            return True, self._image(self.frame_count - 1)
        self.reads += 1
        return True, self._image(self.reads - 1)

    def grab(self) -> bool:
        return self.read()[0]

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        return self.read()

    def isOpened(self) -> bool:
        return self.then != "unopened"

    def release(self) -> None:
        self.released.set()


class ScriptedFactory:
    """Hands out one scripted capture per open; opens beyond the scripts get endless distinct frames.

    Opens after the first wait for `gate`, so a test can hold the reconnect at a known point.
    """

    def __init__(self, scripts: list[tuple[int, str]]) -> None:
        self.scripts = scripts
        self.captures: list[ScriptedCapture] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, config: SourceConfig) -> ScriptedCapture:
        if self.captures:
            self.gate.wait()
        number = len(self.captures) + 1
        frame_count, then = self.scripts[number - 1] if number <= len(self.scripts) else (10**9, "repeat")
        capture = ScriptedCapture(number, frame_count, then)
        self.captures.append(capture)
        return capture

    def unblock_all(self) -> None:
        self.gate.set()
        for capture in self.captures:
            capture.unblock.set()


@pytest.fixture
def factories():
    """Scripted factories whose blocked reads and opens are released after the test."""
    created: list[ScriptedFactory] = []

    def make(scripts: list[tuple[int, str]]) -> ScriptedFactory:
        factory = ScriptedFactory(scripts)
        created.append(factory)
        return factory

    yield make
    for factory in created:
        factory.unblock_all()


def read_until(source: CameraSource, condition, limit_s: float = 10.0):
    """Read frames, ignoring timeouts, until `condition(frame)` is true or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            frame = source.read(timeout_s=0.2)
        except SourceTimeout:
            continue
        if condition(frame):
            return frame
    pytest.fail(f"no matching frame within {limit_s} s; source state {source.describe()}")


def wait_for_state(source: CameraSource, state: SourceState, limit_s: float = 10.0) -> bool:
    deadline = time.monotonic() + limit_s
    while source.state is not state and time.monotonic() < deadline:
        time.sleep(0.01)
    return source.state is state


def test_camera_reads_real_video_file(tmp_path):
    video = write_video(tmp_path / "clip.avi", frame_count=30)
    source = CameraSource(camera_config(device=None, uri=str(video)))

    with source:
        frames = [source.read(timeout_s=5.0) for _ in range(4)]
        info = source.describe()

    assert source.live
    for frame in frames:
        assert frame.image is not None
        assert frame.image.shape == FRAME_SHAPE
        assert frame.error is None
        assert frame.source_ref == str(video)
    stamps = [frame.capture_monotonic_ns for frame in frames]
    assert stamps == sorted(set(stamps))
    assert info["frames_grabbed"] >= 4
    assert info["last_frame_age_ms"] is not None
    assert info["frozen_reopens"] == 0
    assert source.state is SourceState.CLOSED


def test_camera_reopens_at_stream_end(tmp_path):
    video = write_video(tmp_path / "short.avi", frame_count=5)
    source = CameraSource(camera_config(device=None, uri=str(video)))

    with source:
        read_until(source, lambda frame: source.reopen_count >= 1)
        frame = read_until(source, lambda frame: True)

    assert frame.image.shape == FRAME_SHAPE
    assert source.describe()["reopen_count"] >= 1


def test_camera_missing_file_names_uri(tmp_path):
    missing = tmp_path / "missing.avi"
    source = CameraSource(camera_config(device=None, uri=str(missing), open_timeout_ms=1000))

    with pytest.raises(SourceError, match="missing.avi"):
        source.open()
    assert source.state is SourceState.FAILED
    source.close()
    assert source.state is SourceState.CLOSED


def test_camera_missing_device_names_index():
    source = CameraSource(camera_config(device=63, open_timeout_ms=1000))

    with pytest.raises(SourceError, match="device 63"):
        source.open()


def test_camera_read_before_open():
    source = CameraSource(camera_config())

    with pytest.raises(SourceError, match="not open"):
        source.read(timeout_s=0.01)


def test_camera_uri_password_masked():
    config = camera_config(device=None, uri="rtsp://admin:secret@10.0.0.5/stream1")

    assert describe_camera(config) == "rtsp://***@10.0.0.5/stream1"


def test_fingerprint_tells_frames_apart():
    image = np.zeros((480, 640, 3), np.uint8)
    changed = image.copy()
    changed[200, 300] = 1

    assert frame_fingerprint(image) == frame_fingerprint(image.copy())
    assert frame_fingerprint(image) != frame_fingerprint(changed)
    assert frame_fingerprint(image) != frame_fingerprint(image[:, :320])


def test_camera_freeze_reopens(factories):
    factory = factories([(3, "repeat")])
    # A long read timeout keeps a stall on a busy machine from reopening before the freeze does.
    source = CameraSource(camera_config(frozen_frame_limit=5, read_timeout_ms=10000), capture_factory=factory)

    with source:
        frame = read_until(source, lambda frame: frame.image[0, 0, 0] == 2)
        info = source.describe()

    assert frame.image is not None
    assert info["frozen_reopens"] == 1
    assert info["reopen_count"] >= 1
    assert len(factory.captures) >= 2
    assert factory.captures[0].released.wait(2.0)


def test_camera_reopen_retries_failed_opens(factories):
    factory = factories([(2, "fail"), (0, "unopened"), (0, "unopened")])
    config = camera_config(reopen_backoff_s=[0.01, 0.02], read_timeout_ms=10000)
    source = CameraSource(config, capture_factory=factory)

    with source:
        frame = read_until(source, lambda frame: frame.image[0, 0, 0] == 4)
        info = source.describe()

    assert frame.image is not None
    assert info["reopen_count"] == 3
    assert info["frozen_reopens"] == 0
    assert len(factory.captures) == 4
    for capture in factory.captures:
        assert capture.released.wait(2.0)


def test_camera_hang_times_out_then_recovers(factories):
    factory = factories([(3, "hang")])
    source = CameraSource(camera_config(read_timeout_ms=500), capture_factory=factory)
    # Hold the reopen until the reader has seen the hang as a timeout.
    factory.gate.clear()
    source.open()
    try:
        first = source.read(timeout_s=5.0)
        assert first.image[0, 0, 0] == 1

        with pytest.raises(SourceTimeout, match="no new frame"):
            for _ in range(20):
                source.read(timeout_s=0.05)
        assert wait_for_state(source, SourceState.RECONNECTING)

        factory.gate.set()
        recovered = read_until(source, lambda frame: frame.image[0, 0, 0] == 2)
        info = source.describe()
    finally:
        source.close()

    assert recovered.capture_monotonic_ns > first.capture_monotonic_ns
    assert info["state"] == SourceState.RUNNING.value
    assert info["reopen_count"] >= 1
    assert info["hung_readers"] == 1

    # The abandoned reader releases its capture once the blocked read returns.
    factory.captures[0].unblock.set()
    assert factory.captures[0].released.wait(2.0)


def test_camera_close_while_hung(factories):
    factory = factories([(1, "hang")])
    source = CameraSource(camera_config(read_timeout_ms=5000), capture_factory=factory)
    source.open()
    source.read(timeout_s=5.0)

    started = time.monotonic()
    source.close()
    close_s = time.monotonic() - started

    assert close_s < 3.0
    assert source.state is SourceState.CLOSED
    with pytest.raises(SourceError, match="not open"):
        source.read(timeout_s=0.01)


def test_camera_close_while_reopening(factories):
    factory = factories([(1, "repeat")])
    source = CameraSource(camera_config(frozen_frame_limit=2), capture_factory=factory)
    factory.gate.clear()
    source.open()
    assert wait_for_state(source, SourceState.RECONNECTING)

    started = time.monotonic()
    source.close()
    close_s = time.monotonic() - started

    assert close_s < 3.0
    assert source.state is SourceState.CLOSED
