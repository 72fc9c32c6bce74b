"""The daemon against simulated light controller, PLC and relay board on pseudo-terminals."""

from __future__ import annotations

import json
import time

import pytest

from edge.lineio.simulated.ascii_plc import SimulatedAsciiPlc
from edge.lineio.simulated.light import SimulatedLightController
from edge.pipeline import build_pipeline
from tests.integration.line_devices import (
    FAST_SERIAL,
    PatternSource,
    ascii_plc_io,
    line_config,
    present,
    rejected_ids,
    start,
)
from tests.integration.subscriber import Collector, free_tcp_endpoint
from tests.integration.test_pipeline import slow_down


@pytest.fixture
def ascii_plc(tmp_path):
    with SimulatedAsciiPlc(alias=tmp_path / "plc") as plc:
        yield plc


def test_ascii_rejects_in_order(brightness_package, ascii_plc):
    endpoint = free_tcp_endpoint()
    config = line_config(brightness_package, endpoint, ascii_plc_io(ascii_plc.port), max_parts=8)
    pipeline = build_pipeline(config, PatternSource(bright={2, 3, 7}))
    with Collector(endpoint) as collector:
        thread, holder = start(pipeline)
        present(ascii_plc, 8)
        thread.join(timeout=10)
        collector.wait_for_results(8, timeout_s=3)

    assert sorted(result["part_id"] for result in collector.results) == list(range(1, 9))
    assert rejected_ids(collector.results) == [2, 3, 7]
    assert ascii_plc.received_bytes() == b"REJ 2\nREJ 3\nREJ 7\n"
    reject_status = holder["summary"]["line_io"]["reject"]
    assert reject_status["counters"]["pulses"] == 3
    assert reject_status["counters"]["late"] == 0


def test_stalled_inference_late_rejects(brightness_package, ascii_plc):
    endpoint = free_tcp_endpoint()
    config = line_config(brightness_package, endpoint, ascii_plc_io(ascii_plc.port, delay_ms=60), max_parts=3)
    pipeline = build_pipeline(config, PatternSource(bright=set()))
    slow_down(pipeline, 0.4)
    with Collector(endpoint) as collector:
        thread, holder = start(pipeline)
        present(ascii_plc, 3, spacing_s=0.02)
        thread.join(timeout=15)
        collector.wait_for_results(3, timeout_s=3)
        collector.wait_quiet(0.3)

    assert len(collector.results) == 3  # each part once, though inspection finished later
    assert {result["reason"] for result in collector.results} == {"late"}
    assert ascii_plc.received_bytes() == b"REJ 1\nREJ 2\nREJ 3\n"
    assert holder["summary"]["rejected_by_reason"]["late"] == 3


def test_missed_trigger_is_rejected(brightness_package, ascii_plc):
    endpoint = free_tcp_endpoint()
    config = line_config(brightness_package, endpoint, ascii_plc_io(ascii_plc.port), max_parts=3)
    pipeline = build_pipeline(config, PatternSource(bright=set()))
    with Collector(endpoint) as collector:
        thread, holder = start(pipeline)
        ascii_plc.present_part(sequence=1)
        time.sleep(0.03)
        ascii_plc.present_part(sequence=3)
        thread.join(timeout=10)
        collector.wait_for_results(3, timeout_s=3)

    reasons = {result["part_id"]: result["reason"] for result in collector.results}
    assert reasons == {1: None, 2: "missed_trigger", 3: None}
    assert ascii_plc.received_bytes() == b"REJ 2\n"
    assert holder["summary"]["line_io"]["counters"]["missed_triggers"] == 1


def test_unconfirmed_light_rejects_parts(brightness_package, ascii_plc, tmp_path):
    with SimulatedLightController("gardasoft", alias=tmp_path / "light") as light:
        light.silent.set()
        line_io = ascii_plc_io(ascii_plc.port)
        line_io["light"] = {
            "serial": {"port": light.port, **FAST_SERIAL},
            "recipe": "bottle",
            "recipes": {"bottle": [{"channel": 1, "percent": 80}]},
        }
        endpoint = free_tcp_endpoint()
        config = line_config(brightness_package, endpoint, line_io, max_parts=3)
        pipeline = build_pipeline(config, PatternSource(bright=set()))
        with Collector(endpoint) as collector:
            thread, holder = start(pipeline)
            present(ascii_plc, 3)
            thread.join(timeout=10)
            collector.wait_for_results(3, timeout_s=3)

    assert [result["reason"] for result in sorted(collector.results, key=lambda r: r["part_id"])] == ["light_fault"] * 3
    assert ascii_plc.received_bytes() == b"REJ 1\nREJ 2\nREJ 3\n"
    assert holder["summary"]["line_io"]["light"]["confirmed"] is False


