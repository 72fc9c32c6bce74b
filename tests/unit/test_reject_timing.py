"""Reject scheduler: pulses in capture order, at the ejector, late parts, merged pulses, encoder timing."""

from __future__ import annotations

import time

import pytest

from edge.config import RejectConfig
from edge.lineio.base import LineIOError, PlcInput, RejectOutput, TriggerEvent
from edge.lineio.reject_timing import EncoderClock, RejectScheduler
from edge.parts import Frame, Part, Verdict


class RecordingOutput(RejectOutput):
    """A reject output that records when it was switched, and can be made to fail."""

    name = "recording"

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []
        self.fail = False

    def pulse_start(self, part_id: int) -> None:
        if self.fail:
            raise LineIOError("output unplugged")
        self.events.append(("on", part_id, time.monotonic_ns()))

    def pulse_end(self, part_id: int) -> None:
        self.events.append(("off", part_id, time.monotonic_ns()))


class ConveyorInput(PlcInput):
    """A PLC input whose encoder counts at a fixed speed."""

    def __init__(self, counts_per_s: float) -> None:
        self.counts_per_s = counts_per_s
        self.start_ns = time.monotonic_ns()

    def next_trigger(self, timeout_s: float) -> TriggerEvent | None:
        return None

    def encoder_counts(self) -> tuple[int, int]:
        now_ns = time.monotonic_ns()
        return int((now_ns - self.start_ns) * self.counts_per_s / 1e9), now_ns


def make_part(part_id: int, verdict: Verdict | None) -> Part:
    part = Part(part_id=part_id, frame=Frame.now(None))
    part.verdict = verdict
    part.finished = verdict is not None
    return part


def settle(part: Part) -> tuple[bool, bool]:
    if part.verdict is None:
        return True, True
    return part.verdict is not Verdict.PASS, False


def run_parts(config: RejectConfig, verdicts: list[Verdict | None], spacing_ms: float, output=None):
    output = output or RecordingOutput()
    scheduler = RejectScheduler(config, output, settle)
    scheduler.start()
    registered_ns = []
    for part_id, verdict in enumerate(verdicts, start=1):
        now_ns = time.monotonic_ns()
        registered_ns.append(now_ns)
        scheduler.register(make_part(part_id, verdict), now_ns)
        time.sleep(spacing_ms / 1000)
    scheduler.stop(timeout_s=2.0)
    return output, scheduler, registered_ns


def test_pulses_failed_and_rejected_parts_in_order():
    config = RejectConfig(output="plc", delay_ms=30, pulse_width_ms=5)
    verdicts = [Verdict.PASS, Verdict.FAIL, Verdict.REJECT, Verdict.PASS, Verdict.FAIL]
    output, scheduler, _ = run_parts(config, verdicts, spacing_ms=15)

    starts = [part_id for kind, part_id, _ in output.events if kind == "on"]
    assert starts == [2, 3, 5]
    assert [kind for kind, _, _ in output.events].count("off") == 3
    status = scheduler.describe()
    assert status["counters"]["pulses"] == 3
    assert status["counters"]["passed"] == 2
    assert status["timing_error_ms"]["count"] == 3


def test_pulse_at_delay_after_capture():
    config = RejectConfig(output="plc", delay_ms=40, pulse_width_ms=5)
    output, _, registered_ns = run_parts(config, [Verdict.FAIL], spacing_ms=0)

    on_ns = next(at for kind, _, at in output.events if kind == "on")
    off_ns = next(at for kind, _, at in output.events if kind == "off")
    assert (on_ns - registered_ns[0]) / 1e6 >= 40
    assert (off_ns - on_ns) / 1e6 >= 5


def test_part_without_verdict_is_late_and_rejected():
    config = RejectConfig(output="plc", delay_ms=10, pulse_width_ms=5)
    output, scheduler, _ = run_parts(config, [None], spacing_ms=0)

    assert [part_id for kind, part_id, _ in output.events if kind == "on"] == [1]
    assert scheduler.describe()["counters"]["late"] == 1
    assert scheduler.describe()["pulses"][0]["late"] is True


def test_close_parts_merge_into_one_longer_pulse():
    config = RejectConfig(output="plc", delay_ms=20, pulse_width_ms=40)
    output, scheduler, _ = run_parts(config, [Verdict.FAIL, Verdict.FAIL], spacing_ms=10)

    kinds = [kind for kind, _, _ in output.events]
    assert kinds == ["on", "on", "off"]
    assert scheduler.describe()["counters"]["merged_pulses"] == 1


def test_failed_pulse_is_counted_and_next_part_served():
    output = RecordingOutput()
    output.fail = True
    config = RejectConfig(output="plc", delay_ms=10, pulse_width_ms=5)
    scheduler = RejectScheduler(config, output, settle)
    scheduler.start()
    scheduler.register(make_part(1, Verdict.FAIL), time.monotonic_ns())
    time.sleep(0.05)
    output.fail = False
    scheduler.register(make_part(2, Verdict.FAIL), time.monotonic_ns())
    scheduler.stop(timeout_s=2.0)

    assert [part_id for kind, part_id, _ in output.events if kind == "on"] == [2]
    assert scheduler.describe()["counters"]["pulse_failures"] == 1


def test_settle_error_still_rejects():
    def broken_settle(part: Part) -> tuple[bool, bool]:
        raise RuntimeError("publisher gone")

    output = RecordingOutput()
    scheduler = RejectScheduler(RejectConfig(output="plc", delay_ms=5, pulse_width_ms=5), output, broken_settle)
    scheduler.start()
    scheduler.register(make_part(1, Verdict.PASS), time.monotonic_ns())
    scheduler.stop(timeout_s=2.0)
    assert [kind for kind, _, _ in output.events] == ["on", "off"]


def test_encoder_timing_fires_after_the_distance():
    plc = ConveyorInput(counts_per_s=10000)
    clock = EncoderClock(plc)
    config = RejectConfig(output="plc", timing="encoder", distance_counts=300, pulse_width_ms=5)
    output = RecordingOutput()
    scheduler = RejectScheduler(config, output, settle, encoder=clock)
    scheduler.start()
    time.sleep(0.02)  # two readings give the speed
    registered_ns = time.monotonic_ns()
    scheduler.register(make_part(1, Verdict.FAIL), registered_ns)
    scheduler.stop(timeout_s=2.0)

    on_ns = next(at for kind, _, at in output.events if kind == "on")
    assert (on_ns - registered_ns) / 1e6 == pytest.approx(30.0, abs=10.0)


def test_stop_serves_parts_in_transit():
    config = RejectConfig(output="plc", delay_ms=50, pulse_width_ms=5)
    output = RecordingOutput()
    scheduler = RejectScheduler(config, output, settle)
    scheduler.start()
    scheduler.register(make_part(1, Verdict.FAIL), time.monotonic_ns())
    scheduler.stop(timeout_s=2.0)
    assert [kind for kind, _, _ in output.events] == ["on", "off"]


def test_stop_timeout_abandons_parts():
    config = RejectConfig(output="plc", delay_ms=5000, pulse_width_ms=5)
    scheduler = RejectScheduler(config, RecordingOutput(), settle)
    scheduler.start()
    scheduler.register(make_part(1, Verdict.FAIL), time.monotonic_ns())
    scheduler.stop(timeout_s=0.1)
    assert scheduler.describe()["counters"]["abandoned"] == 1


def test_encoder_timing_needs_clock():
    with pytest.raises(ValueError, match="EncoderClock"):
        RejectScheduler(RejectConfig(output="plc", timing="encoder", distance_counts=10), RecordingOutput(), settle)
