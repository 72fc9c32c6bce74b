"""The published message format: topics, the JSON result header and the anomaly-map frame.

Every message is three ZeroMQ frames: the topic (utf-8), a JSON header (utf-8) and a payload
that is the encoded anomaly map of a result, or empty. docs/messages.md describes each field
for subscribers.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import cv2
import numpy as np

from edge.config import StationConfig
from edge.inference.package import Thresholds
from edge.parts import Part, Verdict

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

RESULT_PREFIX = "result"
STATUS_PREFIX = "status"

MAP_ENCODINGS = ("png8", "float16", "none")
PNG_COMPRESSION_LEVEL = 1
MODEL_FIELDS = ("name", "version", "kind", "sha256")


class MessageError(ValueError):
    """A message that cannot be built or decoded; the message names the field and the fix."""


def result_topic(station: StationConfig) -> str:
    """Return the topic of result messages, `result.<line>.<station>`."""
    return f"{RESULT_PREFIX}.{station.line}.{station.station}"


def status_topic(station: StationConfig) -> str:
    """Return the topic of status messages, `status.<line>.<station>`."""
    return f"{STATUS_PREFIX}.{station.line}.{station.station}"


def iso_utc(time_ns: int) -> str:
    """Format a wall-clock time in ns since the epoch as UTC ISO 8601 with microseconds and Z."""
    seconds, remainder_ns = divmod(int(time_ns), 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=remainder_ns // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_safe(value: Any) -> Any:
    """Return a copy of `value` that json.dumps accepts with allow_nan=False.

    NaN and infinite floats become None, numpy scalars and arrays become Python numbers and
    lists, tuples become lists, and enums become their values. Any other object (a Path, an
    exception) becomes its str(), so that a stray field cannot stop a message from going out.
    """
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Enum):
        return json_safe(value.value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def encode_json(header: dict) -> bytes:
    """Serialize a header as compact utf-8 JSON, with non-finite numbers as null."""
    return json.dumps(json_safe(header), allow_nan=False, separators=(",", ":")).encode("utf-8")


def build_result_header(
    part: Part,
    station: StationConfig,
    model: dict,
    thresholds: Thresholds,
    map_info: dict | None,
    run_id: str | None = None,
) -> dict:
    """Build the JSON-safe header of one result message.

    `model` is `ModelPackage.identity()`. `map_info` is the second value returned by
    `encode_anomaly_map`, or None when the message carries no map. `run_id` names one run of
    the publisher, so subscribers can tell a restart (part ids start again) from lost parts.

    A part without a decision time (a stage forgot to stamp it) gets the current time, so
    its total latency includes the wait for publishing. Raises MessageError for a part
    without a verdict, because publishing it would report an outcome that no stage decided.
    """
    if part.verdict is None:
        raise MessageError(
            f"part {part.part_id} has no verdict; reject it with Part.reject(...) or decide it before publishing"
        )

    verdict = Verdict(part.verdict)
    frame = part.frame
    decision_time_ns = part.decision_time_ns
    decision_monotonic_ns = part.decision_monotonic_ns
    if decision_time_ns is None or decision_monotonic_ns is None:
        decision_time_ns = time.time_ns()
        decision_monotonic_ns = time.monotonic_ns()

    total_ms = (decision_monotonic_ns - frame.capture_monotonic_ns) / 1e6
    latency_ms = {stage: _rounded_ms(value) for stage, value in part.stage_ms.items()}
    latency_ms["total"] = _rounded_ms(total_ms)

    inspected = verdict is not Verdict.REJECT
    image_score = _finite_or_none(part.image_score) if inspected else None

    header = {
        "schema_version": SCHEMA_VERSION,
        "type": RESULT_PREFIX,
        "line": station.line,
        "station": station.station,
        "run_id": run_id,
        "part_id": int(part.part_id),
        "source_ref": frame.source_ref,
        "capture_time": iso_utc(frame.capture_time_ns),
        "capture_monotonic_ns": int(frame.capture_monotonic_ns),
        "decision_time": iso_utc(int(decision_time_ns)),
        "decision_monotonic_ns": int(decision_monotonic_ns),
        "verdict": verdict.value,
        "reason": part.reason.value if verdict is Verdict.REJECT and part.reason is not None else None,
        "detail": part.detail,
        "image_score": image_score,
        "image_threshold": _finite_or_none(thresholds.image),
        "pixel_threshold": _finite_or_none(thresholds.pixel),
        "regions": [region.to_dict() for region in part.regions] if inspected else [],
        "map_frame_xywh": list(part.map_frame_xywh) if inspected and part.map_frame_xywh else None,
        "model": {key: model.get(key) for key in MODEL_FIELDS},
        "latency_ms": latency_ms,
        "map": map_info,
    }
    return json_safe(header)


def encode_anomaly_map(
    anomaly_map: np.ndarray | None, encoding: str, pixel_threshold: float
) -> tuple[bytes, dict | None]:
    """Encode an anomaly map for the third frame and return (payload, map_info).

    `map_info` goes into the header as `map`. It is None, and the payload empty, when there is
    no map or the encoding is "none".

    "png8": 8-bit grey PNG with pixel = round(clip((v - scale_min) / (scale_max - scale_min), 0, 1) * 255).
    For a positive pixel threshold, scale_min = 0 and scale_max = 2 * pixel_threshold, so the
    threshold sits at 128 and every map of a model shares one scale. When the threshold is zero
    or negative (models whose scores can be negative), the scale is centred on the threshold and
    sized to the largest deviation in this map, so 128 still marks the threshold.
    Invert with v = scale_min + pixel / 255 * (scale_max - scale_min).

    "float16": the raw map as little-endian float16 in row-major order; values beyond
    +-65504 become infinite.
    """
    if encoding not in MAP_ENCODINGS:
        raise MessageError(f"map encoding {encoding!r} is unknown; use one of {', '.join(MAP_ENCODINGS)}")
    if anomaly_map is None or encoding == "none":
        return b"", None

    values = _as_2d(anomaly_map)
    shape = [int(values.shape[0]), int(values.shape[1])]

    if encoding == "float16":
        payload = np.ascontiguousarray(values, dtype="<f2").tobytes()
        return payload, {"encoding": "float16", "shape": shape, "dtype": "<f2"}

    scale_min, scale_max = png8_scale(values, pixel_threshold)
    finite = np.nan_to_num(values.astype(np.float64), nan=scale_min, posinf=scale_max, neginf=scale_min)
    levels = np.rint(np.clip((finite - scale_min) / (scale_max - scale_min), 0.0, 1.0) * 255.0).astype(np.uint8)

    ok, png = cv2.imencode(".png", levels, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION_LEVEL])
    if not ok:
        raise MessageError(f"OpenCV failed to encode a {shape[0]}x{shape[1]} anomaly map as PNG")
    return png.tobytes(), {
        "encoding": "png8",
        "shape": shape,
        "dtype": "uint8",
        "scale_min": scale_min,
        "scale_max": scale_max,
    }


def png8_scale(values: np.ndarray, pixel_threshold: float) -> tuple[float, float]:
    """Return (scale_min, scale_max) of the png8 encoding, with the threshold at the midpoint."""
    threshold = float(pixel_threshold)
    if not math.isfinite(threshold):
        raise MessageError(f"pixel threshold {pixel_threshold!r} is not a finite number; fix the model package or config")
    if threshold > 0:
        return 0.0, 2.0 * threshold

    finite = values[np.isfinite(values)]
    half_range = float(np.max(np.abs(finite - threshold))) if finite.size else 0.0
    half_range = max(half_range, abs(threshold), 1e-6)
    return threshold - half_range, threshold + half_range


def decode_result(frames: list[bytes]) -> tuple[str, dict, np.ndarray | None]:
    """Decode one received message into (topic, header, anomaly map as float32 or None).

    Status messages decode too, with a None map. Raises MessageError for a message that does
    not have three frames, has invalid JSON, an unsupported schema version or a map that does
    not match its `map` description.
    """
    if len(frames) != 3:
        raise MessageError(f"expected 3 frames (topic, header, map), got {len(frames)}; check the publisher version")

    topic = bytes(frames[0]).decode("utf-8", errors="replace")
    try:
        header = json.loads(bytes(frames[1]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MessageError(f"header of a message on {topic!r} is not valid JSON ({error})") from error
    if not isinstance(header, dict):
        raise MessageError(f"header of a message on {topic!r} is not a JSON object")

    version = header.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise MessageError(
            f"message on {topic!r} has schema_version {version!r}, this subscriber reads "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}; update the subscriber or the daemon"
        )

    payload = bytes(frames[2])
    if not payload:
        return topic, header, None
    return topic, header, decode_anomaly_map(payload, header.get("map"))


def decode_anomaly_map(payload: bytes, map_info: dict | None) -> np.ndarray:
    """Decode the third frame of a result into a float32 map in anomaly-score units."""
    if not isinstance(map_info, dict):
        raise MessageError("message has a map payload but its header has no `map` description")

    encoding = map_info.get("encoding")
    shape = tuple(int(size) for size in map_info.get("shape", ()))
    if len(shape) != 2:
        raise MessageError(f"map shape {map_info.get('shape')!r} is not [height, width]")

    if encoding == "float16":
        expected_bytes = shape[0] * shape[1] * 2
        if len(payload) != expected_bytes:
            raise MessageError(f"float16 map of shape {list(shape)} needs {expected_bytes} bytes, got {len(payload)}")
        return np.frombuffer(payload, dtype="<f2").reshape(shape).astype(np.float32)

    if encoding == "png8":
        levels = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if levels is None or levels.shape != shape:
            found = None if levels is None else list(levels.shape)
            raise MessageError(f"png8 map does not decode to shape {list(shape)} (got {found})")
        scale_min = float(map_info["scale_min"])
        scale_max = float(map_info["scale_max"])
        return (scale_min + levels.astype(np.float32) / 255.0 * (scale_max - scale_min)).astype(np.float32)

    raise MessageError(f"map encoding {encoding!r} is unknown; this subscriber reads png8 and float16")


def _as_2d(anomaly_map: np.ndarray) -> np.ndarray:
    values = np.asarray(anomaly_map)
    if values.ndim > 2 and all(size == 1 for size in values.shape[:-2]):
        values = values.reshape(values.shape[-2:])
    if values.ndim != 2 or values.size == 0:
        raise MessageError(f"anomaly map of shape {list(np.shape(anomaly_map))} is not a single HxW map")
    return values


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _rounded_ms(value: float) -> float | None:
    number = _finite_or_none(value)
    return None if number is None else round(number, 3)
