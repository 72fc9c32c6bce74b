"""Result publisher over real ZeroMQ sockets on loopback and ipc."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import zmq

from edge.config import PublishConfig, StationConfig
from edge.inference.package import Thresholds
from edge.parts import Frame, Part, RejectReason, Verdict
from edge.publish.messages import decode_result
from edge.publish.publisher import PublishError, ResultPublisher
from edge.publish.stats import PipelineStats
from tests.unit.test_messages import MODEL, make_part

STATION = StationConfig(line="line1", station="cam3")
THRESHOLDS = Thresholds(image=0.5, pixel=0.4)
ANY_PORT = "tcp://127.0.0.1:*"
RECEIVE_TIMEOUT_S = 10.0
# Generous bound for stop(): the contract is "returns", not "returns fast".
STOP_SLACK_S = 5.0


def make_publisher(
    endpoint: str = ANY_PORT,
    stats: PipelineStats | None = None,
    status_provider=None,
    **options,
) -> ResultPublisher:
    config_fields = {
        key: options.pop(key)
        for key in ("send_hwm", "linger_ms", "map_encoding", "status_interval_s")
        if key in options
    }
    config_fields.setdefault("status_interval_s", 0.05)
    config = PublishConfig(endpoint=endpoint, **config_fields)
    stats = stats or PipelineStats()
    provider = status_provider or (lambda: stats.snapshot({"decision": 0}, {"name": "synthetic", "state": "running"}))
    return ResultPublisher(config, STATION, MODEL, THRESHOLDS, stats, provider, **options)


@contextmanager
def subscriber(endpoint: str, rcv_hwm: int = 1000, topics: tuple[str, ...] = ("",)) -> Iterator[zmq.Socket]:
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, rcv_hwm)
    socket.setsockopt(zmq.LINGER, 0)
    for topic in topics:
        socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
    socket.connect(endpoint)
    try:
        yield socket
    finally:
        socket.close(linger=0)
        context.term()


def receive(socket: zmq.Socket, timeout_s: float = RECEIVE_TIMEOUT_S) -> list[bytes]:
    if not socket.poll(int(timeout_s * 1000)):
        raise AssertionError(f"no message within {timeout_s} s")
    return socket.recv_multipart()


def wait_for_status(socket: zmq.Socket) -> dict:
    """Receive until a status message arrives, which proves the subscription is in place."""
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while time.monotonic() < deadline:
        topic, header, _ = decode_result(receive(socket))
        if topic.startswith("status."):
            return header
    raise AssertionError("no status message arrived")


def receive_result(socket: zmq.Socket, part_id: int) -> tuple[str, dict, np.ndarray | None, list[bytes]]:
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while time.monotonic() < deadline:
        frames = receive(socket)
        topic, header, anomaly_map = decode_result(frames)
        if topic.startswith("result.") and header["part_id"] == part_id:
            return topic, header, anomaly_map, frames
    raise AssertionError(f"result of part {part_id} did not arrive")


def test_round_trip_png8() -> None:
    publisher = make_publisher(map_encoding="png8")
    publisher.start()
    try:
        with subscriber(publisher.endpoint) as socket:
            wait_for_status(socket)
            fail_part = make_part(11, Verdict.FAIL)
            reject_part = make_part(12, Verdict.REJECT)
            assert publisher.submit(fail_part)
            assert publisher.submit(reject_part)

            topic, header, anomaly_map, _ = receive_result(socket, 11)
            _, reject_header, reject_map, reject_frames = receive_result(socket, 12)
    finally:
        assert publisher.stop(timeout_s=2.0)

    assert topic == "result.line1.cam3"
    assert header["verdict"] == "FAIL"
    assert header["run_id"] == publisher.run_id
    assert header["regions"][0]["bbox_xywh"] == [10, 20, 8, 5]
    assert header["map"]["encoding"] == "png8"
    assert header["map"]["scale_max"] == pytest.approx(0.8)
    saturated = np.clip(fail_part.anomaly_map, 0.0, 0.8)
    assert np.max(np.abs(anomaly_map - saturated)) <= 0.8 / 510 + 1e-6
    assert reject_header["verdict"] == "REJECT"
    assert reject_header["reason"] == "inference_error"
    assert reject_header["map"] is None
    assert reject_map is None
    assert reject_frames[2] == b""
    assert publisher.published == 2


def test_round_trip_float16_ipc(tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/results.sock"
    publisher = make_publisher(endpoint, map_encoding="float16")
    publisher.start()
    try:
        with subscriber(endpoint, topics=("result.line1.", "status.")) as socket:
            wait_for_status(socket)
            part = make_part(5, Verdict.PASS, map_shape=(1, 1, 24, 30))
            publisher.submit(part)
            _, header, anomaly_map, frames = receive_result(socket, 5)
    finally:
        assert publisher.stop(timeout_s=2.0)

    assert publisher.endpoint == endpoint
    assert header["verdict"] == "PASS"
    assert header["map"] == {"encoding": "float16", "shape": [24, 30], "dtype": "<f2"}
    assert len(frames[2]) == 24 * 30 * 2
    expected = part.anomaly_map.reshape(24, 30).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(anomaly_map, expected)


def test_inproc_shared_context() -> None:
    context = zmq.Context()
    publisher = make_publisher("inproc://results", context=context)
    publisher.start()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect("inproc://results")
    try:
        wait_for_status(socket)
        publisher.submit(make_part(8))
        _, header, _, _ = receive_result(socket, 8)
        assert publisher.stop(timeout_s=2.0)
        assert not context.closed
    finally:
        socket.close(linger=0)
        context.term()

    assert header["part_id"] == 8


def test_map_encoding_none() -> None:
    publisher = make_publisher(map_encoding="none")
    publisher.start()
    try:
        with subscriber(publisher.endpoint) as socket:
            wait_for_status(socket)
            publisher.submit(make_part(1))
            _, header, anomaly_map, frames = receive_result(socket, 1)
    finally:
        publisher.stop(timeout_s=2.0)

    assert header["map"] is None
    assert anomaly_map is None
    assert frames[2] == b""


def test_status_messages_periodic() -> None:
    stats = PipelineStats()
    stats.count_frame()
    publisher = make_publisher(stats=stats, status_interval_s=0.05)
    publisher.start()
    statuses = []
    try:
        with subscriber(publisher.endpoint, topics=("status.",)) as socket:
            while len(statuses) < 3:
                topic, header, anomaly_map = decode_result(receive(socket))
                assert topic == "status.line1.cam3"
                assert anomaly_map is None
                statuses.append(header)
    finally:
        publisher.stop(timeout_s=2.0)

    sequences = [status["sequence"] for status in statuses]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == 3
    last = statuses[-1]
    assert last["schema_version"] == 1
    assert last["type"] == "status"
    assert last["line"] == "line1"
    assert last["station"] == "cam3"
    assert last["run_id"] == publisher.run_id
    assert last["final"] is False
    assert last["model"] == MODEL
    assert last["counters"]["frames"] == 1
    assert last["queue_depths"] == {"decision": 0}
    assert last["source"]["state"] == "running"
    assert last["time"].endswith("Z")


def test_final_status_on_stop() -> None:
    publisher = make_publisher(status_interval_s=0.05)
    publisher.start()
    with subscriber(publisher.endpoint, topics=("status.",)) as socket:
        wait_for_status(socket)
        stopper = threading.Thread(target=publisher.stop, kwargs={"timeout_s": 2.0})
        stopper.start()
        final = None
        while final is None:
            _, header, _ = decode_result(receive(socket))
            if header["final"]:
                final = header
        stopper.join()

    assert final["type"] == "status"


def test_status_provider_error() -> None:
    def broken_provider() -> dict:
        raise KeyError("queue_depths")

    publisher = make_publisher(status_provider=broken_provider)
    publisher.start()
    try:
        with subscriber(publisher.endpoint) as socket:
            status = wait_for_status(socket)
    finally:
        publisher.stop(timeout_s=2.0)

    assert status["status_error"] == "KeyError: 'queue_depths'"
    assert status["line"] == "line1"


def test_no_subscriber_never_blocks() -> None:
    stats = PipelineStats()
    publisher = make_publisher(stats=stats, queue_size=8, send_hwm=1)
    publisher.start()

    accepted = sum(publisher.submit(make_part(part_id)) for part_id in range(500))
    stopped = publisher.stop(timeout_s=3.0)

    assert stopped
    overflow = stats.counter("publish_overflow")
    discarded = stats.counter("publish_discarded_at_stop")
    assert accepted + overflow == 500
    assert publisher.published + discarded == accepted
    assert stats.counter("published") == publisher.published


def test_overflow_counted() -> None:
    stats = PipelineStats()
    publisher = make_publisher(stats=stats, queue_size=2)

    results = [publisher.submit(make_part(part_id)) for part_id in range(5)]
    publisher.start()
    publisher.stop(timeout_s=2.0)

    assert results == [True, True, False, False, False]
    assert stats.counter("publish_overflow") == 3
    assert publisher.published == 2


def test_submit_after_stop() -> None:
    stats = PipelineStats()
    publisher = make_publisher(stats=stats)
    publisher.start()
    publisher.stop(timeout_s=2.0)

    assert not publisher.submit(make_part(1))
    assert stats.counter("publish_after_stop") == 1
    assert publisher.stop(timeout_s=1.0)


def test_part_without_verdict_not_queued() -> None:
    stats = PipelineStats()
    publisher = make_publisher(stats=stats)

    assert not publisher.submit(Part(part_id=4, frame=Frame.now(None)))
    assert stats.counter("publish_invalid_part") == 1
    assert publisher.queue_depth == 0


def test_slow_subscriber_drops_counted() -> None:
    """A subscriber that stops reading fills its queue; sends then fail and are counted."""
    stats = PipelineStats()
    publisher = make_publisher(
        stats=stats, map_encoding="float16", send_hwm=1, count_send_drops=True, queue_size=16, heartbeat_timeout_ms=60_000
    )
    publisher.start()
    submitted = 0
    try:
        with subscriber(publisher.endpoint, rcv_hwm=1) as socket:
            wait_for_status(socket)
            deadline = time.monotonic() + 30.0
            while stats.counter("send_dropped") == 0 and time.monotonic() < deadline:
                publisher.submit(make_part(submitted, map_shape=(512, 512)))
                submitted += 1
                time.sleep(0.002)
            drops_with_subscriber = stats.counter("send_dropped")
            started_stop = time.monotonic()
            stopped = publisher.stop(timeout_s=2.0)
            stop_s = time.monotonic() - started_stop
    finally:
        publisher.stop(timeout_s=2.0)

    assert drops_with_subscriber > 0
    assert stopped
    assert stop_s < 2.0 + STOP_SLACK_S
    assert publisher.published < submitted


def test_slow_subscriber_spares_others() -> None:
    """By default a stuck subscriber loses messages alone; the publisher and other subscribers go on."""
    stats = PipelineStats()
    publisher = make_publisher(stats=stats, map_encoding="float16", send_hwm=4, queue_size=16)
    publisher.start()
    part_count = 150
    received: list[int] = []
    try:
        with subscriber(publisher.endpoint, rcv_hwm=1) as stuck, subscriber(publisher.endpoint) as reader:
            wait_for_status(stuck)
            wait_for_status(reader)
            stop_reading = threading.Event()
            reading = threading.Thread(target=_collect_results, args=(reader, received, stop_reading))
            reading.start()
            try:
                for part_id in range(part_count):
                    _wait_until(lambda: publisher.queue_depth < 8)
                    publisher.submit(make_part(part_id, map_shape=(512, 512)))
                _wait_until(lambda: publisher.published == part_count)

                # The reader may have lost some parts at its own high-water mark; later ones
                # must still reach it while the stuck subscriber stays connected.
                marker_id = part_count
                deadline = time.monotonic() + 30.0
                while not any(part_id >= part_count for part_id in received) and time.monotonic() < deadline:
                    publisher.submit(make_part(marker_id, map_shape=(8, 8)))
                    marker_id += 1
                    time.sleep(0.05)
            finally:
                stop_reading.set()
                reading.join()
    finally:
        publisher.stop(timeout_s=2.0)

    assert publisher.published >= part_count
    assert stats.counter("send_dropped") == 0
    assert any(part_id >= part_count for part_id in received)


def test_stop_with_subscriber_gone() -> None:
    publisher = make_publisher(linger_ms=200)
    publisher.start()
    with subscriber(publisher.endpoint, rcv_hwm=1) as socket:
        wait_for_status(socket)
        for part_id in range(20):
            publisher.submit(make_part(part_id, map_shape=(256, 256)))

    for part_id in range(20, 40):
        publisher.submit(make_part(part_id))
    started = time.monotonic()
    stopped = publisher.stop(timeout_s=2.0)

    assert stopped
    assert time.monotonic() - started < 2.0 + STOP_SLACK_S


def test_stop_with_stuck_subscriber() -> None:
    publisher = make_publisher(linger_ms=300, send_hwm=2, map_encoding="float16")
    publisher.start()
    try:
        with subscriber(publisher.endpoint, rcv_hwm=1) as socket:
            wait_for_status(socket)
            for part_id in range(60):
                publisher.submit(make_part(part_id, map_shape=(512, 512)))
                time.sleep(0.002)
            started = time.monotonic()
            stopped = publisher.stop(timeout_s=2.0)
            stop_s = time.monotonic() - started
    finally:
        publisher.stop(timeout_s=2.0)

    assert stopped
    assert stop_s < 2.0 + STOP_SLACK_S


def test_bind_port_in_use() -> None:
    first = make_publisher()
    first.start()
    try:
        second = make_publisher(first.endpoint)
        with pytest.raises(PublishError) as raised:
            second.start()
    finally:
        first.stop(timeout_s=2.0)

    message = str(raised.value)
    assert first.endpoint in message
    assert "free port" in message


@pytest.mark.parametrize(
    ("endpoint", "fix"),
    [
        ("tcp://127.0.0.1:99999", "1 to 65535"),
        ("tcp://no-such-host.invalid:5556", "host or interface name is unknown"),
        ("tcp://127.0.0.1", "endpoint is invalid"),
    ],
)
def test_bind_bad_endpoint(endpoint: str, fix: str) -> None:
    publisher = make_publisher(endpoint)

    with pytest.raises(PublishError) as raised:
        publisher.start()

    assert endpoint in str(raised.value)
    assert fix in str(raised.value)


def test_bind_missing_ipc_folder(tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/missing/results.sock"
    publisher = make_publisher(endpoint)

    with pytest.raises(PublishError, match="create it"):
        publisher.start()


def test_model_identity_checked() -> None:
    with pytest.raises(ValueError, match="sha256"):
        ResultPublisher(
            PublishConfig(), STATION, {"name": "m", "version": "1", "kind": "padim"}, THRESHOLDS, PipelineStats(), dict
        )


def test_stats_count_parts() -> None:
    stats = PipelineStats(window_size=10)
    for part_id in range(20):
        stats.count_frame()
        part = make_part(part_id, Verdict.FAIL if part_id % 2 else Verdict.PASS)
        part.stage_ms = {"inference": float(part_id)}
        stats.record_part(part)
    rejected = make_part(20, Verdict.REJECT)
    rejected.reject(RejectReason.OVERLOAD)
    stats.record_part(rejected)

    snapshot = stats.snapshot({"capture": 3}, {"state": "running"})

    assert snapshot["counters"]["frames"] == 20
    assert snapshot["counters"]["pass"] == 10
    assert snapshot["counters"]["fail"] == 10
    assert snapshot["counters"]["reject"] == 1
    assert snapshot["rejected_by_reason"]["overload"] == 1
    assert snapshot["latency_ms"]["inference"]["count"] == 10
    assert snapshot["latency_ms"]["inference"]["p50"] == pytest.approx(14.5)
    assert snapshot["latency_ms"]["total"]["p99"] == pytest.approx(20.0)
    assert snapshot["queue_depths"] == {"capture": 3}
    assert snapshot["source"] == {"state": "running"}


def test_stats_thread_safe() -> None:
    stats = PipelineStats()

    def count() -> None:
        for _ in range(2000):
            stats.count_frame()
            stats.record_latency("inference", 1.0)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert stats.counter("frames") == 8000
    assert stats.snapshot()["latency_ms"]["inference"]["count"] == 1000


def _collect_results(socket: zmq.Socket, received: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        if socket.poll(50):
            topic, header, _ = decode_result(socket.recv_multipart())
            if topic.startswith("result."):
                received.append(header["part_id"])


def _wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.001)
