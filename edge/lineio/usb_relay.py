"""Reject output on a USB serial relay board of the LCUS type, which switches on 4-byte commands."""

from __future__ import annotations

from edge.lineio.base import LineIOError, RejectOutput
from edge.lineio.serial_link import SerialLink

FRAME_START = 0xA0
MAX_CHANNELS = 8


def relay_frame(channel: int, on: bool) -> bytes:
    """Build the command that switches relay `channel` (1 to 8): A0, channel, 1 or 0, and the byte sum.

    `relay_frame(1, True)` is `A0 01 01 A2`, `relay_frame(1, False)` is `A0 01 00 A1`.
    """
    if not 1 <= channel <= MAX_CHANNELS:
        raise ValueError(f"relay channel {channel} is invalid; use 1 to {MAX_CHANNELS}")
    body = bytes([FRAME_START, channel, 1 if on else 0])
    return body + bytes([sum(body) & 0xFF])


class UsbRelayOutput(RejectOutput):
    """Reject output that closes one relay of a USB relay board for the pulse.

    These boards send no reply, so a command counts as done once the link has written it
    within its write timeout. Nothing confirms that the relay switched: a board that is
    powered but broken goes unnoticed, while a pulled adapter fails the write and raises
    LineIOError.
    """

    name = "usb relay"

    def __init__(self, link: SerialLink, channel: int = 1) -> None:
        if not 1 <= channel <= MAX_CHANNELS:
            raise ValueError(f"relay channel {channel} is invalid; use 1 to {MAX_CHANNELS}")
        self.link = link
        self.channel = channel
        self.counters = {"pulses": 0, "writes": 0, "failures": 0}

    def open(self) -> None:
        """Open the port and switch the relay off, ending a pulse that a crash left on."""
        self.link.open()
        self._switch(False)

    def close(self) -> None:
        """Switch the relay off when the port is still usable, then release the port."""
        if self.link.is_open:
            try:
                self._switch(False)
            except LineIOError:
                pass  # already counted and logged by the link; the port is closed next anyway
        self.link.close()

    def pulse_start(self, part_id: int) -> None:
        self._switch(True)
        self.counters["pulses"] += 1

    def pulse_end(self, part_id: int) -> None:
        self._switch(False)

    def describe(self) -> dict:
        return {"name": self.name, "channel": self.channel, **self.counters, "link": self.link.describe()}

    def _switch(self, on: bool) -> None:
        try:
            self.link.write(relay_frame(self.channel, on))
        except LineIOError:
            self.counters["failures"] += 1
            raise
        self.counters["writes"] += 1
