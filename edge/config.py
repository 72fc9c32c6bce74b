"""Typed daemon configuration, loaded from YAML with errors that name file, line, key and fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration file or option that cannot be used; the message states the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationConfig(_Section):
    """Line and station names, which appear in every topic and message."""

    line: str = Field("line1", description="Production line name")
    station: str = Field("station1", description="Station name on the line")

    @field_validator("line", "station")
    @classmethod
    def _topic_safe(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError("use letters, digits, '-' and '_' only, because the name becomes part of ZeroMQ topics")
        return name


class SourceConfig(_Section):
    """Frame source settings.

    kind `camera` takes a device index (`device`) or a URL or GStreamer pipeline (`uri`);
    `video` and `folder` take `path`; `synthetic` renders parts with and without defects.
    """

    kind: Literal["camera", "video", "folder", "synthetic"] = "synthetic"
    device: int | None = Field(None, ge=0, description="Camera device index (V4L2 /dev/videoN)")
    uri: str | None = Field(None, description="Stream URL or GStreamer pipeline")
    path: Path | None = Field(None, description="Video file or image folder")
    rate_fps: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Replay rate for video, folder and synthetic sources; unset replays as fast as the pipeline inspects"
    )
    loop: bool = Field(False, description="Restart a video or folder at its end")
    max_frames: int | None = Field(None, ge=1, description="Stop after this many frames")
    open_timeout_ms: int = Field(5000, ge=100, description="Camera open timeout")
    read_timeout_ms: int = Field(2000, ge=50, description="Maximum wait for one camera frame before the camera counts as stalled")
    frozen_frame_limit: int = Field(
        50, ge=2, description="Identical consecutive camera frames after which the camera is reopened"
    )
    reopen_backoff_s: list[float] = Field([0.5, 1.0, 2.0, 5.0], min_length=1, description="Waits between camera reopen attempts; the last repeats")
    synthetic_defect_rate: float = Field(0.3, ge=0, le=1, description="Share of synthetic parts rendered with a defect")
    synthetic_seed: int = 0

    @model_validator(mode="after")
    def _check_kind_fields(self) -> SourceConfig:
        if self.kind == "camera" and (self.device is None) == (self.uri is None):
            raise ValueError("a camera source needs exactly one of `device` (index) or `uri` (URL or pipeline)")
        if self.kind in ("video", "folder") and self.path is None:
            raise ValueError(f"a {self.kind} source needs `path`")
        return self


class RoiConfig(_Section):
    """Region of interest cropped from every frame before the model's preprocessing, in pixels."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class PreprocessConfig(_Section):
    roi: RoiConfig | None = None


class ModelConfig(_Section):
    """The model package and optional threshold overrides (unset keeps the calibrated ones)."""

    path: Path
    image_threshold: float | None = Field(None, allow_inf_nan=False, description="Overrides the package's image threshold")
    pixel_threshold: float | None = Field(None, allow_inf_nan=False, description="Overrides the package's pixel threshold")


class InferenceConfig(_Section):
    providers: list[Literal["CPUExecutionProvider", "CUDAExecutionProvider"]] = Field(
        ["CPUExecutionProvider"], min_length=1, description="ONNX Runtime execution providers in order of preference"
    )
    intra_op_num_threads: int = Field(2, ge=1, le=256)
    warmup_runs: int = Field(2, ge=1, le=100)
    timeout_ms: int = Field(
        5000, ge=10, le=600000, description="Maximum duration of one inference call; a longer call is terminated and its part rejected"
    )

    @field_validator("providers")
    @classmethod
    def _no_repeats(cls, providers: list[str]) -> list[str]:
        if len(set(providers)) != len(providers):
            raise ValueError("each provider may be listed once")
        return providers


class DecisionConfig(_Section):
    min_region_area_map_px: int = Field(1, ge=1, description="Smallest defect region reported, in anomaly-map pixels")
    max_regions: int = Field(20, ge=1, description="Largest number of regions reported per part, largest first")


class PipelineConfig(_Section):
    queue_size: int = Field(4, ge=1, le=1024, description="Capacity of each queue between stages")
    drain_timeout_s: float = Field(
        2.0, gt=0, le=3.0,
        description="Time to inspect queued parts at shutdown; the rest are rejected. At most 3 s, so the process exits within 5 s",
    )
    max_parts: int | None = Field(None, ge=1, description="Stop after this many parts")


