"""A whole simulated line in one process: camera, light controller, PLC with encoder, daemon.

`run_demo` starts a simulated light controller and a simulated PLC on pseudo-terminals. A
simulated camera renders the parts, and its brightness follows the light controller. The real
daemon pipeline runs against them: the PLC announces each part, and the daemon inspects it and
pulses the PLC's reject output when the part reaches the ejector. The summary is taken from the
PLC's side: the pulses it received, their timing error against the conveyor, and parts that got
no result.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
import zmq

from edge.acquisition.synthetic import SyntheticSource
from edge.config import validate_config
from edge.lineio.simulated.conveyor import Conveyor
from edge.pipeline import build_pipeline
from edge.publish.messages import decode_result

log = structlog.get_logger(__name__)

DEMO_MODEL = Path(__file__).resolve().parent / "model"
LIGHT_CHANNEL = 1
LIGHT_PERCENT = 80.0
CONVEYOR_COUNTS_PER_S = 10000.0
# Encoder counts from the camera to the ejector: half a second of belt travel.
EJECTOR_DISTANCE_COUNTS = 5000
# Maximum time to wait, after the last part was presented, for the daemon to publish every part.
SETTLE_S = 5.0
# The simulated PLC is polled every 2 ms. Above this rate its part counter often moves by more
# than one between two polls, so the extra parts become missed_trigger rejects.
MAX_RATE_PPS = 100.0
SIMULATED_PLC_PRIORITY = 20
REJECT_COIL = 0x13
ENCODER_REGISTER = 100
PART_COUNTER_REGISTER = 102
LATCH_REGISTER = 103
BAUDRATE = 115200


@dataclass(frozen=True)
class DemoOptions:
    parts: int = 100
    rate_pps: float = 20.0
    model: Path | None = None
    plc_protocol: str = "modbus_rtu"
    light_protocol: str = "gardasoft"
    defect_rate: float = 0.3
    seed: int = 0
    endpoint: str | None = None
    # Part number at which the light controller loses power, and for how many parts.
    light_fault_at: int | None = None
    light_fault_parts: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.rate_pps <= MAX_RATE_PPS:
            raise ValueError(f"rate {self.rate_pps:g} parts/s is out of range; use above 0 and at most {MAX_RATE_PPS:g} "
                             "(the simulated PLC is polled every 2 ms)")
        if self.light_fault_at is not None and self.light_fault_at > self.parts:
            raise ValueError(f"the light fault at part {self.light_fault_at} comes after the last of {self.parts} parts; "
                             "lower it or run more parts")


class DemoError(RuntimeError):
    """The simulated line could not run; the message gives the reason."""


class LineHmi:
    """A subscriber like a line HMI: keeps every result header the daemon publishes."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.results: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="demo-hmi", daemon=True)

    def start(self) -> LineHmi:
        self._thread.start()
        return self

    def stop(self, quiet_s: float = 0.5) -> None:
        """Wait until no result arrived for `quiet_s`, then stop."""
        count = -1
        while count != len(self.results):
            count = len(self.results)
            time.sleep(quiet_s)
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _receive(self) -> None:
        context = zmq.Context.instance()
        subscriber = context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.LINGER, 0)
        subscriber.setsockopt(zmq.RCVHWM, 100000)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"result.")
        subscriber.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if subscriber.poll(50):
                    _, header, _ = decode_result(subscriber.recv_multipart())
                    self.results.append(header)
        finally:
            subscriber.close()


