"""ASCII line protocol to the PLC: reject messages out, part-present triggers and encoder counts in.

The PLC and the station exchange text lines on one serial port. The station sends a reject
message per part (`REJ 17\\n` by default) and waits for an acknowledgement line (`OK`). The PLC
sends part-present triggers (`PART 42`) and encoder positions (`ENC 12345`) whenever it likes,
so these lines can arrive between a command and its acknowledgement. A single reader thread
therefore reads every line and dispatches it by pattern: replies go to the waiting command,
triggers to a bounded queue and encoder counts to the latest reading.
"""

from __future__ import annotations

import re
import string
import threading
import time
from collections import deque
from dataclasses import dataclass

import structlog

from edge.lineio.base import DeviceReplyError, DeviceTimeout, LineIOError, PlcInput, RejectOutput, TriggerEvent
from edge.lineio.serial_link import SerialLink
from edge.log import RepeatLimiter

log = structlog.get_logger(__name__)

# Length of one read by the reader thread. SerialLink blocks for up to its own read slice (20 ms)
# per read, so a command written by another thread waits at most about that long for the port.
_READ_TIMEOUT_S = 0.02
# Wait after a failed read before the next try. The link itself spaces reopen attempts by its backoff.
_READ_RETRY_WAIT_S = 0.05
# A line longer than this without a line end is noise (wrong baud rate, binary protocol) and is dropped.
_MAX_LINE_BYTES = 1024
_REJECT_FIELDS = {"part_id"}
_SAMPLE_PART_ID = 123456


