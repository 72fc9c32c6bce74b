"""A simulated PLC that acts as a Modbus RTU slave: coils, holding registers, an encoder and a part counter."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edge.lineio.checksums import crc16_modbus
from edge.lineio.modbus_rtu import (
    COIL_OFF,
    COIL_ON,
    EXCEPTION_FLAG,
    MAX_READ_REGISTERS,
    READ_HOLDING_REGISTERS,
    WRITE_SINGLE_COIL,
    WRITE_SINGLE_REGISTER,
    check_crc,
)
from edge.lineio.simulated.conveyor import Conveyor
from edge.lineio.simulated.pty_device import PtyDevice

# Function codes whose requests are 8 bytes long (unit, function, 4 data bytes, CRC).
_FIXED_LENGTH_FUNCTIONS = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x06})
# Function codes whose requests carry their data byte count at offset 6 (write multiple coils/registers).
_COUNTED_FUNCTIONS = frozenset({0x0F, 0x10})
# A partial frame older than this is dropped, as a real slave drops it after 3.5 characters of
# silence. A pty has no baud rate, so the bound is generous enough for thread scheduling.
_STALE_PARTIAL_NS = 100_000_000


class SimulatedModbusPlc(PtyDevice):
    """A Modbus RTU slave with `coil_count` coils and `register_count` holding registers.

    Behaves as a real slave does: frames with a bad CRC or another unit id get no reply, and a
    request to unit id 0 (broadcast) is executed without a reply. Function 05 and 06 requests are echoed,
    03 returns the registers, other functions get exception 01 and addresses out of range
    exception 02. The two registers at `encoder_address` (high word first) contain the conveyor's
    position at the time of each request, and `part_counter_address` contains the part counter
    that `present_part` advances.
    """

    def __init__(
        self,
        unit_id: int = 1,
        alias: Path | str | None = None,
        conveyor: Conveyor | None = None,
        encoder_address: int = 100,
        part_counter_address: int = 102,
        latch_address: int | None = 103,
        coil_count: int = 64,
        register_count: int = 256,
    ) -> None:
        super().__init__("modbus plc", alias)
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit_id {unit_id} is invalid; use 1 to 247")
        for label, address, width in (("encoder_address", encoder_address, 2), ("part_counter_address", part_counter_address, 1)):
            if not 0 <= address <= register_count - width:
                raise ValueError(f"{label} {address} does not fit in {register_count} registers")

        self.unit_id = unit_id
        self.conveyor = conveyor
        self.encoder_address = encoder_address
        self.part_counter_address = part_counter_address
        # Two registers (high word first) with the encoder counts latched at the last present_part().
        self.latch_address = latch_address
        self.coils = [False] * coil_count
        self.registers = [0] * register_count

        # (monotonic_ns, address, on) for each coil write; (monotonic_ns, address, value) for each register write.
        self.coil_writes: list[tuple[int, int, bool]] = []
        self.register_writes: list[tuple[int, int, int]] = []
        # Every complete request split from the byte stream, valid or not, and when its last byte arrived.
        self.frames: list[bytes] = []
        self.frame_times_ns: list[int] = []
        # (monotonic_ns just before sending, frame) for each reply.
        self.replies: list[tuple[int, bytes]] = []
        self.ignored_frames = 0

        self._state_lock = threading.Lock()
        self._buffer = bytearray()
        self._last_chunk_ns = 0
        self._failures_left = 0
        self._corruptions_left = 0

    @property
    def part_counter(self) -> int:
        return self.registers[self.part_counter_address]

    def present_part(self) -> tuple[int, int]:
        """Advance the part counter by one, wrapping at 65536; return (counter, monotonic_ns)."""
        with self._state_lock:
            presented_ns = time.monotonic_ns()
            if self.latch_address is not None and self.conveyor is not None:
                counts = self.conveyor.position_counts(presented_ns) & 0xFFFFFFFF
                self.registers[self.latch_address] = counts >> 16
                self.registers[self.latch_address + 1] = counts & 0xFFFF
            counter = (self.registers[self.part_counter_address] + 1) & 0xFFFF
            self.registers[self.part_counter_address] = counter
            return counter, presented_ns

    def fail_next(self, count: int) -> None:
        """Reply to the next `count` requests to this unit with exception 04 (server device failure)."""
        with self._state_lock:
            self._failures_left = count

    def corrupt_next(self, count: int) -> None:
        """Send the next `count` replies with a wrong CRC, as line noise would."""
        with self._state_lock:
            self._corruptions_left = count

    def handle(self, data: bytes) -> None:
        now_ns = time.monotonic_ns()
        if self._buffer and now_ns - self._last_chunk_ns > _STALE_PARTIAL_NS:
            self._buffer.clear()
            self.ignored_frames += 1
        self._last_chunk_ns = now_ns
        self._buffer += data

        while True:
            length = _request_length(bytes(self._buffer))
            if length is None or len(self._buffer) < length:
                return
            frame = bytes(self._buffer[:length])
            del self._buffer[:length]
            self.frames.append(frame)
            self.frame_times_ns.append(now_ns)
            self._answer(frame)

    def _answer(self, frame: bytes) -> None:
        if not check_crc(frame):
            # A real slave cannot tell where the next frame starts, so it drops the rest of the burst too.
            self._buffer.clear()
            self.ignored_frames += 1
            return
        unit_id = frame[0]
        if unit_id not in (self.unit_id, 0):
            self.ignored_frames += 1
            return

        function = frame[1]
        with self._state_lock:
            if self._failures_left > 0:
                self._failures_left -= 1
                pdu = _exception(function, 0x04)
            else:
                pdu = self._execute(function, frame[2:-2])
            corrupt = self._corruptions_left > 0
            if corrupt:
                self._corruptions_left -= 1

        if unit_id == 0:
            return
        reply = bytes([self.unit_id]) + pdu
        crc = crc16_modbus(reply)
        if corrupt:
            crc = bytes([crc[0] ^ 0xFF, crc[1]])
        self.replies.append((time.monotonic_ns(), reply + crc))
        self.send(reply + crc)

    def _execute(self, function: int, data: bytes) -> bytes:
        """Carry out one request and return the reply's function code and data."""
        if function == WRITE_SINGLE_COIL:
            address, value = int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big")
            if address >= len(self.coils):
                return _exception(function, 0x02)
            if value not in (COIL_ON, COIL_OFF):
                return _exception(function, 0x03)
            self.coils[address] = value == COIL_ON
            self.coil_writes.append((time.monotonic_ns(), address, value == COIL_ON))
            return bytes([function]) + data

        if function == WRITE_SINGLE_REGISTER:
            address, value = int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big")
            if address >= len(self.registers):
                return _exception(function, 0x02)
            self.registers[address] = value
            self.register_writes.append((time.monotonic_ns(), address, value))
            return bytes([function]) + data

        if function == READ_HOLDING_REGISTERS:
            address, count = int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big")
            if not 1 <= count <= MAX_READ_REGISTERS:
                return _exception(function, 0x03)
            if address + count > len(self.registers):
                return _exception(function, 0x02)
            self._update_encoder()
            values = self.registers[address : address + count]
            return bytes([function, 2 * count]) + b"".join(value.to_bytes(2, "big") for value in values)

        return _exception(function, 0x01)

    def _update_encoder(self) -> None:
        if self.conveyor is None:
            return
        counts = self.conveyor.position_counts() & 0xFFFFFFFF
        self.registers[self.encoder_address] = counts >> 16
        self.registers[self.encoder_address + 1] = counts & 0xFFFF


def _request_length(buffer: bytes) -> int | None:
    """Return the length of the request at the start of `buffer`, or None while too few bytes have arrived.

    A function this slave does not know has no known length, so the whole burst received so
    far counts as its frame.
    """
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if function in _FIXED_LENGTH_FUNCTIONS:
        return 8
    if function in _COUNTED_FUNCTIONS:
        return 9 + buffer[6] if len(buffer) >= 7 else None
    return len(buffer) if len(buffer) >= 4 else None


def _exception(function: int, code: int) -> bytes:
    return bytes([function | EXCEPTION_FLAG, code])