def test_light_recipe_bytes_and_confirmation(brightness_package, ascii_plc, tmp_path):
    with SimulatedLightController("gardasoft", alias=tmp_path / "light") as light:
        line_io = ascii_plc_io(ascii_plc.port)
        line_io["light"] = {
            "serial": {"port": light.port, **FAST_SERIAL},
            "recipe": "bottle",
            "recipes": {"bottle": [{"channel": 1, "percent": 80}, {"channel": 2, "mode": "pulse", "percent": 100,
                                                                   "pulse_width_ms": 5, "pulse_delay_ms": 0.5}]},
        }
        config = line_config(brightness_package, free_tcp_endpoint(), line_io, max_parts=2)
        pipeline = build_pipeline(config, PatternSource(bright=set()))
        thread, holder = start(pipeline)
        present(ascii_plc, 2)
        thread.join(timeout=10)

    assert light.commands[:2] == [b"RS1,80\r", b"RT2,5,0.5,100\r"]
    assert holder["summary"]["counters"]["pass"] == 2
    assert holder["summary"]["line_io"]["light"]["confirmed"] is True


def test_plc_replug_recovers(brightness_package, ascii_plc):
    endpoint = free_tcp_endpoint()
    config = line_config(brightness_package, endpoint, ascii_plc_io(ascii_plc.port, delay_ms=80), max_parts=40)
    pipeline = build_pipeline(config, PatternSource(bright=set(range(1, 100))))
    with Collector(endpoint) as collector:
        thread, holder = start(pipeline)
        present(ascii_plc, 2)
        time.sleep(0.2)
        old_name = ascii_plc.device_path
        new_name = ascii_plc.replug()
        assert new_name != old_name
        # Parts announced until the station has the port back are not seen; then it recovers.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(collector.results) < 5:
            ascii_plc.present_part()
            time.sleep(0.05)
        pipeline.request_stop()
        thread.join(timeout=10)

    rejected_after_replug = [part_id for _, part_id in ascii_plc.rejects if part_id > 2]
    assert rejected_after_replug, "no reject reached the PLC after it came back"
    assert holder["summary"]["line_io"]["plc"]["link"]["opens"] >= 2


def run_demo_cli(capsys, *options: str) -> tuple[int, dict]:
    from edge.cli import main

    code = main(["demo", "--json", *options])
    return code, json.loads(capsys.readouterr().out)


def test_demo_pulses_every_reject(capsys):
    code, summary = run_demo_cli(capsys, "--parts", "500")

    assert code == 0
    assert summary["parts"] == summary["presented"] == 500
    assert summary["lost"] == 0
    assert summary["plc_reject_pulses"] == summary["fail"] + sum(summary["rejected"].values())
    assert summary["fail"] > 0
    assert summary["model"] == "demo-reference@1"


def test_demo_light_fault_ascii_ccs(capsys):
    code, summary = run_demo_cli(capsys, "--parts", "60", "--plc", "ascii", "--light", "ccs",
                                 "--light-fault-at", "20", "--light-fault-parts", "10")

    assert code == 0
    assert summary["rejected"].get("light_fault", 0) > 0
    assert summary["plc_reject_pulses"] == summary["fail"] + sum(summary["rejected"].values())
    assert summary["lost"] == 0


COIL_ON = bytes.fromhex("01050013FF007DFF")  # published example frame: write coil 0x13 on
COIL_OFF = bytes.fromhex("0105001300003C0F")


def modbus_plc_io(port: str, **modbus) -> dict:
    return {
        "plc": {"serial": {"port": port, **FAST_SERIAL}, "protocol": "modbus_rtu",
                "modbus": {"reject_address": 0x13, "part_counter_address": 102, "poll_interval_ms": 2, **modbus}},
        "reject": {"output": "plc", "timing": "delay", "delay_ms": 120, "pulse_width_ms": 10},
        "trigger": {"mode": "plc", "frame_timeout_ms": 200},
    }