@dataclass
class AsciiPlcCounters:
    """Protocol counters. `commands` counts send_command calls and `retries` the repeated attempts."""

    commands: int = 0
    retries: int = 0
    failures: int = 0
    reply_timeouts: int = 0
    error_replies: int = 0
    late_replies: int = 0
    triggers: int = 0
    trigger_overflow: int = 0
    encoder_updates: int = 0
    unknown_lines: int = 0
    read_errors: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class AsciiPlc(PlcInput):
    """A PLC that speaks a line-based ASCII protocol over a SerialLink.

    Patterns are regular expressions searched in each received line after the line end and any
    `\\r` are stripped, so anchor them with `^` and `$`. `trigger_pattern` may contain a named
    group `sequence` (the PLC's part counter) and `encoder_pattern` must contain a named group
    `counts`. Set `error_pattern`, `trigger_pattern` or `encoder_pattern` to None when the PLC
    sends no such lines. Commands (`send_command`, the reject output) are sent one at a time.
    A command that times out or gets an error line is sent again up to `retries` times.
    """

    name = "ASCII PLC"

    def __init__(
        self,
        link: SerialLink,
        *,
        reject_template: str = "REJ {part_id}\n",
        ack_pattern: str = r"^OK$",
        error_pattern: str | None = r"^ERR\b.*",
        trigger_pattern: str | None = r"^PART (?P<sequence>\d+)( (?P<counts>-?\d+))?$",
        encoder_pattern: str | None = r"^ENC (?P<counts>-?\d+)$",
        line_end: str = "\n",
        reply_timeout_ms: int = 100,
        retries: int = 1,
        trigger_queue_size: int = 64,
    ) -> None:
        if not line_end or not line_end.isascii():
            raise ValueError(f"line_end {line_end!r} must be one or more ASCII characters, such as '\\n' or '\\r\\n'")
        if reply_timeout_ms <= 0:
            raise ValueError(f"reply_timeout_ms must be positive, got {reply_timeout_ms}; set the time to wait for each reply in milliseconds")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        if trigger_queue_size < 1:
            raise ValueError(f"trigger_queue_size must be at least 1, got {trigger_queue_size}")

        self._link = link
        self._line_end = line_end
        self._line_end_bytes = line_end.encode("ascii")
        self._reject_template = _validate_reject_template(reject_template, line_end)
        self._ack = _compile_pattern("ack_pattern", ack_pattern)
        self._error = _compile_pattern("error_pattern", error_pattern) if error_pattern is not None else None
        self._trigger = _compile_pattern("trigger_pattern", trigger_pattern) if trigger_pattern is not None else None
        self._encoder = (
            _compile_pattern("encoder_pattern", encoder_pattern, required_group="counts")
            if encoder_pattern is not None
            else None
        )
        self._reply_timeout_s = reply_timeout_ms / 1000.0
        self._retries = retries

        self.counters = AsciiPlcCounters()
        self._limiter = RepeatLimiter(log)
        self._state_lock = threading.Lock()
        self._command_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Cleared while a command is being written, so the reader does not take the port back first.
        self._port_free = threading.Event()
        self._port_free.set()

        self._reply_ready = threading.Condition()
        self._awaiting_reply = False
        self._reply: tuple[bool, str] | None = None  # (is_error, line)

        self._trigger_ready = threading.Condition()
        self._triggers: deque[TriggerEvent] = deque(maxlen=trigger_queue_size)
        self._encoder_reading: tuple[int, int] | None = None

    @property
    def reject_template(self) -> str:
        return self._reject_template

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    def open(self) -> None:
        """Open the port and start the reader thread. Do nothing when already open."""
        with self._state_lock:
            if self._thread is not None:
                return
            self._link.open()
            self._stop.clear()
            self._thread = threading.Thread(target=self._read_lines, name="ascii-plc-reader", daemon=True)
            self._thread.start()
        log.info("plc reader started", device=self._link.device_name, port=self._link.port_path)

    def close(self) -> None:
        """Stop the reader thread and close the port. Safe to call more than once."""
        with self._state_lock:
            thread, self._thread = self._thread, None
            self._stop.set()
            if thread is not None:
                thread.join(timeout=2.0)
            self._link.close()
        if thread is not None:
            log.info("plc reader stopped", device=self._link.device_name, **self.counters.as_dict())

    def next_trigger(self, timeout_s: float) -> TriggerEvent | None:
        with self._trigger_ready:
            if not self._trigger_ready.wait_for(lambda: bool(self._triggers), timeout=max(timeout_s, 0.0)):
                return None
            return self._triggers.popleft()

    def encoder_counts(self) -> tuple[int, int] | None:
        return self._encoder_reading

    def reject_output(self) -> AsciiRejectOutput:
        """Return the reject output that sends `reject_template` through this PLC connection."""
        return AsciiRejectOutput(self)

    def send_command(self, text: str) -> str:
        """Send one command line and return the PLC's acknowledgement line.

        `text` must end with the line end. Raises DeviceReplyError when the last attempt got an
        error line, DeviceTimeout when it got no reply within `reply_timeout_ms`, and LineIOError
        when the port is closed or failed.
        """
        request = _encode_line(text, self._line_end, f"command {text!r}")
        with self._command_lock:
            if not self.is_open:
                raise LineIOError(f"{self._link.device_name}: cannot send {text!r} because the PLC is not open; call open() first")
            self.counters.commands += 1

            # NOTE: replies carry no request id, so an acknowledgement that arrives after its attempt
            # timed out but after the retry was written counts as the retry's acknowledgement. The PLC
            # then has received the command twice.
            attempts = self._retries + 1
            reply: tuple[bool, str] | None = None
            for attempt in range(attempts):
                if attempt > 0:
                    self.counters.retries += 1
                    self._limiter.warning(
                        "plc command retried",
                        device=self._link.device_name,
                        command=text.rstrip(),
                        attempt=attempt + 1,
                        previous_reply=reply[1] if reply else None,
                    )
                try:
                    reply = self._attempt(request)
                except LineIOError as error:
                    self.counters.failures += 1
                    self._limiter.error("plc command failed", device=self._link.device_name, command=text.rstrip(), error=str(error))
                    raise
                if reply is None:
                    self.counters.reply_timeouts += 1
                elif reply[0]:
                    self.counters.error_replies += 1
                else:
                    return reply[1]

            self.counters.failures += 1
            self._limiter.error(
                "plc command failed",
                device=self._link.device_name,
                command=text.rstrip(),
                attempts=attempts,
                last_reply=reply[1] if reply else None,
            )
            raise self._final_error(text, attempts, reply)

    def describe(self) -> dict:
        return {"name": self.name, "reader_running": self.is_open, **self.counters.as_dict(), "link": self._link.describe()}

    # Commands

    def _attempt(self, request: bytes) -> tuple[bool, str] | None:
        """Write one request and return its reply as (is_error, line), or None when the reply timed out."""
        with self._reply_ready:
            self._reply = None
            self._awaiting_reply = True
        try:
            self._port_free.clear()
            try:
                self._link.write(request)
            finally:
                self._port_free.set()
            with self._reply_ready:
                self._reply_ready.wait_for(lambda: self._reply is not None, timeout=self._reply_timeout_s)
                return self._reply
        finally:
            with self._reply_ready:
                self._awaiting_reply = False

    def _final_error(self, text: str, attempts: int, reply: tuple[bool, str] | None) -> LineIOError:
        where = f"{self._link.device_name} on {self._link.port_path}"
        if reply is None:
            return DeviceTimeout(
                f"{where}: no reply to {text!r} within {self._reply_timeout_s * 1000:.0f} ms ({attempts} attempt(s)); "
                f"check that the PLC program is running and answers with a line matching {self._ack.pattern!r}"
            )
        return DeviceReplyError(
            f"{where}: the PLC replied to {text!r} with the error line {reply[1]!r} ({attempts} attempt(s)); "
            "check the PLC's state and the command format"
        )

    # Reading and dispatching lines

    def _read_lines(self) -> None:
        buffer = bytearray()
        failing = False
        while not self._stop.is_set():
            if not self._port_free.wait(timeout=_READ_TIMEOUT_S):
                continue
            try:
                chunk = self._link.read_available(_READ_TIMEOUT_S)
            except LineIOError as error:
                buffer.clear()
                failing = True
                self.counters.read_errors += 1
                self._limiter.warning("plc read failed; retrying", device=self._link.device_name, error=str(error))
                self._stop.wait(_READ_RETRY_WAIT_S)
                continue

            if failing:
                failing = False
                log.info("plc reading resumed", device=self._link.device_name, port=self._link.port_path)
            if not chunk:
                continue

            arrival_ns = time.monotonic_ns()
            buffer += chunk
            self._dispatch_complete_lines(buffer, arrival_ns)

    def _dispatch_complete_lines(self, buffer: bytearray, arrival_ns: int) -> None:
        while (index := buffer.find(self._line_end_bytes)) >= 0:
            raw = bytes(buffer[:index])
            del buffer[: index + len(self._line_end_bytes)]
            self._dispatch(raw.decode("ascii", errors="replace").strip("\r"), arrival_ns)

        if len(buffer) > _MAX_LINE_BYTES:
            self._count_unknown(bytes(buffer[:40]).decode("ascii", errors="replace"), f"no line end within {_MAX_LINE_BYTES} bytes")
            buffer.clear()

    def _dispatch(self, line: str, arrival_ns: int) -> None:
        if not line:
            return
        if self._ack.search(line):
            self._deliver_reply(False, line)
            return
        if self._error is not None and self._error.search(line):
            self._deliver_reply(True, line)
            return

        match = self._trigger.search(line) if self._trigger is not None else None
        if match is not None:
            groups = match.groupdict()
            try:
                sequence = int(groups["sequence"]) if groups.get("sequence") is not None else None
                latched_counts = int(groups["counts"]) if groups.get("counts") is not None else None
            except ValueError:
                self._count_unknown(line, "the sequence or counts group is not an integer")
                return
            self._push_trigger(TriggerEvent(sequence, arrival_ns, latched_counts))
            return

        match = self._encoder.search(line) if self._encoder is not None else None
        if match is not None:
            try:
                counts = int(match.group("counts"))
            except (TypeError, ValueError):
                self._count_unknown(line, "the counts group is not an integer")
                return
            self._encoder_reading = (counts, arrival_ns)
            self.counters.encoder_updates += 1
            return

        self._count_unknown(line, "matches no pattern")

    def _deliver_reply(self, is_error: bool, line: str) -> None:
        with self._reply_ready:
            if self._awaiting_reply and self._reply is None:
                self._reply = (is_error, line)
                self._reply_ready.notify_all()
                return
        self.counters.late_replies += 1
        self._limiter.warning("late plc reply ignored", device=self._link.device_name, line=line)

    def _push_trigger(self, event: TriggerEvent) -> None:
        with self._trigger_ready:
            overflow = len(self._triggers) == self._triggers.maxlen
            self._triggers.append(event)  # a full deque drops its oldest entry
            self.counters.triggers += 1
            if overflow:
                self.counters.trigger_overflow += 1
            self._trigger_ready.notify()
        if overflow:
            self._limiter.warning(
                "plc trigger queue full; oldest trigger dropped",
                device=self._link.device_name,
                queue_size=self._triggers.maxlen,
                dropped=self.counters.trigger_overflow,
            )

    def _count_unknown(self, line: str, reason: str) -> None:
        self.counters.unknown_lines += 1
        self._limiter.warning("unknown plc line ignored", device=self._link.device_name, line=line, reason=reason)