class PublishConfig(_Section):
    endpoint: str = Field("tcp://127.0.0.1:5556", description="ZeroMQ PUB endpoint to bind")
    send_hwm: int = Field(100, ge=1, description="ZeroMQ send high-water mark, in messages")
    linger_ms: int = Field(500, ge=0, le=1000, description="How long unsent messages are kept at shutdown")
    map_encoding: Literal["png8", "float16", "none"] = "png8"
    count_send_drops: bool = Field(
        False,
        description="Count sends refused at a full subscriber (ZMQ_XPUB_NODROP); the message then reaches no "
        "subscriber until the stuck one is disconnected, so leave this off with several subscribers",
    )
    status_interval_s: float = Field(1.0, gt=0, le=60)
    subscriber_grace_ms: int = Field(
        300, ge=0, le=10000,
        description="Wait after binding before the first part, so that waiting subscribers can connect "
        "(ZeroMQ drops what a PUB socket sends before a subscription arrives)",
    )

    @field_validator("endpoint")
    @classmethod
    def _known_transport(cls, endpoint: str) -> str:
        if not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError("endpoint must start with tcp://, ipc:// or inproc://, for example tcp://127.0.0.1:5556")
        return endpoint


BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)


class SerialPortConfig(_Section):
    """One serial port. Prefer a `/dev/serial/by-id/...` path: it survives re-plugging, a ttyUSBn name may not."""

    port: str = Field(description="Device path, or a glob such as /dev/serial/by-id/usb-FTDI_* resolved at every (re)open")
    baudrate: int = Field(9600, description="One of the standard rates, for example 9600, 19200 or 115200")
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    write_timeout_ms: int = Field(200, ge=10, le=10000)
    reply_timeout_ms: int = Field(200, ge=10, le=10000, description="Wait for a device's acknowledgement")
    retries: int = Field(2, ge=0, le=10, description="Retries of a command that was not acknowledged")
    reopen_backoff_s: list[float] = Field(
        [0.2, 0.5, 1.0, 2.0, 5.0], min_length=1, description="Waits between reopen attempts after a port failure; the last repeats"
    )

    @field_validator("baudrate")
    @classmethod
    def _standard_baudrate(cls, baudrate: int) -> int:
        if baudrate not in BAUDRATES:
            raise ValueError(f"use a standard baud rate: {', '.join(map(str, BAUDRATES))}")
        return baudrate

    @field_validator("reopen_backoff_s")
    @classmethod
    def _positive_waits(cls, waits: list[float]) -> list[float]:
        if any(not (0 < wait <= 60) for wait in waits):
            raise ValueError("each wait must be above 0 and at most 60 s")
        return waits


class LightChannelConfig(_Section):
    """One channel of a light recipe."""

    channel: int = Field(ge=0, le=99)
    mode: Literal["continuous", "pulse", "off"] = "continuous"
    percent: float = Field(100.0, ge=0, le=100, allow_inf_nan=False)
    pulse_width_ms: float | None = Field(None, gt=0, le=1000, allow_inf_nan=False, description="Strobe pulse width (mode pulse)")
    pulse_delay_ms: float = Field(0.0, ge=0, le=1000, allow_inf_nan=False, description="Strobe delay after the trigger (mode pulse)")

    @model_validator(mode="after")
    def _pulse_needs_width(self) -> LightChannelConfig:
        if self.mode == "pulse" and self.pulse_width_ms is None:
            raise ValueError("mode pulse needs `pulse_width_ms`")
        return self


class LightTemplateConfig(_Section):
    """Commands of a light controller that has no built-in protocol, as Python format templates."""

    commands: dict[Literal["continuous", "pulse", "off", "trigger"], str] = Field(
        description="Templates with {channel}, {percent}, {percent_255}, {width_ms}, {delay_ms}; leave out unsupported commands"
    )
    terminator: str = "\r\n"
    checksum: Literal["none", "sum8_hex", "xor8_hex", "lrc_hex"] = "none"
    reply_terminator: str = "\r\n"
    ack_pattern: str = "^OK"
    error_pattern: str | None = "^(ERR|NG)"


class LightConfig(_Section):
    """The light controller and the recipes it is set to, one per product."""

    serial: SerialPortConfig
    protocol: Literal["gardasoft", "ccs", "template"] = "gardasoft"
    template: LightTemplateConfig | None = None
    recipe: str = Field(description="Name of the recipe in `recipes` to apply at start")
    recipes: dict[str, list[LightChannelConfig]] = Field(min_length=1)
    check_interval_s: float = Field(
        5.0, gt=0, le=3600, description="The recipe is sent again this often; parts are rejected (light_fault) while it is not confirmed"
    )
    trigger_channel: int | None = Field(None, ge=0, le=99, description="Channel whose strobe a software trigger fires")

    @model_validator(mode="after")
    def _recipe_exists(self) -> LightConfig:
        if self.recipe not in self.recipes:
            raise ValueError(f"recipe {self.recipe!r} is not among the recipes ({', '.join(sorted(self.recipes))}); add it or pick one of them")
        if self.protocol == "template" and self.template is None:
            raise ValueError("protocol template needs a `template` section (commands, terminator, checksum, ack_pattern)")
        return self


