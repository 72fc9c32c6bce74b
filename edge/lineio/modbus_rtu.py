"""Modbus RTU master: request framing, a client for coils and holding registers, the reject
outputs and the PLC input built on it.

Only the three functions the station needs are implemented: 03 read holding registers,
05 write single coil and 06 write single register. Frames follow the Modbus over Serial Line
specification V1.02 (modbus.org): unit id, function code, data, CRC-16/MODBUS low byte first,
with at least 3.5 character times of silence between frames.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from functools import partial

import structlog

from edge.lineio.base import DeviceReplyError, DeviceTimeout, LineIOError, PlcInput, RejectOutput, TriggerEvent
from edge.lineio.checksums import crc16_modbus
from edge.lineio.serial_link import SerialLink
from edge.log import RepeatLimiter

log = structlog.get_logger(__name__)

READ_HOLDING_REGISTERS = 0x03
WRITE_SINGLE_COIL = 0x05
WRITE_SINGLE_REGISTER = 0x06
EXCEPTION_FLAG = 0x80

# Reply lengths in bytes, CRC included.
ECHO_REPLY_LENGTH = 8
EXCEPTION_REPLY_LENGTH = 5

EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
}

# A repeated request gets the same reply for these, so they are raised without a retry.
_PERMANENT_EXCEPTIONS = frozenset({0x01, 0x02, 0x03})

COIL_ON = 0xFF00
COIL_OFF = 0x0000
MAX_READ_REGISTERS = 125
_SILENT_INTERVAL_ABOVE_19200_S = 0.00175


class ModbusExceptionReply(DeviceReplyError):
    """The slave replied with a Modbus exception; `exception_code` is its code (1 to 255)."""

    def __init__(self, message: str, exception_code: int) -> None:
        super().__init__(message)
        self.exception_code = exception_code


def request_frame(unit_id: int, function: int, payload: bytes) -> bytes:
    """Build an RTU frame: unit id, function code, payload and the CRC, low byte first."""
    if not 0 <= unit_id <= 247:
        raise ValueError(f"Modbus unit id {unit_id} is invalid; use 1 to 247 (0 is broadcast)")
    if not 1 <= function <= 127:
        raise ValueError(f"Modbus function code {function} is invalid; use 1 to 127")
    body = bytes([unit_id, function]) + payload
    return body + crc16_modbus(body)


def check_crc(frame: bytes) -> bool:
    """Return whether the last two bytes of `frame` are the CRC of the bytes before them."""
    if len(frame) < 4:
        return False
    return crc16_modbus(frame[:-2]) == frame[-2:]


def reply_length(function: int, received: bytes) -> int | None:
    """Return the total length of the reply to a `function` request that starts with `received`.

    None while too few bytes have arrived to tell. An exception reply (function | 0x80) is
    5 bytes, the echo of 05 and 06 is 8 bytes, and a 03 reply is 5 bytes plus its byte count,
    which is 5 + 2 * count for `count` registers.
    """
    if len(received) < 2:
        return None
    if received[1] == function | EXCEPTION_FLAG:
        return EXCEPTION_REPLY_LENGTH
    if function in (WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER):
        return ECHO_REPLY_LENGTH
    if len(received) < 3:
        return None
    return 5 + received[2]


def _frame_end(function: int, buffer: bytes) -> int | None:
    length = reply_length(function, buffer)
    if length is None or len(buffer) < length:
        return None
    return length


def silent_interval_s(baudrate: int, character_time_s: float) -> float:
    """Return the minimum silence between two frames, in seconds.

    3.5 character times, but a fixed 1.75 ms above 19200 baud, as the Modbus over Serial Line
    specification sets it.
    """
    if baudrate > 19200:
        return _SILENT_INTERVAL_ABOVE_19200_S
    return 3.5 * character_time_s


def _check_address(address: int, name: str = "address") -> None:
    if not 0 <= address <= 0xFFFF:
        raise ValueError(f"Modbus {name} {address} is out of range; use 0 to 65535")


class ModbusRtuClient:
    """A Modbus RTU master for one slave on a serial link.

    Thread-safe: each request holds `link.lock` from the silent interval before it to the end of
    its reply, so requests from several threads never interleave on the wire. A request that
    times out, gets a bad CRC, an unexpected reply or a transient exception (04 and above) is
    repeated up to `retries` times. Exceptions 01 to 03 are raised at once, because a repeat
    gets the same answer. A failure of the port itself (LineIOError from the link) is raised at
    once too, because the link reopens only after its backoff.
    """

    def __init__(
        self,
        link: SerialLink,
        unit_id: int,
        *,
        reply_timeout_ms: float = 100,
        retries: int = 1,
        min_gap_ms: float = 0.0,
    ) -> None:
        if not 1 <= unit_id <= 247:
            raise ValueError(f"Modbus unit id {unit_id} is invalid; use the slave's address, 1 to 247")
        if reply_timeout_ms <= 0:
            raise ValueError(f"reply_timeout_ms must be positive, got {reply_timeout_ms}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        if min_gap_ms < 0:
            raise ValueError(f"min_gap_ms must be 0 or more, got {min_gap_ms}")

        self.link = link
        self.unit_id = unit_id
        self.retries = retries
        self.reply_timeout_s = reply_timeout_ms / 1000.0
        settings = link.settings
        self.gap_s = max(silent_interval_s(settings.baudrate, settings.character_time_s()), min_gap_ms / 1000.0)
        self.counters = {"requests": 0, "retries": 0, "failures": 0, "timeouts": 0, "crc_errors": 0, "exceptions": 0}

        # Monotonic time of the last byte read or written, for the silent interval.
        self._last_frame_end_s: float | None = None
        self._users = 0
        self._users_lock = threading.Lock()
        self._log = log.bind(device=link.device_name, unit_id=unit_id)
        self._limited_log = RepeatLimiter(self._log)

    def open(self) -> None:
        """Open the link for one more user (an output or an input sharing this client)."""
        with self._users_lock:
            self.link.open()
            self._users += 1

    def close(self) -> None:
        """Release one user's hold; the link closes when the last user has closed."""
        with self._users_lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                self.link.close()

    def write_single_coil(self, address: int, on: bool) -> None:
        """Switch a coil on (FF00) or off (0000) with function 05; the slave must echo the request."""
        _check_address(address)
        payload = address.to_bytes(2, "big") + (COIL_ON if on else COIL_OFF).to_bytes(2, "big")
        self._execute(WRITE_SINGLE_COIL, payload, f"write coil {address} {'on' if on else 'off'}")

    def write_single_register(self, address: int, value: int) -> None:
        """Write one 16-bit holding register with function 06; the slave must echo the request."""
        _check_address(address)
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"register value {value} does not fit 16 bits; use 0 to 65535")
        payload = address.to_bytes(2, "big") + value.to_bytes(2, "big")
        self._execute(WRITE_SINGLE_REGISTER, payload, f"write register {address} = {value}")

    def read_holding_registers(self, address: int, count: int, *, retries: int | None = None) -> list[int]:
        """Read `count` consecutive 16-bit holding registers with function 03.

        `retries` overrides the client's setting for this call; a poller passes 0, so that its
        next poll is the retry and it never holds the port for more than one reply timeout.
        """
        _check_address(address)
        if not 1 <= count <= MAX_READ_REGISTERS:
            raise ValueError(f"register count {count} is invalid; read 1 to {MAX_READ_REGISTERS} registers at once")
        if address + count > 0x10000:
            raise ValueError(f"registers {address} to {address + count - 1} run past address 65535")

        payload = address.to_bytes(2, "big") + count.to_bytes(2, "big")
        request_name = f"read {count} register(s) from {address}"
        reply = self._execute(READ_HOLDING_REGISTERS, payload, request_name, retries=retries, register_count=count)
        data = reply[3:-2]
        return [int.from_bytes(data[index : index + 2], "big") for index in range(0, len(data), 2)]

    def describe(self) -> dict:
        return {"unit_id": self.unit_id, "gap_ms": round(self.gap_s * 1000, 3), **self.counters, "link": self.link.describe()}

    def _execute(
        self,
        function: int,
        payload: bytes,
        request_name: str,
        *,
        retries: int | None = None,
        register_count: int | None = None,
    ) -> bytes:
        """Send a request and return its checked reply, repeating it after a timeout or a bad reply."""
        request = request_frame(self.unit_id, function, payload)
        attempts = 1 + (self.retries if retries is None else retries)
        frame_end = partial(_frame_end, function)

        for attempt in range(1, attempts + 1):
            with self.link.lock:
                self._wait_for_silent_interval()
                self.counters["requests"] += 1
                try:
                    reply = self.link.transact(request, frame_end, self.reply_timeout_s)
                    self._check_reply(request, reply, request_name, register_count)
                    return reply
                except DeviceTimeout as error:
                    self.counters["timeouts"] += 1
                    failure: LineIOError = DeviceTimeout(
                        f"{request_name} on unit {self.unit_id}: {error}; also check that the PLC's unit id is {self.unit_id}"
                    )
                    failure.__cause__ = error
                    retryable = True
                except ModbusExceptionReply as error:
                    failure = error
                    retryable = error.exception_code not in _PERMANENT_EXCEPTIONS
                except DeviceReplyError as error:
                    failure = error
                    retryable = True
                except LineIOError as error:
                    failure = error
                    retryable = False
                finally:
                    self._last_frame_end_s = time.monotonic()

                if retryable and attempt < attempts:
                    self.counters["retries"] += 1
                    self._limited_log.warning("modbus request retried", request=request_name, attempt=attempt, error=str(failure))
                    continue
                self.counters["failures"] += 1
                self._limited_log.error("modbus request failed", request=request_name, attempts=attempt, error=str(failure))
                raise failure
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait_for_silent_interval(self) -> None:
        if self._last_frame_end_s is None:
            return
        remaining_s = self._last_frame_end_s + self.gap_s - time.monotonic()
        if remaining_s > 0:
            time.sleep(remaining_s)

    def _check_reply(self, request: bytes, reply: bytes, request_name: str, register_count: int | None) -> None:
        """Raise DeviceReplyError unless `reply` is a valid reply to `request`."""
        where = f"{self.link.device_name} unit {self.unit_id}, {request_name}"
        if not check_crc(reply):
            self.counters["crc_errors"] += 1
            raise DeviceReplyError(f"{where}: reply {reply.hex(' ')} has a bad CRC; check for noise, termination and baud rate")
        if reply[0] != self.unit_id:
            raise DeviceReplyError(
                f"{where}: reply {reply.hex(' ')} comes from unit {reply[0]}; check that no two slaves share a unit id"
            )

        function = request[1]
        if reply[1] == function | EXCEPTION_FLAG:
            self.counters["exceptions"] += 1
            code = reply[2]
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise ModbusExceptionReply(
                f"{where}: the PLC replied with exception {code:02X} ({name}); check the address and value against the "
                "PLC's Modbus map",
                code,
            )
        if reply[1] != function:
            raise DeviceReplyError(f"{where}: reply {reply.hex(' ')} has function {reply[1]:02X}, expected {function:02X}")

        if function in (WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER) and reply != request:
            raise DeviceReplyError(f"{where}: the echo {reply.hex(' ')} differs from the request {request.hex(' ')}")
        if function == READ_HOLDING_REGISTERS and reply[2] != 2 * (register_count or 0):
            raise DeviceReplyError(f"{where}: the reply carries {reply[2]} data bytes, expected {2 * (register_count or 0)}")