class AsciiRejectOutput(RejectOutput):
    """Reject output that sends one message per part through an AsciiPlc and waits for its acknowledgement.

    The port belongs to the AsciiPlc. `open` opens it when it is not open yet, and `close`
    closes it only when this output opened it, so a PLC input that shares the port keeps reading.
    """

    name = "ASCII reject message"

    def __init__(self, plc: AsciiPlc) -> None:
        self._plc = plc
        self._opened_plc = False

    def open(self) -> None:
        if not self._plc.is_open:
            self._plc.open()
            self._opened_plc = True

    def close(self) -> None:
        if self._opened_plc:
            self._opened_plc = False
            self._plc.close()

    def pulse_start(self, part_id: int) -> None:
        self._plc.send_command(self._plc.reject_template.format(part_id=part_id))

    def pulse_end(self, part_id: int) -> None:
        """Do nothing, because the PLC ejects the part on the reject message alone."""

    def describe(self) -> dict:
        return {"name": self.name, "template": self._plc.reject_template, "plc": self._plc.describe()}


def _validate_reject_template(template: str, line_end: str) -> str:
    """Return `template` when it formats with `part_id` alone into one ASCII line; raise ValueError otherwise."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise ValueError(
            f"reject_template {template!r} is not a valid format string ({error}); write literal braces as '{{{{' and '}}}}'"
        ) from error

    for field in fields:
        if field not in _REJECT_FIELDS:
            raise ValueError(
                f"reject_template {template!r} uses the field {{{field}}}; the only field allowed is {{part_id}}, "
                "for example 'REJ {part_id}\\n'"
            )

    try:
        sample = template.format(part_id=_SAMPLE_PART_ID)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as error:
        raise ValueError(
            f"reject_template {template!r} cannot be formatted with an integer part_id ({error!r}); "
            "fix the format specification, for example '{part_id:06d}'"
        ) from error

    _encode_line(sample, line_end, f"reject_template {template!r}")
    return template


def _encode_line(text: str, line_end: str, subject: str) -> bytes:
    """Encode one ASCII line that ends with `line_end` and contains no other line end."""
    if not text.endswith(line_end):
        raise ValueError(f"{subject} does not end with the line end {line_end!r}; append it")
    if line_end in text[: -len(line_end)]:
        raise ValueError(f"{subject} contains more than one line end {line_end!r}; send one line at a time")
    try:
        return text.encode("ascii")
    except UnicodeEncodeError as error:
        raise ValueError(f"{subject} contains the non-ASCII character {text[error.start]!r}; use ASCII only") from error


def _compile_pattern(option: str, pattern: str, required_group: str | None = None) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f"{option} {pattern!r} is not a valid regular expression ({error}); fix it or escape special characters with '\\'"
        ) from error

    if required_group is not None and required_group not in compiled.groupindex:
        raise ValueError(
            f"{option} {pattern!r} has no named group {required_group!r}; capture the number with (?P<{required_group}>-?\\d+)"
        )
    if compiled.search("") is not None:
        raise ValueError(
            f"{option} {pattern!r} matches an empty line, so it would match every line; anchor it, for example '^OK$'"
        )
    return compiled
