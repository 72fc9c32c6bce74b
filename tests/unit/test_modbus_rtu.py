"""Modbus RTU framing, client, reject outputs and PLC input against a simulated PLC on a pty."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.lineio.base import DeviceReplyError, DeviceTimeout, LineIOError
from edge.lineio.modbus_rtu import (
    ModbusCoilOutput,
    ModbusExceptionReply,
    ModbusPlcInput,
    ModbusRegisterOutput,
    ModbusRtuClient,
    check_crc,
    reply_length,
    request_frame,
    silent_interval_s,
)
from edge.lineio.serial_link import SerialLink, SerialSettings
from edge.lineio.simulated.conveyor import Conveyor
from edge.lineio.simulated.modbus_plc import SimulatedModbusPlc
from tests.waiting import wait_until

CHARACTER_TIME_9600_S = 10 / 9600


def reference_crc16_modbus(data: bytes) -> bytes:
    """CRC-16/MODBUS from its catalogue parameters, computed bit by bit, most significant bit first.

    Width 16, polynomial 0x8005, initial value 0xFFFF, input and output reflected, no final XOR.
    This is the unreflected form of the algorithm, so it shares no steps with crc16_modbus.
    """

    def reflect(value: int, width: int) -> int:
        result = 0
        for bit in range(width):
            if value >> bit & 1:
                result |= 1 << (width - 1 - bit)
        return result

    crc = 0xFFFF
    for byte in data:
        crc ^= reflect(byte, 8) << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return reflect(crc, 16).to_bytes(2, "little")


def with_crc(body: bytes) -> bytes:
    return body + reference_crc16_modbus(body)


@pytest.fixture
def plc() -> Iterator[SimulatedModbusPlc]:
    with SimulatedModbusPlc() as sim:
        yield sim


@pytest.fixture
def make_client() -> Iterator[Callable[..., ModbusRtuClient]]:
    links: list[SerialLink] = []

    def make(port: str, *, baudrate: int = 9600, **options: float) -> ModbusRtuClient:
        settings = SerialSettings(port, baudrate=baudrate, reopen_backoff_s=(0.05,))
        link = SerialLink(settings, "modbus plc")
        links.append(link)
        return ModbusRtuClient(link, 1, **options)

    yield make
    for link in links:
        link.close()


# Framing


def test_crc_published_vector() -> None:
    frame = request_frame(1, 0x05, bytes.fromhex("0013FF00"))

    assert frame == bytes.fromhex("010500 13 FF00 7DFF")
    assert reference_crc16_modbus(frame[:-2]) == bytes.fromhex("7DFF")


def test_crc_catalogue_check_value() -> None:
    # The catalogued check value of CRC-16/MODBUS over the ASCII digits 1 to 9 is 0x4B37.
    assert reference_crc16_modbus(b"123456789") == (0x4B37).to_bytes(2, "little")
    assert request_frame(0x31, 0x32, b"3456789")[-2:] == (0x4B37).to_bytes(2, "little")


def test_crc_write_register_vector() -> None:
    # Computed from the algorithm's definition and checked against the reference below.
    frame = request_frame(1, 0x06, bytes.fromhex("00010003"))

    assert frame == bytes.fromhex("010600010003980B")
    assert reference_crc16_modbus(frame[:-2]) == frame[-2:]


def test_crc_read_registers_vector() -> None:
    frame = request_frame(1, 0x03, bytes.fromhex("0000000A"))

    assert frame == bytes.fromhex("01030000000AC5CD")
    assert reference_crc16_modbus(frame[:-2]) == frame[-2:]


@pytest.mark.parametrize("payload", [b"", b"\x00", bytes(range(40)), b"\xff" * 7])
def test_crc_matches_reference(payload: bytes) -> None:
    frame = request_frame(17, 0x10, payload)

    assert frame[-2:] == reference_crc16_modbus(frame[:-2])


def test_check_crc() -> None:
    frame = bytes.fromhex("01050013FF007DFF")

    assert check_crc(frame)
    assert not check_crc(frame[:-1] + b"\xfe")
    assert not check_crc(bytes.fromhex("0105"))


def test_request_frame_rejects_bad_unit() -> None:
    with pytest.raises(ValueError, match="unit id 248"):
        request_frame(248, 0x03, b"")


@pytest.mark.parametrize(
    ("function", "received", "expected"),
    [
        (0x05, b"\x01", None),
        (0x05, b"\x01\x05", 8),
        (0x06, b"\x01\x06", 8),
        (0x05, b"\x01\x85", 5),
        (0x03, b"\x01\x83", 5),
        (0x03, b"\x01\x03", None),
        (0x03, b"\x01\x03\x06", 11),
        (0x03, b"\x01\x03\x02", 7),
    ],
)
def test_reply_length(function: int, received: bytes, expected: int | None) -> None:
    assert reply_length(function, received) == expected


def test_silent_interval() -> None:
    assert silent_interval_s(9600, CHARACTER_TIME_9600_S) == pytest.approx(0.003646, abs=1e-6)
    assert silent_interval_s(19200, 10 / 19200) == pytest.approx(3.5 * 10 / 19200)
    assert silent_interval_s(115200, 10 / 115200) == pytest.approx(0.00175)


# Client requests


def test_coil_pulse_bytes(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    output = ModbusCoilOutput(make_client(plc.port), address=0x13)
    output.open()

    output.pulse_start(part_id=7)
    assert plc.coils[0x13]
    output.pulse_end(part_id=7)
    output.close()

    off = bytes.fromhex("010500130000") + bytes.fromhex("3C0F")
    on = bytes.fromhex("01050013FF007DFF")
    assert plc.frames == [off, on, off]
    assert [reply for _, reply in plc.replies] == [off, on, off]
    assert [(address, on) for _, address, on in plc.coil_writes] == [(0x13, False), (0x13, True), (0x13, False)]
    assert not plc.coils[0x13]
    assert output.describe()["pulses"] == 1


def test_register_pulse_bytes(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    output = ModbusRegisterOutput(make_client(plc.port), address=1, on_value=3, off_value=0)
    output.open()

    output.pulse_start(part_id=1)
    output.pulse_end(part_id=1)
    output.close()

    on = bytes.fromhex("010600010003980B")
    off = request_frame(1, 0x06, bytes.fromhex("00010000"))
    assert plc.frames == [off, on, off]
    assert [(address, value) for _, address, value in plc.register_writes] == [(1, 0), (1, 3), (1, 0)]


def test_register_output_rejects_equal_values(make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client("/dev/null")

    with pytest.raises(ValueError, match="both 5"):
        ModbusRegisterOutput(client, address=1, on_value=5, off_value=5)


def test_read_registers(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    plc.registers[10:13] = [0x1234, 0, 0xFFFF]
    client = make_client(plc.port)
    client.open()

    values = client.read_holding_registers(10, 3)

    assert values == [0x1234, 0, 0xFFFF]
    assert plc.frames == [request_frame(1, 0x03, bytes.fromhex("000A0003"))]
    assert plc.replies[0][1] == request_frame(1, 0x03, bytes.fromhex("06 1234 0000 FFFF"))


def test_read_registers_rejects_bad_count(make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client("/dev/null")

    with pytest.raises(ValueError, match="count 126"):
        client.read_holding_registers(0, 126)
    with pytest.raises(ValueError, match="past address 65535"):
        client.read_holding_registers(65535, 2)


def test_client_rejects_broadcast_unit() -> None:
    link = SerialLink(SerialSettings("/dev/null"), "modbus plc")

    with pytest.raises(ValueError, match="unit id 0"):
        ModbusRtuClient(link, 0)


def test_silent_interval_on_wire(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port, baudrate=9600)
    client.open()

    for _ in range(5):
        client.read_holding_registers(0, 1)

    # The client reads a reply only after the simulator has sent it, so the time from a reply
    # leaving the simulator to the next request arriving bounds the client's gap from below.
    gaps_s = [(plc.frame_times_ns[index + 1] - plc.replies[index][0]) / 1e9 for index in range(4)]
    for gap_s in gaps_s:
        assert gap_s >= 3.5 * CHARACTER_TIME_9600_S


def test_min_gap_on_wire(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port, baudrate=115200, min_gap_ms=30.0)
    client.open()

    client.write_single_coil(1, True)
    client.write_single_coil(1, False)

    gap_s = (plc.frame_times_ns[1] - plc.replies[0][0]) / 1e9
    assert gap_s >= 0.030


def test_exception_illegal_address(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port, retries=2)
    client.open()

    with pytest.raises(ModbusExceptionReply, match="exception 02 \\(illegal data address\\)") as raised:
        client.write_single_coil(1000, True)

    assert raised.value.exception_code == 2
    assert plc.replies[0][1] == with_crc(bytes.fromhex("018502"))
    assert client.counters["exceptions"] == 1
    assert client.counters["retries"] == 0
    assert client.counters["failures"] == 1


def test_read_past_last_register(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port)
    client.open()

    with pytest.raises(ModbusExceptionReply, match="exception 02"):
        client.read_holding_registers(250, 10)


def test_sim_illegal_coil_value(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    link = make_client(plc.port).link
    link.open()

    request = request_frame(1, 0x05, bytes.fromhex("00011234"))
    reply = link.transact(request, lambda buffer: 5 if len(buffer) >= 5 else None, 0.3)

    assert reply == with_crc(bytes.fromhex("018503"))
    assert plc.coil_writes == []


def test_sim_unknown_function(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    link = make_client(plc.port).link
    link.open()

    request = request_frame(1, 0x2B, bytes.fromhex("0E0100"))
    reply = link.transact(request, lambda buffer: 5 if len(buffer) >= 5 else None, 0.3)

    assert reply == with_crc(bytes.fromhex("01AB01"))


def test_device_failure_retried(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port, retries=1)
    client.open()
    plc.fail_next(1)

    client.write_single_register(5, 42)

    assert plc.registers[5] == 42
    assert client.counters["exceptions"] == 1
    assert client.counters["retries"] == 1
    assert client.counters["failures"] == 0
    assert client.counters["requests"] == 2


def test_device_failure_gives_up(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port, retries=1)
    client.open()
    plc.fail_next(5)

    with pytest.raises(ModbusExceptionReply, match="exception 04 \\(server device failure\\)"):
        client.write_single_coil(3, True)

    assert client.counters["requests"] == 2
    assert client.counters["retries"] == 1
    assert client.counters["failures"] == 1
    assert not plc.coils[3]


def test_bad_crc_retried(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port, retries=1)
    client.open()
    plc.corrupt_next(1)

    assert client.read_holding_registers(0, 2) == [0, 0]
    assert client.counters["crc_errors"] == 1
    assert client.counters["retries"] == 1


def test_bad_crc_gives_up(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port, retries=1)
    client.open()
    plc.corrupt_next(2)

    with pytest.raises(DeviceReplyError, match="bad CRC"):
        client.read_holding_registers(0, 2)

    assert client.counters["crc_errors"] == 2
    assert client.counters["failures"] == 1


def test_timeout_retried(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port, reply_timeout_ms=80, retries=1)
    client.open()
    plc.silent.set()

    with pytest.raises(DeviceTimeout, match="unit 1"):
        client.write_single_coil(2, True)

    assert len(plc.received) == 2
    assert client.counters["timeouts"] == 2
    assert client.counters["retries"] == 1
    assert client.counters["failures"] == 1

    plc.silent.clear()
    client.write_single_coil(2, True)
    assert plc.coils[2]


def test_describe_counts(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port)
    client.open()
    client.read_holding_registers(0, 1)

    description = client.describe()

    assert description["requests"] == 1
    assert description["failures"] == 0
    assert description["link"]["connected"]
    assert description["link"]["device"] == "modbus plc"


def test_sim_ignores_bad_frames(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    link = make_client(plc.port).link
    link.open()
    bad_crc = bytes.fromhex("01050013FF007DFE")
    other_unit = request_frame(2, 0x05, bytes.fromhex("0013FF00"))

    link.write(bad_crc)
    assert link.read_available(0.15) == b""
    link.write(other_unit)
    assert link.read_available(0.15) == b""

    assert plc.frames == [bad_crc, other_unit]
    assert plc.ignored_frames == 2
    assert plc.coil_writes == []


def test_sim_drops_stale_partial(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port)
    client.open()
    request = request_frame(1, 0x05, bytes.fromhex("0013FF00"))

    client.link.write(request[:3])
    time.sleep(0.15)
    client.write_single_coil(0x13, True)

    assert plc.ignored_frames == 1
    assert plc.frames == [request]
    assert plc.coils[0x13]


def test_client_shared_close(plc: SimulatedModbusPlc, make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client(plc.port)
    first = ModbusCoilOutput(client, 1)
    second = ModbusCoilOutput(client, 2)
    first.open()
    second.open()

    first.close()
    first.close()
    second.pulse_start(part_id=1)
    assert client.link.is_open

    second.close()
    assert not client.link.is_open


# PLC input


@pytest.fixture
def make_input(make_client: Callable[..., ModbusRtuClient]) -> Iterator[Callable[..., ModbusPlcInput]]:
    inputs: list[ModbusPlcInput] = []

    def make(port: str, *, client: ModbusRtuClient | None = None, **options: object) -> ModbusPlcInput:
        options.setdefault("encoder_address", 100)
        options.setdefault("part_counter_address", 102)
        plc_input = ModbusPlcInput(client or make_client(port, baudrate=115200), **options)
        inputs.append(plc_input)
        return plc_input

    yield make
    for plc_input in inputs:
        plc_input.close()


def test_input_encoder_counts(make_input: Callable[..., ModbusPlcInput]) -> None:
    # Starts just below 65536, so the counts soon need the high word.
    conveyor = Conveyor(speed_counts_per_s=2000.0, start_counts=65500)
    with SimulatedModbusPlc(conveyor=conveyor) as plc:
        plc_input = make_input(plc.port)
        assert plc_input.encoder_counts() is None
        plc_input.open()

        assert wait_until(lambda: plc_input.encoder_counts() is not None)
        first_counts, first_ns = plc_input.encoder_counts()
        assert wait_until(lambda: plc_input.encoder_counts()[0] > 65536)
        counts, read_ns = plc_input.encoder_counts()
        plc_input.close()

    assert counts > first_counts
    assert read_ns > first_ns
    # The simulator computes the position when the request arrives, shortly before the reply.
    assert counts <= conveyor.position_counts(read_ns)
    assert counts >= conveyor.position_counts(read_ns - 200_000_000)


def test_input_single_read(make_input: Callable[..., ModbusPlcInput]) -> None:
    with SimulatedModbusPlc() as plc:
        plc_input = make_input(plc.port)
        plc_input.open()
        assert wait_until(lambda: plc_input.counters["polls"] >= 3)
        plc_input.close()

    assert set(plc.frames) == {request_frame(1, 0x03, bytes.fromhex("00640003"))}


def test_input_separate_reads(make_input: Callable[..., ModbusPlcInput]) -> None:
    with SimulatedModbusPlc(part_counter_address=110) as plc:
        plc_input = make_input(plc.port, part_counter_address=110)
        plc_input.open()
        assert wait_until(lambda: plc_input.counters["polls"] >= 3)
        plc_input.close()

    encoder_read = request_frame(1, 0x03, bytes.fromhex("00640002"))
    counter_read = request_frame(1, 0x03, bytes.fromhex("006E0001"))
    assert set(plc.frames) == {encoder_read, counter_read}


def test_input_rejects_overlap(make_client: Callable[..., ModbusRtuClient]) -> None:
    client = make_client("/dev/null")

    with pytest.raises(ValueError, match="overlaps"):
        ModbusPlcInput(client, encoder_address=100, part_counter_address=101)
    with pytest.raises(ValueError, match="needs"):
        ModbusPlcInput(client, encoder_address=None, part_counter_address=None)


def test_input_triggers(plc: SimulatedModbusPlc, make_input: Callable[..., ModbusPlcInput]) -> None:
    plc.registers[102] = 5
    plc_input = make_input(plc.port)
    plc_input.open()
    assert wait_until(lambda: plc_input.counters["polls"] >= 2)

    # The first poll only records the starting counter.
    assert plc_input.next_trigger(timeout_s=0.05) is None

    counter, presented_ns = plc.present_part()
    trigger = plc_input.next_trigger(timeout_s=1.0)
    assert counter == 6
    assert trigger is not None
    assert trigger.sequence == 6
    assert trigger.monotonic_ns >= presented_ns

    plc.present_part()
    trigger = plc_input.next_trigger(timeout_s=1.0)
    assert trigger is not None
    assert trigger.sequence == 7
    assert plc_input.next_trigger(timeout_s=0.05) is None


def test_input_counter_gap(plc: SimulatedModbusPlc, make_input: Callable[..., ModbusPlcInput]) -> None:
    plc_input = make_input(plc.port)
    plc_input.open()
    assert wait_until(lambda: plc_input.counters["polls"] >= 1)

    # Two parts pass while the port is busy, so the next poll reads the counter two higher.
    with plc_input.client.link.lock:
        plc.present_part()
        plc.present_part()

    trigger = plc_input.next_trigger(timeout_s=1.0)
    assert trigger is not None
    assert trigger.sequence == 2
    assert plc_input.next_trigger(timeout_s=0.05) is None


def test_input_counter_wraps(plc: SimulatedModbusPlc, make_input: Callable[..., ModbusPlcInput]) -> None:
    plc.registers[102] = 65535
    plc_input = make_input(plc.port)
    plc_input.open()
    assert wait_until(lambda: plc_input.counters["polls"] >= 1)

    counter, _ = plc.present_part()
    trigger = plc_input.next_trigger(timeout_s=1.0)

    assert counter == 0
    assert trigger is not None
    assert trigger.sequence == 0


def test_input_queue_overflow(plc: SimulatedModbusPlc, make_input: Callable[..., ModbusPlcInput]) -> None:
    plc_input = make_input(plc.port, trigger_queue_size=2)
    plc_input.open()
    assert wait_until(lambda: plc_input.counters["polls"] >= 1)

    for expected_triggers in (1, 2, 3):
        plc.present_part()
        assert wait_until(lambda: plc_input.counters["triggers"] == expected_triggers)

    assert plc_input.counters["trigger_overflows"] == 1
    assert [plc_input.next_trigger(0.05).sequence for _ in range(2)] == [2, 3]


def test_input_recovers_after_replug(tmp_path: Path, make_input: Callable[..., ModbusPlcInput]) -> None:
    with SimulatedModbusPlc(alias=tmp_path / "plc") as plc:
        plc_input = make_input(plc.port)
        plc_input.open()
        assert wait_until(lambda: plc_input.counters["polls"] >= 1)

        plc.replug(downtime_s=0.05)

        link = plc_input.client.link
        assert wait_until(lambda: link.counters.opens >= 2)
        polls_after_reopen = plc_input.counters["polls"]
        assert wait_until(lambda: plc_input.counters["polls"] > polls_after_reopen)
        plc.present_part()
        trigger = plc_input.next_trigger(timeout_s=1.0)
        plc_input.close()

    assert trigger is not None
    assert trigger.sequence == 1
    assert plc_input.counters["poll_failures"] >= 1
    assert plc_input.describe()["client"]["failures"] >= 1


def test_reject_writes_during_polling(
    plc: SimulatedModbusPlc,
    make_client: Callable[..., ModbusRtuClient],
    make_input: Callable[..., ModbusPlcInput],
) -> None:
    client = make_client(plc.port, baudrate=115200)
    plc_input = make_input(plc.port, client=client, poll_interval_ms=1.0)
    output = ModbusCoilOutput(client, address=4)
    plc_input.open()
    output.open()

    for part_id in range(20):
        output.pulse_start(part_id)
        plc.present_part()
        output.pulse_end(part_id)
    assert wait_until(lambda: plc_input.counters["triggers"] >= 1)
    output.close()

    # One initial switch-off, then on and off for each part.
    assert [on for _, address, on in plc.coil_writes] == [False] + [True, False] * 20
    assert all(check_crc(frame) for frame in plc.frames)
    assert plc.ignored_frames == 0
    assert client.counters["failures"] == 0
    assert plc_input.counters["poll_failures"] == 0
    assert plc_input.counters["polls"] > 0
    assert client.link.is_open


def test_output_open_fails_without_port(tmp_path: Path, make_client: Callable[..., ModbusRtuClient]) -> None:
    output = ModbusCoilOutput(make_client(str(tmp_path / "missing")), address=1)

    with pytest.raises(LineIOError, match="cannot open serial port"):
        output.open()
