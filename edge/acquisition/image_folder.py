"""Replay of a folder of images, searched recursively and read in sorted order."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import cv2
import structlog

from edge.acquisition.base import FrameSource, SourceError, SourceState
from edge.acquisition.pacing import RatePacer, pacing_timeout
from edge.config import SourceConfig
from edge.parts import Frame

log = structlog.get_logger(__name__)

# Matched case-insensitively against each file's suffix.
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff")


def find_images(folder: Path) -> list[str]:
    """Return the POSIX paths, relative to `folder`, of the images below it, sorted by that path.

    Symbolic links to folders are followed, each real folder once, so a link loop ends.
    Subfolders that cannot be listed are logged and skipped.
    """

    def log_unreadable(error: OSError) -> None:
        log.warning("image folder not readable", path=error.filename, error=error.strerror)

    images = []
    visited = set()
    for directory, subdirectories, files in os.walk(folder, onerror=log_unreadable, followlinks=True):
        real_directory = os.path.realpath(directory)
        if real_directory in visited:
            subdirectories.clear()
            continue
        visited.add(real_directory)

        for file_name in files:
            if os.path.splitext(file_name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(Path(directory, file_name).relative_to(folder).as_posix())
    return sorted(images)


class ImageFolderSource(FrameSource):
    """Images below a folder, read with `cv2.imread` as BGR.

    With `rate_fps` set the source is live and hands out images on a fixed schedule. Without
    it, each `read()` returns the next image at once. `source_ref` is the image's path relative
    to the folder. An image that cannot be decoded becomes a frame with `image=None` and
    `error` set, so that the part is counted and rejected rather than skipped.
    """

    name = "folder"

    def __init__(self, config: SourceConfig) -> None:
        super().__init__()
        if config.kind != "folder" or config.path is None:
            raise SourceError(f"ImageFolderSource needs a source of kind `folder` with `path`, got kind `{config.kind}`")
        self.config = config
        self.path = Path(config.path)
        self.live = config.rate_fps is not None
        self._log = log.bind(path=str(self.path))

        self._wakeup = threading.Event()
        self._pacer = RatePacer(config.rate_fps, self._wakeup, name=str(self.path))
        self._images: list[str] = []
        self._next_index = 0
        self._frames_read = 0
        self._bad_images: set[str] = set()
        self._loops = 0

    def open(self) -> None:
        """List the images, raising SourceError that names the folder when it is missing or has none."""
        searched = ", ".join(IMAGE_EXTENSIONS)
        if not self.path.exists():
            raise SourceError(
                f"image folder {self.path} not found (it would be searched recursively for {searched}); "
                "check `source.path` in the config or the --source argument"
            )
        if not self.path.is_dir():
            raise SourceError(f"{self.path} is not a folder; for a video file use source kind `video`")

        self.state = SourceState.OPENING
        images = find_images(self.path)
        if not images:
            self.state = SourceState.FAILED
            raise SourceError(
                f"image folder {self.path} contains no images: searched it and its subfolders for "
                f"{searched} (any letter case); add images or point `source.path` (--source) at the folder that has them"
            )

        self._images = images
        self._next_index = 0
        self._wakeup.clear()
        self._pacer.restart()
        self.state = SourceState.RUNNING
        self._log.info(
            "image folder opened",
            images=len(images),
            rate_fps=self.config.rate_fps,
            loop=self.config.loop,
            max_frames=self.config.max_frames,
        )

    def read(self, timeout_s: float) -> Frame | None:
        """Return the next image, None at the end, or raise SourceTimeout when a paced image is not due in time."""
        if self.state is SourceState.FINISHED:
            return None
        if self.state is not SourceState.RUNNING:
            raise SourceError(f"image folder {self.path} is not open; call open() first")
        if self.config.max_frames is not None and self._frames_read >= self.config.max_frames:
            self._finish("max_frames reached")
            return None

        if self._next_index >= len(self._images):
            if not self.config.loop:
                self._finish("all images read")
                return None
            self._restart()

        if not self._pacer.wait(timeout_s):
            if self._wakeup.is_set():
                return None
            raise pacing_timeout(str(self.path), self.config.rate_fps, timeout_s)
        if self._wakeup.is_set():
            return None

        relative_path = self._images[self._next_index]
        self._next_index += 1
        self._frames_read += 1
        self._pacer.advance()
        return self._load(relative_path)

    def close(self) -> None:
        self._wakeup.set()
        if self.state is not SourceState.CLOSED:
            self._log.info("image folder closed", frames_read=self._frames_read, loops=self._loops)
        self.state = SourceState.CLOSED

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            path=str(self.path),
            images=len(self._images),
            frames_read=self._frames_read,
            bad_images=len(self._bad_images),
            loops=self._loops,
            late_frames=self._pacer.late_frames,
        )
        return info

    def _load(self, relative_path: str) -> Frame:
        image = cv2.imread(str(self.path / relative_path), cv2.IMREAD_COLOR)
        if image is not None:
            return Frame.now(image, relative_path)

        # Each bad image is logged once, however often a loop comes back to it.
        if relative_path not in self._bad_images:
            self._bad_images.add(relative_path)
            self._log.warning("image cannot be decoded", image=relative_path, bad_images=len(self._bad_images))
        return Frame.now(
            None,
            relative_path,
            error=f"cannot decode {relative_path}: OpenCV could not read it as an image (corrupt, truncated or unsupported)",
        )

    def _restart(self) -> None:
        self._next_index = 0
        self._loops += 1
        # Later restarts are routine, so only the first is logged above debug level.
        if self._loops == 1:
            self._log.info("image folder restarted", loops=self._loops)
        else:
            self._log.debug("image folder restarted", loops=self._loops)

    def _finish(self, reason: str) -> None:
        if self.state is not SourceState.FINISHED:
            self._log.info("image folder finished", reason=reason, frames_read=self._frames_read, loops=self._loops)
        self.state = SourceState.FINISHED