def demo_config(options: DemoOptions, light_port: str, plc_port: str, endpoint: str) -> dict:
    """Build the daemon configuration of the simulated line, as a user would write it in YAML."""
    serial = {"baudrate": BAUDRATE, "reply_timeout_ms": 100, "retries": 1, "reopen_backoff_s": [0.1, 0.5]}
    plc: dict = {"serial": {"port": plc_port, **serial}, "protocol": options.plc_protocol}
    if options.plc_protocol == "modbus_rtu":
        plc["modbus"] = {
            "unit_id": 1,
            "reject_kind": "coil",
            "reject_address": REJECT_COIL,
            "encoder_address": ENCODER_REGISTER,
            "part_counter_address": PART_COUNTER_REGISTER,
            "latch_address": LATCH_REGISTER,
            "poll_interval_ms": 2.0,
        }
    return {
        "station": {"line": "demo", "station": "simulated"},
        "source": {"kind": "synthetic", "synthetic_defect_rate": options.defect_rate, "synthetic_seed": options.seed},
        "model": {"path": str(options.model or DEMO_MODEL)},
        "inference": {"intra_op_num_threads": 1},
        "pipeline": {"max_parts": options.parts},
        "publish": {"endpoint": endpoint, "subscriber_grace_ms": 300},
        "logging": {"level": "warning"},
        "line_io": {
            "light": {
                "serial": {"port": light_port, **serial},
                "protocol": options.light_protocol,
                "recipe": "demo",
                "recipes": {"demo": [{"channel": LIGHT_CHANNEL, "mode": "continuous", "percent": LIGHT_PERCENT}]},
                "check_interval_s": 0.5,
            },
            "plc": plc,
            "reject": {"output": "plc", "timing": "encoder", "distance_counts": EJECTOR_DISTANCE_COUNTS, "pulse_width_ms": 20.0},
            "trigger": {"mode": "plc", "frame_timeout_ms": 200},
        },
    }


def run_demo(options: DemoOptions, stop: threading.Event | None = None) -> dict:
    """Run the simulated line for `options.parts` parts and return the summary.

    Setting `stop` (from a signal handler, for example) ends the run early; the summary then
    covers the parts presented until then.
    """
    stop = stop or threading.Event()
    from edge.lineio.simulated.light import SimulatedLightController

    with tempfile.TemporaryDirectory(prefix="edge-demo-") as folder:
        folder_path = Path(folder)
        conveyor = Conveyor(CONVEYOR_COUNTS_PER_S)
        light = SimulatedLightController(options.light_protocol, alias=folder_path / "light").start()
        plc = _start_plc(options.plc_protocol, folder_path / "plc", conveyor)
        try:
            endpoint = options.endpoint or f"ipc://{folder_path / 'results.sock'}"
            config = validate_config(demo_config(options, light.port, plc.port, endpoint), source_name="<demo>",
                                     option_names={"publish.endpoint": "--endpoint", "model.path": "--model"})
            source = SyntheticSource(
                config.source, illumination=lambda: light.intensity_percent(LIGHT_CHANNEL) / LIGHT_PERCENT
            )
            pipeline = build_pipeline(config, source)
            hmi = LineHmi(endpoint).start()
            summary = _run_line(options, pipeline, light, plc, conveyor, stop)
            hmi.stop()
            return {**summary, **_ground_truth(hmi.results)}
        finally:
            plc.stop()
            light.stop()


def _start_plc(protocol: str, alias: Path, conveyor: Conveyor):
    if protocol == "modbus_rtu":
        from edge.lineio.simulated.modbus_plc import SimulatedModbusPlc

        plc = SimulatedModbusPlc(
            unit_id=1, alias=alias, conveyor=conveyor,
            encoder_address=ENCODER_REGISTER, part_counter_address=PART_COUNTER_REGISTER, latch_address=LATCH_REGISTER,
        )
    else:
        from edge.lineio.simulated.ascii_plc import SimulatedAsciiPlc

        plc = SimulatedAsciiPlc(alias=alias, conveyor=conveyor, encoder_interval_ms=5.0)
    # The simulated PLC plays the part of separate hardware, so its clock readings must not wait on the daemon's load.
    plc.realtime_priority = SIMULATED_PLC_PRIORITY
    return plc.start()


def _run_line(options: DemoOptions, pipeline, light, plc, conveyor: Conveyor, stop: threading.Event) -> dict:
    summary: dict = {}
    failure: list[BaseException] = []

    def run_pipeline() -> None:
        try:
            summary.update(pipeline.run())
        except BaseException as error:  # reported to the caller below
            failure.append(error)
            pipeline.capture_started.set()

    runner = threading.Thread(target=run_pipeline, name="demo-pipeline", daemon=True)
    started_s = time.monotonic()
    runner.start()
    if not pipeline.capture_started.wait(timeout=30.0) or failure:
        pipeline.request_stop()
        runner.join(timeout=10.0)
        raise DemoError(f"the daemon did not start: {failure[0] if failure else 'no start within 30 s'}")

    presented = _feed_parts(options, pipeline, light, plc, stop)
    # The daemon ends by itself after `parts` parts. Parts it never heard of (a trigger lost
    # beyond the PLC's counter) would keep it waiting, so it is stopped after a settling time.
    deadline_s = time.monotonic() + SETTLE_S
    while runner.is_alive() and time.monotonic() < deadline_s and not stop.is_set():
        runner.join(timeout=0.1)
    if runner.is_alive():
        pipeline.request_stop()
        runner.join(timeout=15.0)
    if failure:
        raise DemoError(f"the daemon failed: {failure[0]}")
    result = _summarise(options, summary, presented, plc, conveyor, pipeline, time.monotonic() - started_s)
    result["stopped_early"] = stop.is_set()
    return result


