"""A real ZeroMQ subscriber that collects results in the background, for integration tests."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import zmq

from edge.acquisition.factory import create_source
from edge.config import validate_config
from edge.pipeline import build_pipeline
from edge.publish.messages import decode_result


def free_tcp_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


class Collector:
    """Subscribe to every topic of `endpoint` and keep decoded results and status headers."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.results: list[dict] = []
        self.maps: list = []
        self.statuses: list[dict] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Collector:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def wait_for_results(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.results) >= count:
                return True
            time.sleep(0.02)
        return len(self.results) >= count

    def wait_quiet(self, quiet_s: float = 0.5, timeout_s: float = 10.0) -> None:
        """Wait until no result arrived for `quiet_s`."""
        deadline = time.monotonic() + timeout_s
        last_count, last_change = len(self.results), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if len(self.results) != last_count:
                last_count, last_change = len(self.results), time.monotonic()
            elif time.monotonic() - last_change >= quiet_s:
                return

    def _run(self) -> None:
        context = zmq.Context()
        subscriber = context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.LINGER, 0)
        subscriber.setsockopt(zmq.RCVHWM, 100000)
        subscriber.setsockopt(zmq.RECONNECT_IVL, 10)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"")
        subscriber.connect(self.endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not subscriber.poll(50):
                    continue
                topic, header, anomaly_map = decode_result(subscriber.recv_multipart())
                if topic.startswith("result."):
                    self.results.append(header)
                    self.maps.append(anomaly_map)
                else:
                    self.statuses.append(header)
        finally:
            subscriber.close()
            context.term()


def run_folder(package: Path, folder: Path, count: int) -> tuple[dict, Collector]:
    """Run the daemon on every image of `folder` with `package`; return its summary and the collected results."""
    endpoint = free_tcp_endpoint()
    config = validate_config({
        "model": {"path": str(package)},
        "source": {"kind": "folder", "path": str(folder)},
        "publish": {"endpoint": endpoint, "subscriber_grace_ms": 300, "map_encoding": "float16"},
    })
    with Collector(endpoint) as collector:
        summary = build_pipeline(config, create_source(config.source)).run()
        assert collector.wait_for_results(count, timeout_s=10)
        collector.wait_quiet(0.3)
    return summary, collector