class _ModbusOutput(RejectOutput):
    """A reject output that writes one value to switch on and another to switch off."""

    def __init__(self, client: ModbusRtuClient, address: int) -> None:
        _check_address(address)
        self.client = client
        self.address = address
        self.pulses = 0
        self._opened = False

    def open(self) -> None:
        """Open the client's link and switch the output off, ending a pulse that a crash left on.

        Raises LineIOError when the port cannot be opened or the PLC does not confirm the write.
        """
        if not self._opened:
            self.client.open()
            self._opened = True
        self._write(False)

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self.client.close()

    def pulse_start(self, part_id: int) -> None:
        self._write(True)
        self.pulses += 1

    def pulse_end(self, part_id: int) -> None:
        self._write(False)

    def describe(self) -> dict:
        return {"name": self.name, "address": self.address, "pulses": self.pulses, "client": self.client.describe()}

    def _write(self, on: bool) -> None:
        raise NotImplementedError


class ModbusCoilOutput(_ModbusOutput):
    """Reject output on a PLC coil: on (FF00) at the pulse start, off (0000) at its end."""

    name = "modbus coil"

    def _write(self, on: bool) -> None:
        self.client.write_single_coil(self.address, on)


class ModbusRegisterOutput(_ModbusOutput):
    """Reject output on a PLC holding register: `on_value` at the pulse start, `off_value` at its end."""

    name = "modbus register"

    def __init__(self, client: ModbusRtuClient, address: int, on_value: int = 1, off_value: int = 0) -> None:
        super().__init__(client, address)
        for label, value in (("on_value", on_value), ("off_value", off_value)):
            if not 0 <= value <= 0xFFFF:
                raise ValueError(f"{label} {value} does not fit a 16-bit register; use 0 to 65535")
        if on_value == off_value:
            raise ValueError(f"on_value and off_value are both {on_value}; the PLC could not see a pulse")
        self.on_value = on_value
        self.off_value = off_value

    def _write(self, on: bool) -> None:
        self.client.write_single_register(self.address, self.on_value if on else self.off_value)