def _feed_parts(options: DemoOptions, pipeline, light, plc, stop: threading.Event) -> list[int]:
    """Present parts to the PLC's sensor at the line rate; return when each was presented."""
    presented_ns: list[int] = []
    period_s = 1.0 / options.rate_pps
    start_s = time.monotonic()
    fault_end = None
    for index in range(options.parts):
        due_s = start_s + index * period_s
        delay_s = due_s - time.monotonic()
        if stop.wait(max(delay_s, 0.0)) or pipeline.stop_requested.is_set():
            break
        if options.light_fault_at is not None and index + 1 == options.light_fault_at:
            light.power_off()
            fault_end = index + options.light_fault_parts
        if fault_end is not None and index == fault_end:
            light.power_on()
            fault_end = None
        _, presented_at_ns = plc.present_part()
        presented_ns.append(presented_at_ns)
    if fault_end is not None:
        light.power_on()
    return presented_ns


def _summarise(options: DemoOptions, summary: dict, presented_ns: list[int], plc, conveyor: Conveyor,
               pipeline, duration_s: float) -> dict:
    counters = summary.get("counters", {})
    rejected = {reason: count for reason, count in summary.get("rejected_by_reason", {}).items() if count}
    parts = counters.get("pass", 0) + counters.get("fail", 0) + counters.get("reject", 0)

    pulse_times_ns = _pulse_times(plc)
    due_ns = np.array(
        [conveyor.time_at_counts_ns(conveyor.position_counts(t_ns) + EJECTOR_DISTANCE_COUNTS) for t_ns in presented_ns],
        dtype=np.int64,
    )
    errors_ms = []
    for pulse_ns in pulse_times_ns:
        if due_ns.size:
            nearest = int(np.argmin(np.abs(due_ns - pulse_ns)))
            errors_ms.append((pulse_ns - int(due_ns[nearest])) / 1e6)
    errors = np.asarray(errors_ms, dtype=np.float64)
    timing = {"p50": None, "p99": None, "max": None}
    if errors.size:
        p50, p99 = np.percentile(errors, [50, 99])
        timing = {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(float(np.abs(errors).max()), 3)}

    line_status = summary.get("line_io", {})
    return {
        "parts": parts,
        "presented": len(presented_ns),
        "pass": counters.get("pass", 0),
        "fail": counters.get("fail", 0),
        "rejected": rejected,
        "plc_reject_pulses": len(pulse_times_ns),
        "lost": len(presented_ns) - parts,
        "timing_error_ms": timing,
        "station_timing_error_ms": line_status.get("reject", {}).get("timing_error_ms"),
        "missed_triggers": line_status.get("counters", {}).get("missed_triggers"),
        "model": f"{pipeline.inspector.package.identity().get('name')}@{pipeline.inspector.package.identity().get('version')}",
        "rate_pps": options.rate_pps,
        "plc_protocol": options.plc_protocol,
        "light_protocol": options.light_protocol,
        "duration_s": round(duration_s, 2),
    }


def _ground_truth(results: list[dict]) -> dict:
    """Compare the verdicts the HMI received with what each rendered part really was."""
    good = [result for result in results if result["source_ref"].endswith("_good")]
    defective = [result for result in results if result["source_ref"].startswith("synthetic/")
                 and not result["source_ref"].endswith("_good")]
    return {
        "hmi_results": len(results),
        "ground_truth": {
            "good": len(good),
            "good_failed": sum(result["verdict"] == "FAIL" for result in good),
            "defective": len(defective),
            "defective_passed": sum(result["verdict"] == "PASS" for result in defective),
        },
    }


def _pulse_times(plc) -> list[int]:
    """When the PLC received each reject: coil switched on (Modbus) or a reject message (ASCII)."""
    if hasattr(plc, "coil_writes"):
        return [time_ns for time_ns, address, on in plc.coil_writes if address == REJECT_COIL and on]
    return [time_ns for time_ns, _part_id in plc.rejects]
