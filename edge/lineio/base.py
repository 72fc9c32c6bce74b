"""Shared types of the line I/O: device errors, the reject output and the PLC input."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


class LineIOError(RuntimeError):
    """A serial device could not be reached or did not confirm a command; the message names what to check."""


class DeviceTimeout(LineIOError):
    """A device did not reply within its reply timeout."""


class DeviceReplyError(LineIOError):
    """A device replied with an error, a bad checksum or an unexpected reply."""


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """A part-present message from the PLC.

    `sequence` is the PLC's part counter when it sends one, so that a gap reveals missed
    triggers; None when the protocol carries no counter. `monotonic_ns` is when the station
    received the message, on `time.monotonic_ns()`. `encoder_counts` is the encoder position the
    PLC latched when its sensor saw the part, when the PLC reports one: it places the part on the
    conveyor exactly, where the arrival time is late by the polling or transmission delay.
    """

    sequence: int | None
    monotonic_ns: int
    encoder_counts: int | None = None


class RejectOutput(ABC):
    """The output that drives the ejector: a PLC coil or register, an ASCII message, a relay.

    The reject scheduler calls `pulse_start` when a part reaches the ejector and `pulse_end` one
    pulse width later, from a single thread. Both raise LineIOError when the device does not
    confirm; the scheduler counts and logs the failure and goes on with the next part.
    """

    name: str = "reject output"

    def open(self) -> None:
        """Open the port; raise LineIOError when it cannot be opened."""

    def close(self) -> None:
        """Release the port. Safe to call more than once."""

    @abstractmethod
    def pulse_start(self, part_id: int) -> None:
        """Switch the reject output on (or send the reject message) for one part."""

    def pulse_end(self, part_id: int) -> None:
        """Switch the reject output off; outputs that send one message per part do nothing."""

    def describe(self) -> dict:
        return {"name": self.name}


class PlcInput(ABC):
    """Inputs from the PLC: part-present triggers and encoder counts."""

    name: str = "PLC"

    def open(self) -> None:
        """Open the port and start reading; raise LineIOError when it cannot be opened."""

    def close(self) -> None:
        """Stop reading and release the port. Safe to call more than once."""

    @abstractmethod
    def next_trigger(self, timeout_s: float) -> TriggerEvent | None:
        """Wait up to `timeout_s` for the next part-present message; None when none came."""

    @abstractmethod
    def encoder_counts(self) -> tuple[int, int] | None:
        """Return the latest encoder position and when it was read, as (counts, monotonic_ns).

        None until the first reading has arrived.
        """

    def describe(self) -> dict:
        return {"name": self.name}