# Largest single read of the PLC's input registers (reading a few unused registers in between is cheaper than a second request).
MAX_BLOCK_REGISTERS = 8


class ModbusPlcInput(PlcInput):
    """Part-present triggers and encoder counts polled from PLC holding registers.

    The encoder is a 32-bit unsigned count in two registers, high word first, at
    `encoder_address`. The part counter is one 16-bit register that wraps at 65536. Each poll
    that finds the counter changed queues one TriggerEvent carrying the new counter value, so a
    consumer detects parts that passed between two polls as a gap in the sequence. The first
    poll only records the starting counter. With `latch_address`, the trigger also carries the
    encoder counts the PLC latched when the part was detected (two registers, high word first),
    read in the same poll. Polls read without retries, so that the port is
    never held for longer than one reply timeout and a reject write on the same client waits
    for one poll at most.
    """

    name = "modbus PLC"

    def __init__(
        self,
        client: ModbusRtuClient,
        *,
        encoder_address: int | None,
        part_counter_address: int | None,
        latch_address: int | None = None,
        poll_interval_ms: float = 5.0,
        trigger_queue_size: int = 64,
    ) -> None:
        if encoder_address is None and part_counter_address is None:
            raise ValueError("ModbusPlcInput needs encoder_address, part_counter_address or both")
        if encoder_address is not None:
            _check_address(encoder_address, "encoder_address")
            _check_address(encoder_address + 1, "encoder_address + 1 (low word)")
        if part_counter_address is not None:
            _check_address(part_counter_address, "part_counter_address")
        if (
            encoder_address is not None
            and part_counter_address is not None
            and part_counter_address in (encoder_address, encoder_address + 1)
        ):
            raise ValueError(
                f"part_counter_address {part_counter_address} overlaps the encoder registers "
                f"{encoder_address} and {encoder_address + 1}; give each its own register"
            )
        if latch_address is not None:
            if part_counter_address is None:
                raise ValueError("latch_address needs part_counter_address: the latched counts belong to a part-present count")
            _check_address(latch_address + 1, "latch_address + 1 (low word)")
        if poll_interval_ms <= 0:
            raise ValueError(f"poll_interval_ms must be positive, got {poll_interval_ms}")
        if trigger_queue_size < 1:
            raise ValueError(f"trigger_queue_size must be at least 1, got {trigger_queue_size}")

        self.client = client
        self.encoder_address = encoder_address
        self.part_counter_address = part_counter_address
        self.latch_address = latch_address
        self.poll_interval_s = poll_interval_ms / 1000.0
        self.counters = {"polls": 0, "poll_failures": 0, "triggers": 0, "trigger_overflows": 0}
        self._blocks = _register_blocks(encoder_address, part_counter_address, latch_address)

        self._triggers: deque[TriggerEvent] = deque()
        self._trigger_queue_size = trigger_queue_size
        self._triggers_changed = threading.Condition()
        self._encoder: tuple[int, int] | None = None
        self._part_counter: int | None = None
        self._failing_since_polls: int | None = None

        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = False
        self._log = log.bind(device=client.link.device_name, unit_id=client.unit_id)
        self._limited_log = RepeatLimiter(self._log)

    def open(self) -> None:
        """Open the client's link and start the poll thread; raise LineIOError when the port cannot be opened."""
        if self._thread is not None:
            return
        if not self._opened:
            self.client.open()
            self._opened = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll_loop, name="modbus-plc-poll", daemon=True)
        self._thread.start()
        self._log.info("plc polling started", blocks=self._blocks, poll_interval_ms=self.poll_interval_s * 1000)

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.client.reply_timeout_s * (1 + self.client.retries) + self.poll_interval_s + 1.0)
            self._log.info("plc polling stopped", **self.counters)
        if self._opened:
            self._opened = False
            self.client.close()

    def next_trigger(self, timeout_s: float) -> TriggerEvent | None:
        with self._triggers_changed:
            self._triggers_changed.wait_for(lambda: bool(self._triggers), timeout=timeout_s)
            return self._triggers.popleft() if self._triggers else None

    def encoder_counts(self) -> tuple[int, int] | None:
        return self._encoder

    def describe(self) -> dict:
        return {
            "name": self.name,
            "encoder_address": self.encoder_address,
            "part_counter_address": self.part_counter_address,
            "polling": self._thread is not None and self._thread.is_alive(),
            **self.counters,
            "part_counter": self._part_counter,
            "encoder_counts": self._encoder[0] if self._encoder else None,
            "client": self.client.describe(),
        }

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once()
            except LineIOError as error:
                self._note_poll_failure()
                self._limited_log.warning("plc poll failed", error=str(error))
            except Exception as error:  # an unexpected error must not stop the triggers for good
                self._note_poll_failure()
                self._limited_log.error("plc poll failed with an unexpected error", error=repr(error))
            else:
                if self._failing_since_polls is not None:
                    failed_polls = self.counters["poll_failures"] - self._failing_since_polls + 1
                    self._failing_since_polls = None
                    self._log.info("plc polling recovered", failed_polls=failed_polls)
            self._stop.wait(self.poll_interval_s)

    def _note_poll_failure(self) -> None:
        self.counters["poll_failures"] += 1
        if self._failing_since_polls is None:
            self._failing_since_polls = self.counters["poll_failures"]

    def _poll_once(self) -> None:
        """Read each register block once and publish the encoder reading and any counter change."""
        for start, count in self._blocks:
            values = self.client.read_holding_registers(start, count, retries=0)
            arrived_ns = time.monotonic_ns()
            registers = dict(zip(range(start, start + count), values))

            if self.encoder_address in registers:
                high = registers[self.encoder_address]
                low = registers[self.encoder_address + 1]
                self._encoder = ((high << 16) | low, arrived_ns)
            if self.part_counter_address in registers:
                latched = None
                if self.latch_address is not None:
                    latched = (registers[self.latch_address] << 16) | registers[self.latch_address + 1]
                self._note_part_counter(registers[self.part_counter_address], arrived_ns, latched)
        self.counters["polls"] += 1

    def _note_part_counter(self, counter: int, arrived_ns: int, latched_counts: int | None) -> None:
        previous, self._part_counter = self._part_counter, counter
        if previous is None or counter == previous:
            return

        event = TriggerEvent(sequence=counter, monotonic_ns=arrived_ns, encoder_counts=latched_counts)
        with self._triggers_changed:
            if len(self._triggers) >= self._trigger_queue_size:
                # Keep the newest triggers: the oldest parts have most likely passed the ejector already.
                self._triggers.popleft()
                self.counters["trigger_overflows"] += 1
                self._limited_log.warning("plc trigger queue full; oldest trigger dropped", queue_size=self._trigger_queue_size)
            self._triggers.append(event)
            self.counters["triggers"] += 1
            self._triggers_changed.notify_all()


def _register_blocks(
    encoder_address: int | None, part_counter_address: int | None, latch_address: int | None = None
) -> list[tuple[int, int]]:
    """Return the (start, count) reads that cover the encoder, part counter and latch registers.

    One read covers them all when they lie within MAX_BLOCK_REGISTERS of each other, because one
    request costs less port time than several. Otherwise each is read on its own.
    """
    wanted = [(address, width) for address, width in ((encoder_address, 2), (part_counter_address, 1), (latch_address, 2))
              if address is not None]
    start = min(address for address, _ in wanted)
    end = max(address + width for address, width in wanted)
    if end - start <= MAX_BLOCK_REGISTERS:
        return [(start, end - start)]
    return wanted
