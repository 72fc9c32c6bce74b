"""A simulated PLC that speaks the ASCII line protocol: reject messages, triggers and encoder lines."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from edge.lineio.simulated.conveyor import Conveyor
from edge.lineio.simulated.pty_device import PtyDevice

_REJECT_LINE = re.compile(rb"^REJ (\d+)$")


class SimulatedAsciiPlc(PtyDevice):
    """PLC on a pseudo-terminal: acknowledges `REJ <id>` lines and sends `PART` and `ENC` lines.

    The PLC replies `OK\\n` to each `REJ <id>\\n` and records it in `rejects` as (monotonic_ns,
    part_id). It replies `ERR unknown\\n` to any other line. With a conveyor, a thread sends
    `ENC <counts>\\n` every `encoder_interval_ms`. Nothing is sent while `silent` is set.
    `reply_delay_ms` delays each reply, as when a PLC replies only at the end of its scan cycle.
    """

    def __init__(
        self,
        alias: Path | str | None = None,
        conveyor: Conveyor | None = None,
        encoder_interval_ms: float | None = 10.0,
    ) -> None:
        super().__init__("ascii-plc", alias)
        if encoder_interval_ms is not None and encoder_interval_ms <= 0:
            raise ValueError(f"encoder_interval_ms must be positive or None, got {encoder_interval_ms}")
        self.conveyor = conveyor
        self.encoder_interval_ms = encoder_interval_ms
        self.reply_delay_ms = 0.0
        self.rejects: list[tuple[int, int]] = []
        self._buffer = bytearray()
        self._state_lock = threading.Lock()
        self._failures_left = 0
        self._sequence = 0
        self._encoder_stop = threading.Event()
        self._encoder_thread: threading.Thread | None = None

    def start(self) -> SimulatedAsciiPlc:
        super().start()
        self._make_master_non_blocking()
        if self.conveyor is not None and self.encoder_interval_ms is not None:
            self._encoder_stop.clear()
            self._encoder_thread = threading.Thread(target=self._send_encoder, name="sim-ascii-plc-encoder", daemon=True)
            self._encoder_thread.start()
        return self

    def stop(self) -> None:
        self._encoder_stop.set()
        if self._encoder_thread is not None:
            self._encoder_thread.join(timeout=2.0)
            self._encoder_thread = None
        super().stop()

    def replug(self, downtime_s: float = 0.0) -> str:
        path = super().replug(downtime_s)
        self._make_master_non_blocking()
        return path

    def fail_next(self, count: int) -> None:
        """Reply `ERR busy` to the next `count` reject messages instead of accepting them."""
        with self._state_lock:
            self._failures_left = count

    def present_part(self, sequence: int | None = None) -> tuple[int, int]:
        """Send `PART <n>` and return (n, monotonic_ns at sending).

        `n` is the next value of the PLC's own part counter, or `sequence` when given. The counter
        then continues from `sequence`, so a test can create a gap.
        """
        with self._state_lock:
            self._sequence = self._sequence + 1 if sequence is None else sequence
            number = self._sequence
        sent_ns = time.monotonic_ns()
        # With a conveyor the PLC also reports the encoder position it latched at its sensor.
        latched = f" {self.conveyor.position_counts(sent_ns)}" if self.conveyor is not None else ""
        self.send(f"PART {number}{latched}\n".encode("ascii"))
        return number, sent_ns

    def handle(self, data: bytes) -> None:
        self._buffer += data
        while (index := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:index]).strip(b"\r")
            del self._buffer[: index + 1]
            self._answer(line)

    def _answer(self, line: bytes) -> None:
        if self.reply_delay_ms > 0:
            time.sleep(self.reply_delay_ms / 1000.0)

        match = _REJECT_LINE.match(line)
        if match is None:
            self.send(b"ERR unknown\n")
            return

        with self._state_lock:
            busy = self._failures_left > 0
            if busy:
                self._failures_left -= 1
            else:
                self.rejects.append((time.monotonic_ns(), int(match.group(1))))
        self.send(b"ERR busy\n" if busy else b"OK\n")

    def _send_encoder(self) -> None:
        interval_s = self.encoder_interval_ms / 1000.0
        while not self._encoder_stop.wait(interval_s):
            self.send(f"ENC {self.conveyor.position_counts()}\n".encode("ascii"))

    def _make_master_non_blocking(self) -> None:
        # A station that stops reading must not block the device's threads on a full pty buffer.
        # The write fails instead and `send` drops the bytes, as when a real PLC's UART overruns.
        with self._lock:
            if self._master_fd is not None:
                os.set_blocking(self._master_fd, False)