def test_modbus_coil_pulses_exact_frames(brightness_package, tmp_path):
    from edge.lineio.simulated.modbus_plc import SimulatedModbusPlc

    with SimulatedModbusPlc(alias=tmp_path / "plc") as plc:
        endpoint = free_tcp_endpoint()
        config = line_config(brightness_package, endpoint, modbus_plc_io(plc.port), max_parts=5)
        pipeline = build_pipeline(config, PatternSource(bright={2, 5}))
        with Collector(endpoint) as collector:
            thread, holder = start(pipeline)
            time.sleep(0.05)  # the first poll records the starting count
            present(plc, 5, spacing_s=0.04)
            thread.join(timeout=10)
            collector.wait_for_results(5, timeout_s=3)
        coil_frames = [frame for frame in plc.frames if frame[1] == 0x05]

    assert rejected_ids(collector.results) == [2, 5]
    # Off when the output opens (ending a pulse a crash may have left on), then on/off per reject.
    assert coil_frames == [COIL_OFF, COIL_ON, COIL_OFF, COIL_ON, COIL_OFF]
    assert [on for _, address, on in plc.coil_writes] == [False, True, False, True, False]
    assert holder["summary"]["line_io"]["reject"]["counters"]["pulses"] == 2


def test_modbus_register_encoder_timing(brightness_package, tmp_path):
    from edge.lineio.simulated.conveyor import Conveyor
    from edge.lineio.simulated.modbus_plc import SimulatedModbusPlc

    conveyor = Conveyor(speed_counts_per_s=10000)
    with SimulatedModbusPlc(alias=tmp_path / "plc", conveyor=conveyor) as plc:
        line_io = modbus_plc_io(plc.port, reject_kind="register", on_value=7, encoder_address=100, latch_address=103)
        line_io["reject"] = {"output": "plc", "timing": "encoder", "distance_counts": 1500, "pulse_width_ms": 10}
        config = line_config(brightness_package, free_tcp_endpoint(), line_io, max_parts=3)
        pipeline = build_pipeline(config, PatternSource(bright={1, 2, 3}))
        thread, holder = start(pipeline)
        time.sleep(0.05)
        presented_ns = []
        for _ in range(3):
            presented_ns.append(plc.present_part()[1])
            time.sleep(0.05)
        thread.join(timeout=10)

    on_writes = [at for at, address, value in plc.register_writes if address == 0x13 and value == 7]
    assert len(on_writes) == 3
    for on_ns, part_ns in zip(on_writes, presented_ns):
        # 1500 counts at 10000 counts/s: 150 ms after the sensor saw the part.
        assert (on_ns - part_ns) / 1e6 == pytest.approx(150.0, abs=10.0)
    assert holder["summary"]["line_io"]["reject"]["counters"]["late"] == 0


def test_relay_software_trigger(brightness_package, tmp_path):
    from edge.lineio.simulated.relay_board import SimulatedRelayBoard

    with SimulatedRelayBoard(alias=tmp_path / "relay") as relay, \
            SimulatedLightController("gardasoft", alias=tmp_path / "light") as light:
        line_io = {
            "light": {"serial": {"port": light.port, **FAST_SERIAL}, "recipe": "strobe", "trigger_channel": 1,
                      "recipes": {"strobe": [{"channel": 1, "mode": "pulse", "percent": 100, "pulse_width_ms": 2}]}},
            "relay": {"serial": {"port": relay.port, **FAST_SERIAL}, "channel": 2},
            "reject": {"output": "relay", "timing": "delay", "delay_ms": 50, "pulse_width_ms": 10},
            "trigger": {"mode": "software", "period_ms": 40},
        }
        config = line_config(brightness_package, free_tcp_endpoint(), line_io, max_parts=4)
        pipeline = build_pipeline(config, PatternSource(bright={3}))
        thread, holder = start(pipeline)
        thread.join(timeout=10)

    assert light.triggers(1) == 4
    assert relay.received_bytes() == bytes.fromhex("A00200A2" "A00201A3" "A00200A2" "A00200A2")
    assert holder["summary"]["counters"]["fail"] == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rate", "500"], "at most 100"),
        (["--parts", "20", "--light-fault-at", "25"], "after the last of 20 parts"),
        (["--light-fault-parts", "3"], "needs --light-fault-at"),
        (["--parts", "3", "--model", "/nonexistent/model"], "not found"),
    ],
)
def test_demo_bad_options(capsys, options, message):
    from edge.cli import main

    assert main(["demo", *options]) != 0
    assert message in capsys.readouterr().err


def test_check_config_finds_shared_port(brightness_package, tmp_path, capsys):
    from edge.cli import main

    port = tmp_path / "ttyUSB0"
    port.touch()
    config_file = tmp_path / "station.yaml"
    config_file.write_text(
        f"model: {{path: {brightness_package}}}\n"
        "line_io:\n"
        f"  light: {{serial: {{port: {port}}}, recipe: a, recipes: {{a: [{{channel: 1}}]}}}}\n"
        f"  plc: {{serial: {{port: {port}}}, protocol: ascii}}\n"
        "  reject: {output: plc}\n"
    )
    assert main(["check-config", str(config_file)]) != 0
    assert "also the port of line_io.light" in capsys.readouterr().err
