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
