"""Video file replay, either as fast as the pipeline reads or at a fixed frame rate."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import cv2
import numpy as np
import structlog

from edge.acquisition.base import FrameSource, SourceError, SourceState
from edge.acquisition.pacing import RatePacer, pacing_timeout
from edge.config import SourceConfig
from edge.parts import Frame

log = structlog.get_logger(__name__)


class VideoFileSource(FrameSource):
    """A video file played once or in a loop.

    With `rate_fps` set the source is live and hands out frames on a fixed schedule. Without
    it, each `read()` decodes the next frame at once. `source_ref` is `NAME#INDEX`, the frame's
    0-based position in the file.
    """

    name = "video"

    def __init__(self, config: SourceConfig) -> None:
        super().__init__()
        if config.kind != "video" or config.path is None:
            raise SourceError(f"VideoFileSource needs a source of kind `video` with `path`, got kind `{config.kind}`")
        self.config = config
        self.path = Path(config.path)
        self.live = config.rate_fps is not None
        self._log = log.bind(path=str(self.path))

        # Guards the capture, because close() may come from another thread during a read.
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._pacer = RatePacer(config.rate_fps, self._wakeup, name=str(self.path))
        self._capture: cv2.VideoCapture | None = None
        self._pending: np.ndarray | None = None
        self._pending_index = 0
        self._decoded_in_pass = 0
        self._frame_count: int | None = None
        self._frames_read = 0
        self._loops = 0

    def open(self) -> None:
        """Open the file and decode its first frame, raising SourceError that names the path if that fails."""
        if self._capture is not None:
            return

        self._check_file()
        self._wakeup.clear()
        self.state = SourceState.OPENING
        capture = self._open_capture()
        ok, image = capture.read()
        if not ok or image is None:
            capture.release()
            self.state = SourceState.FAILED
            raise SourceError(
                f"video file {self.path} contains no frame that OpenCV can decode; check that it is not "
                f"truncated, or convert it, for example with `ffmpeg -i {self.path.name} -c:v libx264 out.mp4`"
            )

        frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        with self._lock:
            self._capture = capture
            self._pending = image
            self._pending_index = 0
            self._decoded_in_pass = 1
            self._frame_count = frame_count if frame_count > 0 else None
        self._pacer.restart()
        self.state = SourceState.RUNNING
        self._log.info(
            "video opened",
            frame_count=self._frame_count,
            rate_fps=self.config.rate_fps,
            loop=self.config.loop,
            max_frames=self.config.max_frames,
        )

    def read(self, timeout_s: float) -> Frame | None:
        """Return the next frame, None at the end, or raise SourceTimeout when a paced frame is not due in time."""
        if self.state is SourceState.FINISHED:
            return None
        if self._capture is None:
            raise SourceError(f"video {self.path} is not open; call open() first")
        if self.config.max_frames is not None and self._frames_read >= self.config.max_frames:
            self._finish("max_frames reached")
            return None

        with self._lock:
            if self._pending is None:
                self._pending = self._decode_next()
        if self._pending is None:
            self._finish("end of file")
            return None

        if not self._pacer.wait(timeout_s):
            if self._wakeup.is_set():
                return None
            raise pacing_timeout(str(self.path), self.config.rate_fps, timeout_s)
        if self._wakeup.is_set():
            return None

        frame = Frame.now(self._pending, f"{self.path.name}#{self._pending_index}")
        self._pending = None
        self._frames_read += 1
        self._pacer.advance()
        return frame

    def close(self) -> None:
        self._wakeup.set()
        with self._lock:
            if self._capture is not None:
                self._capture.release()
                self._capture = None
            self._pending = None
        if self.state is not SourceState.CLOSED:
            self._log.info("video closed", frames_read=self._frames_read, loops=self._loops)
        self.state = SourceState.CLOSED

    def describe(self) -> dict:
        info = super().describe()
        info.update(path=str(self.path), frames_read=self._frames_read, loops=self._loops,
                    late_frames=self._pacer.late_frames)
        return info

    def _check_file(self) -> None:
        if not self.path.exists():
            raise SourceError(
                f"video file {self.path} not found; check `source.path` in the config or the --source argument"
            )
        if not self.path.is_file():
            raise SourceError(f"{self.path} is not a file; for a folder of images use source kind `folder`")
        if not os.access(self.path, os.R_OK):
            raise SourceError(f"video file {self.path} is not readable by this user; fix its permissions")

    def _open_capture(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if capture.isOpened():
            return capture
        capture.release()
        self.state = SourceState.FAILED
        raise SourceError(
            f"cannot open video file {self.path}: OpenCV's FFmpeg backend does not read it as a video; "
            f"check it with `ffprobe {self.path}` or convert it to MP4 (H.264)"
        )

    def _decode_next(self) -> np.ndarray | None:
        """Decode the next frame, restarting the file at its end when looping. The caller must hold the lock."""
        if self._capture is None:
            return None
        ok, image = self._capture.read()
        if ok and image is not None:
            self._pending_index = self._decoded_in_pass
            self._decoded_in_pass += 1
            return image

        if not self.config.loop:
            self._log.info("video ended", decoded_frames=self._decoded_in_pass, frame_count=self._frame_count)
            return None

        # Reopening restarts decoding at the first frame without relying on CAP_PROP_POS_FRAMES
        # seeking, whose accuracy depends on the codec.
        self._capture.release()
        self._capture = self._open_capture()
        ok, image = self._capture.read()
        if not ok or image is None:
            return None
        self._loops += 1
        self._pending_index = 0
        self._decoded_in_pass = 1
        # Later restarts are routine, so only the first is logged above debug level.
        if self._loops == 1:
            self._log.info("video restarted", loops=self._loops)
        else:
            self._log.debug("video restarted", loops=self._loops)
        return image

    def _finish(self, reason: str) -> None:
        with self._lock:
            if self._capture is not None:
                self._capture.release()
                self._capture = None
        if self.state is not SourceState.FINISHED:
            self._log.info("video finished", reason=reason, frames_read=self._frames_read, loops=self._loops)
        self.state = SourceState.FINISHED
