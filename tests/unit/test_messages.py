"""Message format: topics, result headers, anomaly-map encodings and decoding."""

from __future__ import annotations

import json
import math
import re
from pathlib import PurePosixPath

import numpy as np
import pytest

from edge.config import StationConfig
from edge.inference.package import Thresholds
from edge.parts import Frame, Part, Region, RejectReason, Verdict
from edge.publish.messages import (
    SCHEMA_VERSION,
    MessageError,
    build_result_header,
    decode_result,
    encode_anomaly_map,
    encode_json,
    iso_utc,
    json_safe,
    result_topic,
    status_topic,
)

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
MODEL = {"name": "brightness", "version": "test-1", "kind": "padim", "sha256": "0" * 64}
THRESHOLDS = Thresholds(image=0.5, pixel=0.4)
STATION = StationConfig(line="lineA", station="st-2")


def make_part(
    part_id: int,
    verdict: Verdict = Verdict.FAIL,
    map_shape: tuple[int, ...] = (32, 48),
    seed: int = 0,
) -> Part:
    """Build a decided part by hand, with a random anomaly map in [0, 1)."""
    frame = Frame(
        image=np.zeros((120, 160, 3), np.uint8),
        capture_time_ns=1_700_000_000_123_456_789,
        capture_monotonic_ns=5_000_000_000,
        source_ref=f"frame-{part_id}.png",
    )
    part = Part(part_id=part_id, frame=frame)
    if verdict is Verdict.REJECT:
        part.reject(RejectReason.INFERENCE_ERROR, "session failed")
    else:
        part.anomaly_map = np.random.default_rng(seed).random(map_shape, dtype=np.float32)
        part.image_score = 0.75 if verdict is Verdict.FAIL else 0.25
        part.verdict = verdict
        part.regions = [Region(area_px=40, bbox_xywh=(10, 20, 8, 5), peak_score=0.93, peak_xy=(13, 22))]
    part.stage_ms = {"preprocess": 1.25, "inference": 7.5, "decision": 0.5}
    part.decision_time_ns = 1_700_000_000_143_456_789
    part.decision_monotonic_ns = 5_020_000_000
    return part


def test_topics_name_line_and_station() -> None:
    assert result_topic(STATION) == "result.lineA.st-2"
    assert status_topic(STATION) == "status.lineA.st-2"


