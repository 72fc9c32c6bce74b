"""ASCII PLC protocol against a simulated PLC on a real pseudo-terminal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.lineio.ascii_plc import AsciiPlc
from edge.lineio.base import DeviceReplyError, DeviceTimeout, LineIOError, TriggerEvent
from edge.lineio.serial_link import SerialLink, SerialSettings
from edge.lineio.simulated.ascii_plc import SimulatedAsciiPlc
from edge.lineio.simulated.conveyor import Conveyor
from tests.waiting import wait_until

# Upper bound for anything the reader thread must deliver; the tests wait for events, not durations.
WAIT_S = 2.0

PlcFactory = Callable[..., tuple[AsciiPlc, SimulatedAsciiPlc]]


@pytest.fixture
def make_plc() -> Iterator[PlcFactory]:
    """Start a simulated PLC and an open AsciiPlc on its pty; both are closed after the test."""
    opened: list[tuple[AsciiPlc, SimulatedAsciiPlc]] = []

    def make(
        alias: Path | None = None,
        conveyor: Conveyor | None = None,
        encoder_interval_ms: float | None = 10.0,
        **options,
    ) -> tuple[AsciiPlc, SimulatedAsciiPlc]:
        sim = SimulatedAsciiPlc(alias=alias, conveyor=conveyor, encoder_interval_ms=encoder_interval_ms).start()
        settings = SerialSettings(port=sim.port, baudrate=115200, reopen_backoff_s=(0.05,))
        options.setdefault("reply_timeout_ms", 300)
        plc = AsciiPlc(SerialLink(settings, "PLC"), **options)
        opened.append((plc, sim))
        plc.open()
        return plc, sim

    yield make

    for plc, sim in opened:
        plc.close()
        sim.stop()


def test_reject_exact_bytes(make_plc: PlcFactory) -> None:
    plc, sim = make_plc()
    output = plc.reject_output()

    output.pulse_start(17)
    output.pulse_end(17)
    output.pulse_start(18)

    assert sim.received_bytes() == b"REJ 17\nREJ 18\n"
    assert [part_id for _, part_id in sim.rejects] == [17, 18]
    assert plc.counters.commands == 2
    assert plc.counters.retries == 0


def test_reject_custom_template(make_plc: PlcFactory) -> None:
    plc, sim = make_plc(reject_template="REJ {part_id:06d}\r\n")

    plc.reject_output().pulse_start(42)

    assert sim.received_bytes() == b"REJ 000042\r\n"
    assert [part_id for _, part_id in sim.rejects] == [42]


def test_command_waits_for_ack(make_plc: PlcFactory) -> None:
    plc, sim = make_plc(reply_timeout_ms=500)
    sim.reply_delay_ms = 80.0

    started_ns = time.monotonic_ns()
    reply = plc.send_command("REJ 3\n")
    returned_ns = time.monotonic_ns()

    assert reply == "OK"
    # The simulated PLC records the reject before it sends the acknowledgement.
    assert len(sim.rejects) == 1
    assert started_ns < sim.rejects[0][0] < returned_ns
    assert returned_ns - started_ns >= 80_000_000


def test_error_reply_retried(make_plc: PlcFactory) -> None:
    plc, sim = make_plc(retries=1)
    sim.fail_next(1)

    plc.reject_output().pulse_start(7)

    assert sim.received_bytes() == b"REJ 7\nREJ 7\n"
    assert [part_id for _, part_id in sim.rejects] == [7]
    assert plc.counters.retries == 1
    assert plc.counters.error_replies == 1
    assert plc.counters.failures == 0


def test_error_reply_exhausts_retries(make_plc: PlcFactory) -> None:
    plc, sim = make_plc(retries=2)
    sim.fail_next(3)

    with pytest.raises(DeviceReplyError, match="ERR busy"):
        plc.reject_output().pulse_start(9)

    assert sim.received_bytes() == b"REJ 9\n" * 3
    assert sim.rejects == []
    assert plc.counters.retries == 2
    assert plc.counters.failures == 1


def test_unknown_command_error_line(make_plc: PlcFactory) -> None:
    plc, sim = make_plc(retries=0)

    with pytest.raises(DeviceReplyError, match="ERR unknown"):
        plc.send_command("LIGHT ON\n")

    assert sim.received_bytes() == b"LIGHT ON\n"


def test_silent_plc_times_out(make_plc: PlcFactory) -> None:
    plc, sim = make_plc(retries=2, reply_timeout_ms=50)
    sim.silent.set()

    with pytest.raises(DeviceTimeout, match="no reply"):
        plc.reject_output().pulse_start(5)

    assert sim.received_bytes() == b"REJ 5\n" * 3
    assert plc.counters.retries == 2
    assert plc.counters.reply_timeouts == 3
    assert plc.counters.failures == 1
    described = plc.describe()
    assert described["failures"] == 1
    assert described["link"]["device"] == "PLC"


def test_plc_answers_after_silence(make_plc: PlcFactory) -> None:
    plc, sim = make_plc(retries=0, reply_timeout_ms=50)
    sim.silent.set()
    with pytest.raises(DeviceTimeout):
        plc.send_command("REJ 1\n")

    sim.silent.clear()

    assert plc.send_command("REJ 2\n") == "OK"
    assert [part_id for _, part_id in sim.rejects] == [2]


def test_triggers_in_order_with_gap(make_plc: PlcFactory) -> None:
    plc, sim = make_plc()

    sent = [sim.present_part(), sim.present_part(), sim.present_part(sequence=7), sim.present_part()]
    events = [plc.next_trigger(WAIT_S) for _ in sent]

    assert [event.sequence for event in events] == [1, 2, 7, 8]
    for (_, sent_ns), event in zip(sent, events):
        assert event.monotonic_ns >= sent_ns
    assert plc.next_trigger(0.05) is None
    assert plc.counters.triggers == 4


def test_trigger_without_sequence(make_plc: PlcFactory) -> None:
    plc, sim = make_plc(trigger_pattern=r"^PART\b")

    sim.present_part()
    event = plc.next_trigger(WAIT_S)

    assert isinstance(event, TriggerEvent)
    assert event.sequence is None
    assert plc.counters.unknown_lines == 0


def test_trigger_queue_overflow(make_plc: PlcFactory) -> None:
    plc, sim = make_plc(trigger_queue_size=2)

    for _ in range(4):
        sim.present_part()
    assert wait_until(lambda: plc.counters.triggers == 4)

    assert plc.next_trigger(0.0).sequence == 3
    assert plc.next_trigger(0.0).sequence == 4
    assert plc.next_trigger(0.0) is None
    assert plc.counters.trigger_overflow == 2


def test_encoder_updates_advance(make_plc: PlcFactory) -> None:
    plc, _ = make_plc(conveyor=Conveyor(speed_counts_per_s=10_000.0))

    assert wait_until(lambda: plc.encoder_counts() is not None)
    first_counts, first_ns = plc.encoder_counts()
    assert wait_until(lambda: plc.encoder_counts()[0] > first_counts)
    second_counts, second_ns = plc.encoder_counts()

    assert second_ns > first_ns
    assert plc.counters.encoder_updates >= 2
    assert plc.counters.unknown_lines == 0


def test_encoder_none_before_reading(make_plc: PlcFactory) -> None:
    plc, _ = make_plc()

    assert plc.encoder_counts() is None


def test_unknown_lines_counted(make_plc: PlcFactory) -> None:
    plc, sim = make_plc()

    sim.send(b"HELLO\n")
    sim.send(b"PART x\r\n")
    sim.send(b"\n")
    sim.present_part()

    assert plc.next_trigger(WAIT_S).sequence == 1
    assert plc.counters.unknown_lines == 2


def test_overlong_line_dropped(make_plc: PlcFactory) -> None:
    plc, sim = make_plc()

    sim.send(b"X" * 2000)
    assert wait_until(lambda: plc.counters.unknown_lines == 1)
    sim.send(b"\n")
    sim.present_part()

    assert plc.next_trigger(WAIT_S).sequence == 1


def test_late_ack_counted(make_plc: PlcFactory) -> None:
    plc, sim = make_plc()

    sim.send(b"OK\n")

    assert wait_until(lambda: plc.counters.late_replies == 1)


def test_lines_interleave_with_ack(make_plc: PlcFactory) -> None:
    conveyor = Conveyor(speed_counts_per_s=10_000.0)
    plc, sim = make_plc(conveyor=conveyor, encoder_interval_ms=5.0, reply_timeout_ms=2000)
    assert wait_until(lambda: plc.encoder_counts() is not None)
    # Long enough that the triggers below arrive while the command still waits for its ack.
    sim.reply_delay_ms = 600.0
    results: list[str] = []

    worker = threading.Thread(target=lambda: results.append(plc.send_command("REJ 11\n")))
    worker.start()
    assert wait_until(lambda: b"REJ 11\n" in sim.received_bytes())
    updates_before_ack = plc.counters.encoder_updates
    for _ in range(3):
        sim.present_part()
    events = [plc.next_trigger(WAIT_S) for _ in range(3)]
    encoder_advanced = wait_until(lambda: plc.counters.encoder_updates >= updates_before_ack + 3, timeout_s=0.3)
    acked_while_lines_read = bool(results)
    worker.join(timeout=WAIT_S)

    assert not acked_while_lines_read
    assert [event.sequence for event in events] == [1, 2, 3]
    assert encoder_advanced
    assert results == ["OK"]
    assert [part_id for _, part_id in sim.rejects] == [11]
    assert plc.counters.retries == 0
    assert plc.counters.unknown_lines == 0


def test_recovers_after_replug(make_plc: PlcFactory, tmp_path: Path) -> None:
    plc, sim = make_plc(alias=tmp_path / "plc", retries=0, reply_timeout_ms=100)
    sim.present_part()
    assert plc.next_trigger(WAIT_S).sequence == 1
    first_device = sim.device_path

    new_device = sim.replug()

    def trigger_arrives() -> bool:
        sim.present_part()
        return plc.next_trigger(0.1) is not None

    assert wait_until(trigger_arrives, timeout_s=3.0)
    assert plc.send_command("REJ 4\n") == "OK"
    link = plc.describe()["link"]
    assert new_device != first_device
    assert link["open_path"] == str(tmp_path / "plc")
    assert link["opens"] >= 2
    assert plc.counters.read_errors >= 1


def test_command_when_closed(make_plc: PlcFactory) -> None:
    plc, _ = make_plc()
    plc.close()

    with pytest.raises(LineIOError, match="not open"):
        plc.send_command("REJ 1\n")
    plc.close()


def test_reject_output_opens_plc(make_plc: PlcFactory) -> None:
    plc, sim = make_plc()
    plc.close()
    output = plc.reject_output()

    output.open()
    output.pulse_start(2)
    output.close()

    assert sim.received_bytes() == b"REJ 2\n"
    assert not plc.is_open


def test_command_line_end_checked(make_plc: PlcFactory) -> None:
    plc, sim = make_plc()

    with pytest.raises(ValueError, match="line end"):
        plc.send_command("REJ 1")
    with pytest.raises(ValueError, match="more than one line end"):
        plc.send_command("REJ 1\nREJ 2\n")
    assert sim.received_bytes() == b""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reject_template": "REJ {part}\n"}, r"field \{part\}"),
        ({"reject_template": "REJ {}\n"}, r"field \{\}"),
        ({"reject_template": "REJ {part_id.real}\n"}, r"field \{part_id.real\}"),
        ({"reject_template": "REJ {part_id\n"}, "not a valid format string"),
        ({"reject_template": "REJ {part_id:q}\n"}, "cannot be formatted"),
        ({"reject_template": "REJ {part_id}"}, "does not end with the line end"),
        ({"reject_template": "REJ {part_id}\u00e9\n"}, "non-ASCII"),
        ({"ack_pattern": "^(OK$"}, "ack_pattern .* not a valid regular expression"),
        ({"error_pattern": ".*"}, "error_pattern .* matches an empty line"),
        ({"trigger_pattern": "[PART"}, "trigger_pattern .* not a valid regular expression"),
        ({"encoder_pattern": r"^ENC (\d+)$"}, "no named group 'counts'"),
        ({"line_end": ""}, "line_end"),
        ({"reply_timeout_ms": 0}, "reply_timeout_ms"),
        ({"retries": -1}, "retries"),
        ({"trigger_queue_size": 0}, "trigger_queue_size"),
    ],
)
def test_invalid_options(options: dict, message: str) -> None:
    link = SerialLink(SerialSettings(port="/dev/null-plc"), "PLC")

    with pytest.raises(ValueError, match=message):
        AsciiPlc(link, **options)


def test_open_missing_port(tmp_path: Path) -> None:
    plc = AsciiPlc(SerialLink(SerialSettings(port=str(tmp_path / "missing")), "PLC"))

    with pytest.raises(LineIOError, match="cannot open"):
        plc.open()
    assert not plc.is_open
