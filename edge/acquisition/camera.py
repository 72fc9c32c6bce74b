"""Live capture from a camera, network stream or GStreamer pipeline through OpenCV.

A grabber thread reads continuously and keeps only the newest frame, so a slow reader never
receives a stale frame from OpenCV's internal buffer. A watchdog thread reopens the capture when
frames stop arriving, when a read fails, or when the camera keeps returning the same image (an
unplugged USB camera can do that). `VideoCapture.read()` can block for minutes or forever on a
dead stream, so a blocked grabber thread is abandoned, never joined, and the new capture gets a
new thread.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import zlib
from collections.abc import Callable
from typing import Protocol

import cv2
import numpy as np
import structlog

from edge.acquisition.base import FrameSource, SourceError, SourceState, SourceTimeout
from edge.config import SourceConfig
from edge.parts import Frame

log = structlog.get_logger(__name__)

# Time an open attempt gets beyond the capture's own open timeout before it is abandoned.
OPEN_GRACE_S = 1.0
# How long close() waits for each thread before abandoning it.
CLOSE_JOIN_TIMEOUT_S = 0.4
# How long a reconnect waits for the failed grabber to release its capture before abandoning it.
ABANDON_JOIN_TIMEOUT_S = 0.2
# Frozen-frame detection hashes at most about this many rows of each frame.
FINGERPRINT_ROWS = 256

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


class Capture(Protocol):
    """The subset of `cv2.VideoCapture` that the camera source calls."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def isOpened(self) -> bool: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[SourceConfig], Capture]


def is_gstreamer_pipeline(uri: str) -> bool:
    """Return True when `uri` is a GStreamer pipeline description rather than a URL or path."""
    return " ! " in uri


def describe_camera(config: SourceConfig) -> str:
    """Name the camera for logs and messages, with any user and password in the URI masked."""
    if config.device is not None:
        return f"device {config.device}"
    return _CREDENTIALS.sub("***@", config.uri or "")


def open_capture(config: SourceConfig) -> cv2.VideoCapture:
    """Create a `cv2.VideoCapture` for a camera config, with the open and read timeouts applied.

    A device index opens through V4L2 on Linux, a GStreamer pipeline through GStreamer, and any
    other URI (stream URL or file) through FFmpeg. The returned capture may not be open, so the
    caller checks `isOpened()`.
    """
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        config.open_timeout_ms,
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        config.read_timeout_ms,
    ]

    if config.device is not None:
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        capture = cv2.VideoCapture(config.device, backend, params)
        if not capture.isOpened():
            # NOTE: OpenCV 5.1 fails the whole open when a backend rejects an open parameter, and
            # it is not certain that every V4L2 build accepts the timeouts. A local device opens
            # fast, so one retry without them costs little, and the watchdog still bounds reads.
            capture.release()
            capture = cv2.VideoCapture(config.device, backend)
        return capture

    uri = config.uri or ""
    if is_gstreamer_pipeline(uri):
        if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
            raise SourceError(
                "this OpenCV build has no GStreamer backend (the opencv-python wheels ship without it); "
                "use an rtsp:// or http:// URL instead, or install an OpenCV build with GStreamer"
            )
        return cv2.VideoCapture(uri, cv2.CAP_GSTREAMER, params)
    return cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)