def test_iso_utc_keeps_microseconds() -> None:
    assert iso_utc(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000000Z"


def test_header_fail_part() -> None:
    part = make_part(7)

    header = build_result_header(part, STATION, MODEL, THRESHOLDS, map_info=None, run_id="run1")

    assert header["schema_version"] == SCHEMA_VERSION
    assert header["type"] == "result"
    assert header["line"] == "lineA"
    assert header["station"] == "st-2"
    assert header["run_id"] == "run1"
    assert header["part_id"] == 7
    assert header["source_ref"] == "frame-7.png"
    assert header["capture_time"] == "2023-11-14T22:13:20.123456Z"
    assert header["decision_time"] == "2023-11-14T22:13:20.143456Z"
    assert header["capture_monotonic_ns"] == 5_000_000_000
    assert header["decision_monotonic_ns"] == 5_020_000_000
    assert header["verdict"] == "FAIL"
    assert header["reason"] is None
    assert header["image_score"] == 0.75
    assert header["image_threshold"] == 0.5
    assert header["pixel_threshold"] == 0.4
    assert header["regions"] == [{"area_px": 40, "bbox_xywh": [10, 20, 8, 5], "peak_score": 0.93, "peak_xy": [13, 22]}]
    assert header["model"] == MODEL
    assert header["latency_ms"] == {"preprocess": 1.25, "inference": 7.5, "decision": 0.5, "total": 20.0}
    assert header["map"] is None


def test_header_is_strict_json() -> None:
    header = build_result_header(make_part(1), STATION, MODEL, THRESHOLDS, map_info=None)

    text = json.dumps(header, allow_nan=False)

    assert json.loads(text) == header


def test_header_reject_part() -> None:
    part = make_part(3, Verdict.REJECT)
    part.image_score = 0.9

    header = build_result_header(part, STATION, MODEL, THRESHOLDS, map_info=None)

    assert header["verdict"] == "REJECT"
    assert header["reason"] == "inference_error"
    assert header["detail"] == "session failed"
    assert header["image_score"] is None
    assert header["regions"] == []


def test_header_non_finite_values_become_null() -> None:
    part = make_part(4)
    part.image_score = float("nan")
    part.stage_ms["inference"] = float("inf")
    part.regions = [Region(area_px=1, bbox_xywh=(0, 0, 1, 1), peak_score=np.float32("nan"), peak_xy=(0, 0))]

    header = build_result_header(part, STATION, MODEL, Thresholds(image=math.inf, pixel=0.4), map_info=None)

    assert header["image_score"] is None
    assert header["latency_ms"]["inference"] is None
    assert header["regions"][0]["peak_score"] is None
    assert header["image_threshold"] is None
    json.dumps(header, allow_nan=False)


def test_header_without_verdict_raises() -> None:
    part = Part(part_id=9, frame=Frame.now(None))

    with pytest.raises(MessageError, match="part 9 has no verdict"):
        build_result_header(part, STATION, MODEL, THRESHOLDS, map_info=None)


def test_header_without_decision_stamp() -> None:
    part = Part(part_id=2, frame=Frame.now(None))
    part.reject(RejectReason.OVERLOAD)

    header = build_result_header(part, STATION, MODEL, THRESHOLDS, map_info=None)

    assert ISO_UTC.match(header["decision_time"])
    assert header["decision_monotonic_ns"] >= part.frame.capture_monotonic_ns
    assert header["latency_ms"]["total"] >= 0.0


def test_png8_threshold_at_128() -> None:
    threshold = 0.4
    values = np.array([[0.0, threshold, 2 * threshold, 5.0, -1.0]], np.float32)

    payload, map_info = encode_anomaly_map(values, "png8", threshold)
    _, _, decoded = decode_result([b"t", encode_json({"schema_version": SCHEMA_VERSION, "map": map_info}), payload])

    assert map_info == {"encoding": "png8", "shape": [1, 5], "dtype": "uint8", "scale_min": 0.0, "scale_max": 0.8}
    levels = np.rint(decoded / map_info["scale_max"] * 255).astype(int)
    assert levels.tolist() == [[0, 128, 255, 255, 0]]


def test_png8_round_trip() -> None:
    values = np.random.default_rng(1).random((40, 56), dtype=np.float32) * 0.8
    frames = _frames_for(values, "png8", pixel_threshold=0.4)

    _, header, decoded = decode_result(frames)

    assert decoded.dtype == np.float32
    assert decoded.shape == (40, 56)
    assert np.max(np.abs(decoded - values)) <= header["map"]["scale_max"] / 510 + 1e-6


def test_png8_non_positive_threshold() -> None:
    for threshold in (0.0, -0.5):
        values = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
        values[0, 0] = threshold

        frames = _frames_for(values, "png8", pixel_threshold=threshold)
        _, header, decoded = decode_result(frames)

        scale_min, scale_max = header["map"]["scale_min"], header["map"]["scale_max"]
        assert scale_min < threshold < scale_max
        assert math.isclose((scale_min + scale_max) / 2, threshold, abs_tol=1e-9)
        assert np.max(np.abs(decoded - values)) <= (scale_max - scale_min) / 510 + 1e-6


def test_png8_nan_threshold_raises() -> None:
    with pytest.raises(MessageError, match="pixel threshold nan"):
        encode_anomaly_map(np.zeros((4, 4), np.float32), "png8", float("nan"))


def test_png8_non_finite_map_values() -> None:
    values = np.array([[np.nan, np.inf, -np.inf, 0.2]], np.float32)

    _, _, decoded = decode_result(_frames_for(values, "png8", pixel_threshold=0.1))

    assert decoded.tolist()[0] == pytest.approx([0.0, 0.2, 0.0, 0.2], abs=1e-3)


def test_float16_round_trip() -> None:
    values = np.random.default_rng(2).normal(size=(17, 23)).astype(np.float32)

    payload, map_info = encode_anomaly_map(values, "float16", 0.4)
    _, _, decoded = decode_result([b"t", encode_json({"schema_version": SCHEMA_VERSION, "map": map_info}), payload])

    assert map_info == {"encoding": "float16", "shape": [17, 23], "dtype": "<f2"}
    assert len(payload) == 17 * 23 * 2
    np.testing.assert_array_equal(decoded, values.astype(np.float16).astype(np.float32))


def test_encoding_none_and_missing_map() -> None:
    assert encode_anomaly_map(np.ones((4, 4)), "none", 0.4) == (b"", None)
    assert encode_anomaly_map(None, "png8", 0.4) == (b"", None)
    assert encode_anomaly_map(None, "float16", 0.4) == (b"", None)


def test_encoding_unknown_raises() -> None:
    with pytest.raises(MessageError, match="map encoding 'jpeg' is unknown"):
        encode_anomaly_map(np.ones((4, 4)), "jpeg", 0.4)


def test_map_shapes() -> None:
    _, map_info = encode_anomaly_map(np.ones((1, 1, 6, 9), np.float32), "float16", 0.4)
    assert map_info["shape"] == [6, 9]

    with pytest.raises(MessageError, match="not a single HxW map"):
        encode_anomaly_map(np.ones((2, 6, 9), np.float32), "png8", 0.4)
    with pytest.raises(MessageError, match="not a single HxW map"):
        encode_anomaly_map(np.ones((0, 9), np.float32), "png8", 0.4)


def test_decode_status_without_map() -> None:
    frames = [b"status.lineA.st-2", encode_json({"schema_version": SCHEMA_VERSION, "type": "status"}), b""]

    topic, header, anomaly_map = decode_result(frames)

    assert topic == "status.lineA.st-2"
    assert header["type"] == "status"
    assert anomaly_map is None


def test_decode_invalid_messages() -> None:
    good_header = encode_json({"schema_version": SCHEMA_VERSION})
    map_info = {"encoding": "float16", "shape": [4, 4], "dtype": "<f2"}
    cases = [
        ([b"t", good_header], "expected 3 frames"),
        ([b"t", b"{not json", b""], "not valid JSON"),
        ([b"t", b"[1, 2]", b""], "not a JSON object"),
        ([b"t", encode_json({"schema_version": 99}), b""], "schema_version 99"),
        ([b"t", good_header, b"\x00\x01"], "no `map` description"),
        ([b"t", encode_json({"schema_version": SCHEMA_VERSION, "map": map_info}), b"\x00" * 10], "needs 32 bytes"),
        (
            [b"t", encode_json({"schema_version": SCHEMA_VERSION, "map": {**map_info, "encoding": "png8"}}), b"junk"],
            "does not decode",
        ),
    ]
    for frames, message in cases:
        with pytest.raises(MessageError, match=message):
            decode_result(frames)


def test_json_safe_numpy_and_enums() -> None:
    value = {
        "a": np.float32(1.5),
        "b": np.int64(3),
        "c": (1, 2),
        "d": np.array([1.0, np.nan]),
        "e": Verdict.PASS,
        "f": PurePosixPath("/data/a.png"),
        "g": None,
        "h": np.bool_(True),
    }

    assert json_safe(value) == {
        "a": 1.5,
        "b": 3,
        "c": [1, 2],
        "d": [1.0, None],
        "e": "PASS",
        "f": "/data/a.png",
        "g": None,
        "h": True,
    }


def _frames_for(values: np.ndarray, encoding: str, pixel_threshold: float) -> list[bytes]:
    payload, map_info = encode_anomaly_map(values, encoding, pixel_threshold)
    return [b"result.t", encode_json({"schema_version": SCHEMA_VERSION, "map": map_info}), payload]
