"""A simulated USB relay board that switches relays on 4-byte commands and never replies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edge.lineio.simulated.pty_device import PtyDevice
from edge.lineio.usb_relay import FRAME_START

_FRAME_LENGTH = 4


class SimulatedRelayBoard(PtyDevice):
    """A relay board with `channel_count` relays.

    Each command is `A0 channel state sum`, where sum is the low byte of the three bytes before
    it. Commands with a wrong sum, channel or state, and bytes before a frame start, are counted
    in `invalid_frames` and ignored, as the board ignores them.
    """

    def __init__(self, alias: Path | str | None = None, channel_count: int = 8) -> None:
        super().__init__("relay board", alias)
        self.channel_count = channel_count
        # (monotonic_ns, channel, on) for each valid command.
        self.switches: list[tuple[int, int, bool]] = []
        self.invalid_frames = 0
        self._states = [False] * (channel_count + 1)
        self._state_lock = threading.Lock()
        self._buffer = bytearray()

    def state(self, channel: int) -> bool:
        """Return whether relay `channel` is closed (on)."""
        if not 1 <= channel <= self.channel_count:
            raise ValueError(f"relay channel {channel} is invalid; the board has channels 1 to {self.channel_count}")
        with self._state_lock:
            return self._states[channel]

    def handle(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            start = self._buffer.find(bytes([FRAME_START]))
            if start != 0:
                # Bytes that cannot start a frame: drop them up to the next start byte.
                del self._buffer[: start if start > 0 else len(self._buffer)]
                self.invalid_frames += 1
                continue
            if len(self._buffer) < _FRAME_LENGTH:
                return
            frame = bytes(self._buffer[:_FRAME_LENGTH])
            del self._buffer[:_FRAME_LENGTH]
            self._apply(frame)

    def _apply(self, frame: bytes) -> None:
        _, channel, state, checksum = frame
        if checksum != sum(frame[:3]) & 0xFF or not 1 <= channel <= self.channel_count or state not in (0, 1):
            self.invalid_frames += 1
            return
        with self._state_lock:
            self._states[channel] = state == 1
            self.switches.append((time.monotonic_ns(), channel, state == 1))
