"""A simulated light controller that speaks the Gardasoft-style or the CCS-style protocol on a pty."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Literal

from edge.lineio.checksums import sum8_hex
from edge.lineio.simulated.pty_device import PtyDevice

# Error numbers of the Gardasoft-style replies.
ERR_UNKNOWN_COMMAND = 1
ERR_BAD_VALUE = 2
ERR_INJECTED = 9

_GARDASOFT_COMMAND = re.compile(r"(RS|RT|TR)(.*)")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


class _BadValue(ValueError):
    """A known command with a parameter out of range or malformed."""


class SimulatedLightController(PtyDevice):
    """A light controller with `channels` channels that replies like the real device.

    Gardasoft style: channels 1 to `channels`; `RSc,s`, `RTc,p,d,s` and `TRc` lines ended by CR
    are acknowledged with the prompt `>`, and an unknown command or a bad value with `Err n` CRLF
    then `>` (n = 1 unknown command, 2 bad value, 9 failure set by `fail_commands`).
    CCS style: channels 0 to `channels` - 1; frames `@{ch}F{0-255}` and `@{ch}L{1|0}00` with a sum
    checksum and CRLF are acknowledged with `@{ch}O` plus checksum and CRLF, and a bad checksum, command or
    value with `@{ch}N` plus checksum and CRLF.
    """

    def __init__(self, protocol: Literal["gardasoft", "ccs"], alias: Path | str | None = None, channels: int = 4) -> None:
        if protocol not in ("gardasoft", "ccs"):
            raise ValueError(f"simulated light protocol {protocol!r} is unknown; use 'gardasoft' or 'ccs'")
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        super().__init__(f"{protocol} light", alias)
        self.protocol = protocol
        self.channel_numbers = range(1, channels + 1) if protocol == "gardasoft" else range(channels)
        self.commands: list[bytes] = []
        self._buffer = b""
        self._fail_next = 0
        self._state_lock = threading.Lock()
        self._state = {
            channel: {"mode": "off", "percent": 0.0, "on": False, "pulse_width_ms": None, "pulse_delay_ms": 0.0, "value": 0}
            for channel in self.channel_numbers
        }
        self._triggers = {channel: 0 for channel in self.channel_numbers}

    # Inspection by tests

    def intensity_percent(self, channel: int) -> float:
        """Return the channel's light output in percent: 0 when off, the set percent in continuous or pulse mode."""
        state = self.state(channel)
        return state["percent"] if state["on"] else 0.0

    def state(self, channel: int) -> dict:
        """Return a copy of the channel's state: mode, percent, on, pulse_width_ms, pulse_delay_ms and value (CCS 0-255)."""
        with self._state_lock:
            return dict(self._channel_state(channel))

    def triggers(self, channel: int) -> int:
        """Software triggers received for the channel."""
        with self._state_lock:
            self._channel_state(channel)
            return self._triggers[channel]

    def fail_commands(self, count: int) -> None:
        """Reply to the next `count` commands with an error and leave the state unchanged."""
        with self._state_lock:
            self._fail_next = count

    def power_off(self) -> None:
        """Cut the controller's power: every channel goes dark and no command gets a reply."""
        self.silent.set()
        with self._state_lock:
            for state in self._state.values():
                state.update(mode="off", percent=0.0, on=False, value=0)
        self._buffer = b""

    def power_on(self) -> None:
        """Restore power: the controller replies again, with every channel off until it is set."""
        self.silent.clear()

    # Serving the station

    def handle(self, data: bytes) -> None:
        self._buffer += data
        terminator = b"\r" if self.protocol == "gardasoft" else b"\r\n"
        while True:
            index = self._buffer.find(terminator)
            if index < 0:
                return
            end = index + len(terminator)
            command, self._buffer = self._buffer[:end], self._buffer[end:]
            if self.protocol == "gardasoft":
                self._serve_gardasoft(command)
            else:
                self._serve_ccs(command)

    def replug(self, downtime_s: float = 0.0) -> str:
        # Bytes of a command cut off by the unplugging never complete.
        self._buffer = b""
        return super().replug(downtime_s)

    def _serve_gardasoft(self, command: bytes) -> None:
        # A station that ends lines with CRLF leaves the LF at the start of the next line.
        text = command.lstrip(b"\n").rstrip(b"\r").decode("ascii", errors="replace").strip()
        if not text:
            self.send(b">")
            return
        self.commands.append(command.lstrip(b"\n"))

        if self._take_injected_failure():
            self.send(f"Err {ERR_INJECTED}\r\n>".encode())
            return
        match = _GARDASOFT_COMMAND.fullmatch(text)
        if match is None:
            self.send(f"Err {ERR_UNKNOWN_COMMAND}\r\n>".encode())
            return
        try:
            self._apply_gardasoft(match.group(1), match.group(2).split(","))
        except _BadValue:
            self.send(f"Err {ERR_BAD_VALUE}\r\n>".encode())
            return
        self.send(b">")

    def _apply_gardasoft(self, name: str, arguments: list[str]) -> None:
        expected_count = {"RS": 2, "RT": 4, "TR": 1}[name]
        if len(arguments) != expected_count or not all(_NUMBER.fullmatch(argument) for argument in arguments):
            raise _BadValue(arguments)
        numbers = [float(argument) for argument in arguments]
        channel = int(numbers[0])
        if channel != numbers[0] or channel not in self.channel_numbers:
            raise _BadValue(arguments)

        with self._state_lock:
            if name == "TR":
                self._triggers[channel] += 1
                return
            percent = numbers[-1]
            if percent > 100:
                raise _BadValue(arguments)
            state = self._state[channel]
            if name == "RS":
                state.update(mode="continuous", percent=percent, on=percent > 0, pulse_width_ms=None, pulse_delay_ms=0.0)
            else:
                width_ms, delay_ms = numbers[1], numbers[2]
                if width_ms <= 0:
                    raise _BadValue(arguments)
                state.update(mode="pulse", percent=percent, on=percent > 0, pulse_width_ms=width_ms, pulse_delay_ms=delay_ms)

    def _serve_ccs(self, command: bytes) -> None:
        self.commands.append(command)
        body, checksum = command[:-4], command[-4:-2]
        match = re.fullmatch(rb"@(\d{2})([A-Z])(\d{3})", body)
        channel_digits = match.group(1) if match is not None else b"00"

        ok = (
            not self._take_injected_failure()
            and match is not None
            and checksum == sum8_hex(body)
            and self._apply_ccs(int(channel_digits), match.group(2), int(match.group(3)))
        )
        reply = b"@" + channel_digits + (b"O" if ok else b"N")
        self.send(reply + sum8_hex(reply) + b"\r\n")

    def _apply_ccs(self, channel: int, name: bytes, value: int) -> bool:
        """Update the state from one command and return False for an unknown command, channel or value."""
        if channel not in self.channel_numbers:
            return False
        with self._state_lock:
            state = self._state[channel]
            if name == b"F" and value <= 255:
                state.update(value=value, percent=value * 100 / 255)
                return True
            if name == b"L" and value in (0, 100):
                on = value == 100
                state.update(on=on, mode="continuous" if on else "off")
                return True
        return False

    def _take_injected_failure(self) -> bool:
        with self._state_lock:
            if self._fail_next <= 0:
                return False
            self._fail_next -= 1
            return True

    def _channel_state(self, channel: int) -> dict:
        if channel not in self._state:
            raise ValueError(
                f"simulated {self.name} has channels {self.channel_numbers.start} to {self.channel_numbers.stop - 1}, "
                f"got channel {channel}"
            )
        return self._state[channel]