def frame_fingerprint(image: np.ndarray) -> tuple[tuple[int, ...], int]:
    """Return the shape and a CRC32 of evenly spaced rows, enough to tell a repeated frame."""
    step = max(1, image.shape[0] // FINGERPRINT_ROWS)
    rows = np.ascontiguousarray(image[::step])
    return image.shape, zlib.crc32(rows)


def _release_quietly(capture: Capture | None) -> None:
    if capture is None:
        return
    try:
        capture.release()
    except Exception as error:  # a failing release must not stop the reconnect loop
        log.warning("camera release failed", error=f"{type(error).__name__}: {error}")


class _OpenAttempt:
    """One capture open on a helper thread, so that an open that hangs can be abandoned.

    A capture that opens after the attempt was abandoned is released by the helper thread.
    """

    def __init__(self, factory: CaptureFactory, config: SourceConfig) -> None:
        self._factory = factory
        self._config = config
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._abandoned = False
        self._capture: Capture | None = None
        self.problem = "OpenCV could not open it"
        threading.Thread(target=self._run, name="camera-open", daemon=True).start()

    def _run(self) -> None:
        capture = None
        opened = False
        try:
            capture = self._factory(self._config)
            opened = bool(capture.isOpened())
        except SourceError as error:
            self.problem = str(error)
        except Exception as error:  # any backend or factory failure is a failed attempt
            self.problem = f"{type(error).__name__}: {error}"

        with self._lock:
            keep = opened and not self._abandoned
            if keep:
                self._capture = capture
            self._done.set()
        if not keep:
            _release_quietly(capture)

    def wait(self, timeout_s: float, stop: threading.Event) -> Capture | None:
        """Return the opened capture, or None when the open failed, timed out or `stop` was set."""
        deadline = time.monotonic() + timeout_s
        while not self._done.is_set() and not stop.is_set():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            self._done.wait(min(remaining_s, 0.05))

        with self._lock:
            if self._done.is_set():
                return self._capture
            self._abandoned = True
        self.problem = "closed while opening" if stop.is_set() else f"open timed out after {timeout_s:.1f} s"
        return None


class CameraSource(FrameSource):
    """A V4L2 camera, network stream or GStreamer pipeline, read on its own thread.

    `read()` returns the newest frame grabbed since the previous call. Frames the reader was too
    slow to take are dropped and counted as `frames_skipped`. After the first successful open,
    a lost camera is reopened with the waits in `reopen_backoff_s` until the source is closed.
    Until a new frame arrives, `read()` raises SourceTimeout.
    """

    name = "camera"
    live = True

    def __init__(self, config: SourceConfig, capture_factory: CaptureFactory | None = None) -> None:
        super().__init__()
        if config.kind != "camera":
            raise SourceError(f"CameraSource needs a source of kind `camera`, got `{config.kind}`; use create_source()")
        self.config = config
        self.target = describe_camera(config)
        self._capture_factory = capture_factory or open_capture
        self._log = log.bind(camera=self.target)

        # The condition's lock guards every field below that the threads share.
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._generation = 0
        self._grabber: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._abandoned: list[threading.Thread] = []

        self._latest: Frame | None = None
        self._latest_sequence = 0
        self._returned_sequence = 0
        self._last_frame_ns: int | None = None
        # Monotonic time of the last frame or (re)open. The stall timer runs from here.
        self._progress_ns = 0
        self._loss: str | None = None
        self._loss_frozen = False
        self._attempts_since_frame = 0

        self._frames_grabbed = 0
        self._frames_skipped = 0
        self._frozen_reopens = 0

    def open(self) -> None:
        """Open the capture and start the grabber and watchdog threads.

        Raises SourceError naming the device or URI when the capture cannot be opened.
        """
        if self._watchdog is not None:
            return

        self._stop = threading.Event()
        self.state = SourceState.OPENING
        self._log.info(
            "camera opening",
            open_timeout_ms=self.config.open_timeout_ms,
            read_timeout_ms=self.config.read_timeout_ms,
        )
        self._warn_about_buffering()

        stop = self._stop
        attempt = _OpenAttempt(self._capture_factory, self.config)
        capture = attempt.wait(self.config.open_timeout_ms / 1000 + OPEN_GRACE_S, stop)
        if capture is None and not stop.is_set():
            self.state = SourceState.FAILED
            self._log.error("camera open failed", problem=attempt.problem)
            raise SourceError(f"cannot open camera {self.target}: {attempt.problem}; {self._open_hint()}")

        with self._condition:
            if stop.is_set():
                _release_quietly(capture)
                raise SourceError(f"camera {self.target} was closed while opening")
            self.state = SourceState.RUNNING
            self._start_grabber(capture)
            self._watchdog = threading.Thread(
                target=self._watch, args=(self._stop,), name="camera-watchdog", daemon=True
            )
            self._watchdog.start()
        self._log.info("camera opened")

    def read(self, timeout_s: float) -> Frame:
        """Return the newest frame not yet returned, waiting at most `timeout_s` seconds for it.

        Raises SourceTimeout when none arrives in time and SourceError when the source is not open.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._condition:
            while True:
                if self._watchdog is None:
                    raise SourceError(f"camera {self.target} is not open; call open() first")
                if self._latest is not None and self._latest_sequence > self._returned_sequence:
                    self._returned_sequence = self._latest_sequence
                    return self._latest

                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    raise SourceTimeout(
                        f"no new frame from camera {self.target} within {timeout_s:.3f} s "
                        f"(state {self.state.value}); the camera reconnects on its own, so read again"
                    )
                self._condition.wait(remaining_s)

    def close(self) -> None:
        """Stop the threads and release the capture, abandoning a grabber that stays blocked."""
        with self._condition:
            if self._watchdog is None and self.state is SourceState.CLOSED:
                return
            self._stop.set()
            self._generation += 1
            self.state = SourceState.CLOSED
            self._latest = None
            grabber, watchdog = self._grabber, self._watchdog
            self._grabber = None
            self._watchdog = None
            self._condition.notify_all()

        if watchdog is not None:
            watchdog.join(CLOSE_JOIN_TIMEOUT_S)
        self._abandon_if_blocked(grabber, CLOSE_JOIN_TIMEOUT_S)
        self._log.info("camera closed", frames_grabbed=self._frames_grabbed, reopen_count=self.reopen_count)

    def describe(self) -> dict:
        with self._condition:
            info = super().describe()
            age_ms = None
            if self._last_frame_ns is not None:
                age_ms = round((time.monotonic_ns() - self._last_frame_ns) / 1e6, 1)
            self._abandoned = [thread for thread in self._abandoned if thread.is_alive()]
            info.update(
                target=self.target,
                frames_grabbed=self._frames_grabbed,
                frames_skipped=self._frames_skipped,
                frozen_reopens=self._frozen_reopens,
                last_frame_age_ms=age_ms,
                # Grabber threads still blocked inside a read of an abandoned capture.
                hung_readers=len(self._abandoned),
            )
        return info

    def _start_grabber(self, capture: Capture) -> None:
        """Hand `capture` to a new grabber thread. The caller must hold the condition's lock."""
        self._generation += 1
        self._loss = None
        self._loss_frozen = False
        self._progress_ns = time.monotonic_ns()
        self._grabber = threading.Thread(
            target=self._grab,
            args=(capture, self._generation, self._stop),
            name=f"camera-grabber-{self._generation}",
            daemon=True,
        )
        self._grabber.start()

    def _grab(self, capture: Capture, generation: int, stop: threading.Event) -> None:
        """Read frames until the capture fails or freezes, is replaced, or the source closes."""
        previous = None
        repeats = 0
        try:
            while not stop.is_set():
                try:
                    ok, image = capture.read()
                except Exception as error:  # a backend failure means a lost camera
                    self._report_loss(generation, f"read raised {type(error).__name__}: {error}")
                    return
                frame = Frame.now(image, self.target)
                if not ok or image is None:
                    self._report_loss(generation, "read failed (stream ended or device lost)")
                    return

                # NOTE: a compressed stream of a still scene may also decode to identical frames,
                # so such a camera needs a frozen_frame_limit above its longest still period.
                fingerprint = frame_fingerprint(image)
                repeats = repeats + 1 if fingerprint == previous else 1
                previous = fingerprint
                if repeats >= self.config.frozen_frame_limit:
                    self._report_loss(generation, f"frozen: {repeats} identical frames in a row", frozen=True)
                    return

                if not self._publish(generation, frame):
                    return
        finally:
            _release_quietly(capture)

    def _publish(self, generation: int, frame: Frame) -> bool:
        """Make `frame` the newest and return True, or return False when its capture was replaced or closed."""
        with self._condition:
            if generation != self._generation:
                return False
            if self._latest_sequence > self._returned_sequence:
                self._frames_skipped += 1
            self._latest = frame
            self._latest_sequence += 1
            self._frames_grabbed += 1
            self._last_frame_ns = frame.capture_monotonic_ns
            self._progress_ns = frame.capture_monotonic_ns
            self._attempts_since_frame = 0
            recovered = self.state is not SourceState.RUNNING
            self.state = SourceState.RUNNING
            self._condition.notify_all()

        if recovered:
            self._log.info("camera recovered", reopen_count=self.reopen_count)
        return True

    def _report_loss(self, generation: int, reason: str, frozen: bool = False) -> None:
        with self._condition:
            if generation != self._generation:
                return
            self._loss = reason
            self._loss_frozen = frozen
            self._condition.notify_all()

    def _watch(self, stop: threading.Event) -> None:
        """Reopen the capture after a failed read, a frozen image or a stall."""
        poll_s = min(0.1, self.config.read_timeout_ms / 4000)
        while not stop.is_set():
            with self._condition:
                self._condition.wait(poll_s)
                if stop.is_set():
                    return
                reason, frozen = self._loss, self._loss_frozen
                stalled_ms = (time.monotonic_ns() - self._progress_ns) / 1e6
                if reason is None and stalled_ms > self.config.read_timeout_ms:
                    reason = f"no frame for {stalled_ms:.0f} ms (read timeout {self.config.read_timeout_ms} ms)"
                    self.state = SourceState.STALLED
                if reason is None:
                    continue
                if frozen:
                    self._frozen_reopens += 1

            self._log.warning("camera lost", reason=reason)
            self._reconnect(stop)

    def _reconnect(self, stop: threading.Event) -> None:
        """Drop the current capture and open a new one, waiting `reopen_backoff_s` before each try."""
        with self._condition:
            # From here on, the old grabber's frames and losses are ignored.
            self._generation += 1
            self._loss = None
            self.state = SourceState.RECONNECTING
            old_grabber, self._grabber = self._grabber, None
        self._abandon_if_blocked(old_grabber, ABANDON_JOIN_TIMEOUT_S)

        backoff_s = self.config.reopen_backoff_s
        while not stop.is_set():
            with self._condition:
                delay_s = backoff_s[min(self._attempts_since_frame, len(backoff_s) - 1)]
            if stop.wait(delay_s):
                return

            with self._condition:
                self._attempts_since_frame += 1
                self.reopen_count += 1
                attempt_number = self.reopen_count
            attempt = _OpenAttempt(self._capture_factory, self.config)
            capture = attempt.wait(self.config.open_timeout_ms / 1000 + OPEN_GRACE_S, stop)

            with self._condition:
                if capture is not None and not stop.is_set():
                    self._start_grabber(capture)
                    self._log.info("camera reopened", attempt=attempt_number, delay_s=delay_s)
                    return
            _release_quietly(capture)
            if stop.is_set():
                return
            self._log.warning("camera reopen failed", attempt=attempt_number, delay_s=delay_s, problem=attempt.problem)

    def _abandon_if_blocked(self, grabber: threading.Thread | None, timeout_s: float) -> None:
        """Wait briefly for `grabber` to finish, then leave it running if it is still blocked in a read."""
        if grabber is None or grabber is threading.current_thread():
            return
        grabber.join(timeout_s)
        if not grabber.is_alive():
            return
        with self._condition:
            self._abandoned = [thread for thread in self._abandoned if thread.is_alive()]
            self._abandoned.append(grabber)
            hung_readers = len(self._abandoned)
        self._log.warning("camera reader abandoned while blocked in read", thread=grabber.name, hung_readers=hung_readers)

    def _warn_about_buffering(self) -> None:
        uri = self.config.uri or ""
        if not is_gstreamer_pipeline(uri) or "appsink" not in uri:
            return
        if "drop=true" not in uri or "max-buffers=1" not in uri:
            self._log.warning(
                "GStreamer appsink buffers frames; end the pipeline with "
                "`appsink max-buffers=1 drop=true sync=false` so that frames are not stale"
            )

    def _open_hint(self) -> str:
        if self.config.device is not None:
            return (
                f"check that the camera is connected (ls /dev/video{self.config.device} on Linux), "
                "that this user may read it (group `video`) and that no other process holds it"
            )
        if is_gstreamer_pipeline(self.config.uri or ""):
            return "check the pipeline with gst-launch-1.0 and make it end in appsink"
        return "check the URL or path, the credentials and the network, for example with ffprobe"
