"""One serial port, opened exclusively, read against deadlines and reopened after a failure.

Every device of the line I/O (light controller, PLC, relay board) talks through a SerialLink.
It guards against the known failures of serial ports on a line PC:
- writes and reads never block without bound: `write_timeout` is always set, and reads stop at
  a deadline of their own even while bytes keep trickling in;
- the port is opened with an exclusive lock, so a second process fails at once with a clear
  error instead of stealing bytes;
- a port that fails (USB re-plug, cable pulled) is closed at the first error and reopened with
  backoff. `port` may be a glob such as `/dev/serial/by-id/usb-FTDI_*`, resolved again at every
  reopen, because an adapter can come back under another name.
"""

from __future__ import annotations

import glob
import termios
import threading
import time
from dataclasses import dataclass
from typing import Callable

import serial
import structlog

from edge.lineio.base import DeviceTimeout, LineIOError

log = structlog.get_logger(__name__)

# Exceptions of a failing port: pyserial's own errors, OS errors, and termios errors that tcdrain
# or tcflush raise on a port whose device has gone.
_PORT_ERRORS = (serial.SerialException, OSError, termios.error)

# Upper bound of one blocking read inside a deadline loop; bounds how far a deadline can overshoot.
_READ_SLICE_S = 0.02


@dataclass(frozen=True)
class SerialSettings:
    """Port name and line settings; see SerialPortConfig for the meaning of each field."""

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    write_timeout_ms: int = 200
    reopen_backoff_s: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0)

    def character_time_s(self) -> float:
        """Time one character takes on the wire: start bit, data bits, parity and stop bits."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate


@dataclass
class LinkCounters:
    opens: int = 0
    failures: int = 0
    reopen_attempts: int = 0
    timeouts: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class SerialLink:
    """A serial port for one device, with deadline-bounded reads and reopening after failures.

    Methods raise LineIOError (or its subclass DeviceTimeout) and never pyserial's exceptions.
    After a failure the port is closed; the next call reopens it once the backoff has passed and
    raises LineIOError before that. Calls from several threads are serialised by `lock`, which
    callers also take around a request and its reply (`transact` does).
    """

    def __init__(
        self,
        settings: SerialSettings,
        device_name: str,
        serial_factory: Callable[..., serial.Serial] = serial.Serial,
    ) -> None:
        self.settings = settings
        self.device_name = device_name
        self.counters = LinkCounters()
        self.lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._serial_factory = serial_factory
        self._serial: serial.Serial | None = None
        self._pending = bytearray()
        self._port_path: str | None = None
        self._failed_at: float | None = None
        self._backoff_step = 0
        self._closed_by_user = False

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    @property
    def port_path(self) -> str | None:
        """The device path the port was last opened under (the glob resolved)."""
        return self._port_path

    def open(self) -> None:
        """Open the port now; raise LineIOError naming the port and the fix when that fails."""
        with self.lock:
            self._closed_by_user = False
            if self._serial is None:
                self._open_port()

    def close(self) -> None:
        with self.lock:
            self._closed_by_user = True
            self._drop_port()

    def write(self, data: bytes) -> None:
        """Write all of `data` within the write timeout.

        A write does not wait for a read in progress on another thread, such as a reader thread
        that waits for unsolicited lines, because reading and writing a port at once is safe.
        Writes are serialised among themselves.
        """
        port = self._serial
        if port is None:
            with self.lock:
                port = self._ensure_open()
        with self._write_lock:
            try:
                written = port.write(data)
                port.flush()
                failure = None if written == len(data) else f"write timed out after {written} of {len(data)} bytes"
            except _PORT_ERRORS as error:
                failure = f"write failed: {error}"
        if failure is not None:
            with self.lock:
                if self._serial is port:
                    self._fail(failure)
                raise LineIOError(f"{self.device_name} on {self._port_path}: {failure}; the port is reopened with backoff")
        self.counters.bytes_written += len(data)

    def read_until(self, terminator: bytes, timeout_s: float) -> bytes:
        """Read up to and including `terminator`, or raise DeviceTimeout at the deadline.

        Bytes after the terminator are kept for the next read.
        """
        return self.read_frame(lambda buffer: _end_of(buffer, terminator), timeout_s)

    def read_exactly(self, size: int, timeout_s: float) -> bytes:
        """Read exactly `size` bytes, or raise DeviceTimeout at the deadline."""
        return self.read_frame(lambda buffer: size if len(buffer) >= size else None, timeout_s)

    def read_frame(self, frame_end: Callable[[bytes], int | None], timeout_s: float) -> bytes:
        """Read until `frame_end(buffer)` returns the length of a complete frame at the buffer's start.

        The deadline applies however the bytes arrive: a device that trickles one byte at a time
        cannot stretch the read.
        """
        deadline = time.monotonic() + timeout_s
        with self.lock:
            port = self._ensure_open()
            while True:
                end = frame_end(bytes(self._pending))
                if end is not None:
                    frame = bytes(self._pending[:end])
                    del self._pending[:end]
                    return frame
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    self.counters.timeouts += 1
                    received = bytes(self._pending)
                    raise DeviceTimeout(
                        f"{self.device_name} on {self._port_path}: no complete reply within {timeout_s * 1000:.0f} ms "
                        f"(received {received!r}); check the cable, the baud rate ({self.settings.baudrate}) and "
                        "that the device is powered"
                    )
                self._pending += self._read_some(port, min(remaining_s, _READ_SLICE_S))

    def read_available(self, timeout_s: float) -> bytes:
        """Return the buffered bytes plus whatever arrives within `timeout_s` (possibly nothing)."""
        with self.lock:
            port = self._ensure_open()
            if not self._pending:
                self._pending += self._read_some(port, timeout_s)
            data = bytes(self._pending)
            self._pending.clear()
            return data

    def discard_input(self) -> bytes:
        """Drop unread bytes (a late reply to an earlier request) and return them."""
        with self.lock:
            port = self._ensure_open()
            try:
                waiting = port.in_waiting
                stale = bytes(self._pending) + (port.read(waiting) if waiting else b"")
            except _PORT_ERRORS as error:
                self._fail(f"read failed: {error}")
            self._pending.clear()
            return stale

    def transact(self, request: bytes, frame_end: Callable[[bytes], int | None], timeout_s: float) -> bytes:
        """Send a request and read its reply, holding the lock so no other request interleaves."""
        with self.lock:
            self.discard_input()
            self.write(request)
            return self.read_frame(frame_end, timeout_s)

    def describe(self) -> dict:
        return {"device": self.device_name, "port": self.settings.port, "open_path": self._port_path,
                "connected": self.is_open, **self.counters.as_dict()}

    # Opening, failing and reopening

    def _ensure_open(self) -> serial.Serial:
        if self._serial is not None:
            return self._serial
        if self._closed_by_user:
            raise LineIOError(f"{self.device_name}: the port was closed; open it first")
        if self._failed_at is not None:
            backoff = self.settings.reopen_backoff_s
            wait_s = backoff[min(self._backoff_step, len(backoff) - 1)]
            if time.monotonic() - self._failed_at < wait_s:
                raise LineIOError(
                    f"{self.device_name} on {self.settings.port} is disconnected ({self.counters.last_error}); "
                    f"retrying every {wait_s:g} s"
                )
            self.counters.reopen_attempts += 1
        return self._open_port()

    def _open_port(self) -> serial.Serial:
        path = self._resolve_port()
        try:
            port = self._serial_factory(
                port=None,
                baudrate=self.settings.baudrate,
                bytesize=self.settings.bytesize,
                parity=self.settings.parity,
                stopbits=self.settings.stopbits,
                timeout=_READ_SLICE_S,
                write_timeout=self.settings.write_timeout_ms / 1000.0,
                exclusive=True,
            )
            port.port = path
            port.open()
        except (*_PORT_ERRORS, ValueError) as error:
            self._note_failure(f"cannot open {path}: {error}")
            raise LineIOError(
                f"{self.device_name}: cannot open serial port {path} ({error}); check that the device is plugged in, "
                "that no other program holds the port, and that this user may use it (group dialout)"
            ) from error

        self._serial = port
        self._port_path = path
        self._pending.clear()
        self._failed_at = None
        self._backoff_step = 0
        self.counters.opens += 1
        if self.counters.opens > 1:
            log.info("serial port reopened", device=self.device_name, port=path, reopen_attempts=self.counters.reopen_attempts)
        else:
            log.info("serial port opened", device=self.device_name, port=path, baudrate=self.settings.baudrate)
        return port

    def _resolve_port(self) -> str:
        pattern = self.settings.port
        if not glob.has_magic(pattern):
            return pattern
        matches = matching_ports(pattern)
        if len(matches) != 1:
            found = "no serial device matches" if not matches else f"{len(matches)} devices match ({', '.join(matches)})"
            self._note_failure(f"{found} {pattern}")
            raise LineIOError(
                f"{self.device_name}: {found} {pattern}; plug the adapter in or make `port` name exactly one device "
                "(list candidates with `ls -l /dev/serial/by-id/`)"
            )
        return matches[0]

    def _read_some(self, port: serial.Serial, timeout_s: float) -> bytes:
        try:
            first = port.read(1) if timeout_s > 0 else b""
            if not first:
                return b""
            waiting = port.in_waiting
            chunk = first + (port.read(waiting) if waiting else b"")
        except _PORT_ERRORS as error:
            self._fail(f"read failed: {error}")
        self.counters.bytes_read += len(chunk)
        return chunk

    def _fail(self, reason: str) -> None:
        """Close the port after an I/O error and raise; the next call reopens it after the backoff."""
        self._note_failure(reason)
        self._drop_port()
        log.warning("serial port failed; reopening with backoff", device=self.device_name, port=self._port_path, error=reason)
        raise LineIOError(f"{self.device_name} on {self._port_path}: {reason}; the port is reopened with backoff")

    def _note_failure(self, reason: str) -> None:
        if self._failed_at is not None:
            self._backoff_step += 1
        self._failed_at = time.monotonic()
        self.counters.failures += 1
        self.counters.last_error = reason

    def _drop_port(self) -> None:
        port, self._serial = self._serial, None
        self._pending.clear()
        if port is not None:
            try:
                port.close()
            except _PORT_ERRORS:
                pass


def matching_ports(pattern: str) -> list[str]:
    """Return the device paths a configured `port` (a path or a glob) names, sorted."""
    return sorted(glob.glob(pattern))


def _end_of(buffer: bytes, terminator: bytes) -> int | None:
    index = buffer.find(terminator)
    return None if index < 0 else index + len(terminator)