class ModbusPlcConfig(_Section):
    """Modbus RTU addresses of the PLC (the station is the master)."""

    unit_id: int = Field(1, ge=1, le=247)
    reject_kind: Literal["coil", "register"] = Field("coil", description="Function 05 (write single coil) or 06 (write single register)")
    reject_address: int = Field(0, ge=0, le=65535)
    on_value: int = Field(1, ge=0, le=65535, description="Register value that switches the ejector on (reject_kind register)")
    off_value: int = Field(0, ge=0, le=65535)
    encoder_address: int | None = Field(None, ge=0, le=65534, description="First of two holding registers with the encoder counts, high word first")
    part_counter_address: int | None = Field(None, ge=0, le=65535, description="Holding register the PLC increments for every part present")
    latch_address: int | None = Field(
        None, ge=0, le=65534, description="First of two holding registers with the encoder counts the PLC latched at the last part present"
    )
    poll_interval_ms: float = Field(5.0, ge=1, le=1000, allow_inf_nan=False)
    min_gap_ms: float = Field(0.0, ge=0, le=500, allow_inf_nan=False, description="Silence between requests when a device needs more than 3.5 characters")


class AsciiPlcConfig(_Section):
    """A PLC that exchanges text lines."""

    reject_template: str = Field("REJ {part_id}\n", description="Message sent per rejected part")
    ack_pattern: str = "^OK$"
    error_pattern: str | None = "^ERR\\b"
    trigger_pattern: str | None = Field(
        "^PART (?P<sequence>\\d+)( (?P<counts>-?\\d+))?$",
        description="Part-present message; group `sequence` reveals missed triggers, group `counts` is the encoder position the PLC latched",
    )
    encoder_pattern: str | None = Field("^ENC (?P<counts>-?\\d+)$", description="Encoder message with group `counts`")
    line_end: str = "\n"


class PlcConfig(_Section):
    serial: SerialPortConfig
    protocol: Literal["modbus_rtu", "ascii"] = "modbus_rtu"
    modbus: ModbusPlcConfig = ModbusPlcConfig()
    ascii: AsciiPlcConfig = AsciiPlcConfig()

    def has_encoder(self) -> bool:
        if self.protocol == "modbus_rtu":
            return self.modbus.encoder_address is not None
        return self.ascii.encoder_pattern is not None

    def has_trigger(self) -> bool:
        if self.protocol == "modbus_rtu":
            return self.modbus.part_counter_address is not None
        return self.ascii.trigger_pattern is not None


class RelayConfig(_Section):
    """A USB relay board (frames A0 channel state sum) wired to the ejector."""

    serial: SerialPortConfig
    channel: int = Field(1, ge=1, le=8)


class RejectConfig(_Section):
    """When and how the ejector fires for a failed or uninspected part."""

    output: Literal["plc", "relay"] = "plc"
    timing: Literal["delay", "encoder"] = Field("delay", description="delay: fixed time from capture; encoder: conveyor distance")
    delay_ms: float = Field(500.0, gt=0, le=600000, allow_inf_nan=False, description="Time from capture (or trigger) to the ejector")
    distance_counts: int | None = Field(None, gt=0, description="Encoder counts from the camera to the ejector (timing encoder)")
    pulse_width_ms: float = Field(50.0, gt=0, le=10000, allow_inf_nan=False)
    realtime_priority: int | None = Field(
        10, ge=1, le=99,
        description="SCHED_FIFO priority of the thread that fires the pulses (needs CAP_SYS_NICE); unset keeps normal priority",
    )

    @model_validator(mode="after")
    def _encoder_needs_distance(self) -> RejectConfig:
        if self.timing == "encoder" and self.distance_counts is None:
            raise ValueError("timing encoder needs `distance_counts`, the encoder counts from the camera to the ejector")
        return self


class TriggerConfig(_Section):
    """Source of parts: every frame (free_run), the station's own timer (software), or the PLC (plc)."""

    mode: Literal["free_run", "software", "plc"] = "free_run"
    period_ms: float | None = Field(None, gt=0, le=600000, allow_inf_nan=False, description="Trigger period of mode software")
    frame_timeout_ms: int = Field(200, ge=10, le=10000, description="Wait for a frame after a trigger; a part without one is rejected")

    @model_validator(mode="after")
    def _software_needs_period(self) -> TriggerConfig:
        if self.mode == "software" and self.period_ms is None:
            raise ValueError("mode software needs `period_ms`")
        return self


