"""The frame source interface that every acquisition backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum

from edge.parts import Frame


class SourceState(str, Enum):
    """Source state as reported in the status message."""

    CLOSED = "closed"
    OPENING = "opening"
    RUNNING = "running"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    FINISHED = "finished"
    FAILED = "failed"


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message names the source and the fix."""


class SourceTimeout(SourceError):
    """No frame arrived within the read timeout; the source may still recover."""


class FrameSource(ABC):
    """A camera, stream, file or generator that yields frames.

    `live` sources produce frames on their own clock (a camera); the pipeline never waits for
    them and rejects what it cannot take. Replay sources that are not live are paced by the
    pipeline, so a folder replayed as fast as possible loses no part to overload.
    """

    name: str = "source"
    live: bool = False

    def __init__(self) -> None:
        self.state = SourceState.CLOSED
        self.reopen_count = 0

    @abstractmethod
    def open(self) -> None:
        """Open the source; raise SourceError with the reason and the fix."""

    @abstractmethod
    def read(self, timeout_s: float) -> Frame | None:
        """Return the next frame, or None when a finite source has ended.

        Raise SourceTimeout when no frame arrives within `timeout_s`. A frame that arrived but
        cannot be decoded is returned with `image=None` and `error` set, so the part is still
        counted and rejected.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the device or file; safe to call more than once."""

    def describe(self) -> dict:
        """Return the fields published in the status message."""
        return {"name": self.name, "state": self.state.value, "reopen_count": self.reopen_count}

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