class LineIOConfig(_Section):
    """Serial line I/O: light controller, PLC, reject output and trigger. Every part is optional."""

    light: LightConfig | None = None
    plc: PlcConfig | None = None
    relay: RelayConfig | None = None
    reject: RejectConfig | None = None
    trigger: TriggerConfig = TriggerConfig()

    @model_validator(mode="after")
    def _devices_present(self) -> LineIOConfig:
        if self.reject is not None:
            if self.reject.output == "plc" and self.plc is None:
                raise ValueError("reject.output plc needs a `plc` section")
            if self.reject.output == "relay" and self.relay is None:
                raise ValueError("reject.output relay needs a `relay` section")
            if self.reject.timing == "encoder" and (self.plc is None or not self.plc.has_encoder()):
                raise ValueError("reject.timing encoder needs a `plc` that reports the encoder (modbus.encoder_address or ascii.encoder_pattern)")
        if self.trigger.mode == "plc" and (self.plc is None or not self.plc.has_trigger()):
            raise ValueError("trigger.mode plc needs a `plc` that sends part-present triggers (modbus.part_counter_address or ascii.trigger_pattern)")
        return self


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field("auto", description="auto: console on a terminal, JSON lines otherwise")


class AppConfig(_Section):
    """The whole daemon configuration, one section per stage."""

    station: StationConfig = StationConfig()
    source: SourceConfig = SourceConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig
    inference: InferenceConfig = InferenceConfig()
    decision: DecisionConfig = DecisionConfig()
    pipeline: PipelineConfig = PipelineConfig()
    publish: PublishConfig = PublishConfig()
    line_io: LineIOConfig = LineIOConfig()
    logging: LoggingConfig = LoggingConfig()


def load_config(path: Path | str) -> AppConfig:
    """Read and validate a YAML configuration file.

    Relative paths inside the file (model path, source path) are taken relative to the file's
    folder, so a config works from any working directory. Raises ConfigError with file, line,
    key, value and the fix.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror}); check the path") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not a UTF-8 text file; pass a YAML configuration file") from error

    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(error, 'problem', error)}); fix the syntax") from error

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (station, source, model, ...)")

    _resolve_relative_paths(data, path.parent)
    return validate_config(data, source_name=str(path), line_of=_line_index(node))


def validate_config(
    data: dict[str, Any],
    source_name: str = "<options>",
    line_of: dict[tuple, int] | None = None,
    option_names: dict[str, str] | None = None,
) -> AppConfig:
    """Validate a configuration mapping, turning pydantic errors into one readable ConfigError.

    `option_names` maps keys that came from command-line options (`publish.endpoint`) to the
    option (`--endpoint`), so the message names what the user typed.
    """
    try:
        return AppConfig.model_validate(data)
    except ValidationError as error:
        lines = [f"{source_name}: invalid configuration ({error.error_count()} problem(s)):"]
        for item in error.errors():
            lines.append("  " + _describe(item, source_name, line_of or {}, option_names or {}))
        raise ConfigError("\n".join(lines)) from None


def _describe(item: dict, source_name: str, line_of: dict[tuple, int], option_names: dict[str, str]) -> str:
    location = tuple(part for part in item["loc"] if not isinstance(part, str) or not part.startswith("function-"))
    key = ".".join(str(part) for part in location) or "(top level)"
    if key in option_names:
        key = f"{option_names[key]} ({key})"
    line = _nearest_line(location, line_of)
    where = f"{source_name}:{line}" if line else source_name
    kind = item["type"]
    value = item.get("input")

    if kind == "extra_forbidden":
        section = ".".join(str(part) for part in location[:-1]) or "the top level"
        return f"{where}: unknown key `{key}`; remove it or check its spelling against the keys of {section}"
    if kind == "missing":
        return f"{where}: missing key `{key}`; add it"
    message = item["msg"].removeprefix("Value error, ")
    if isinstance(value, (dict, list)):
        # A check across the fields of a section: the section's whole content would bury the message.
        return f"{where}: `{key}` is invalid: {message}"
    return f"{where}: `{key}` = {value!r} is invalid: {message}"


def _nearest_line(location: tuple, line_of: dict[tuple, int]) -> int | None:
    for end in range(len(location), -1, -1):
        if location[:end] in line_of:
            return line_of[location[:end]]
    return None


def _line_index(node: yaml.Node | None) -> dict[tuple, int]:
    """Map each key path of a composed YAML document to its 1-based line number."""
    index: dict[tuple, int] = {}

    def walk(current: yaml.Node, prefix: tuple) -> None:
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                path = prefix + (key_node.value,)
                index[path] = key_node.start_mark.line + 1
                walk(value_node, path)
        elif isinstance(current, yaml.SequenceNode):
            for position, child in enumerate(current.value):
                index[prefix + (position,)] = child.start_mark.line + 1
                walk(child, prefix + (position,))

    if node is not None:
        walk(node, ())
    return index


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    for section, key in (("model", "path"), ("source", "path")):
        values = data.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str):
            candidate = Path(values[key]).expanduser()
            if not candidate.is_absolute():
                values[key] = str(base / candidate)
