"""The ZeroMQ PUB socket that sends one result message per part and a periodic status message.

One thread owns the socket, because ZeroMQ sockets are not thread-safe. Stage threads hand
parts over through `submit()`, which never blocks: a full hand-over queue counts the part as
`publish_overflow` instead of stalling the line.

Delivery is best effort. PUB drops a message for a subscriber whose queue is at the
high-water mark, and a subscriber misses what was sent before it connected. Every result
carries its part id and every status message a sequence number, so subscribers can count
what they missed (see docs/messages.md).
"""

from __future__ import annotations

import errno
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np
import structlog
import zmq

from edge.config import PublishConfig, StationConfig
from edge.inference.package import Thresholds
from edge.parts import Part
from edge.publish.messages import (
    MODEL_FIELDS,
    SCHEMA_VERSION,
    STATUS_PREFIX,
    MessageError,
    build_result_header,
    encode_anomaly_map,
    encode_json,
    iso_utc,
    result_topic,
    status_topic,
)
from edge.publish.stats import PipelineStats

log = structlog.get_logger(__name__)

DEFAULT_QUEUE_SIZE = 64
DEFAULT_HEARTBEAT_IVL_MS = 1000
DEFAULT_HEARTBEAT_TIMEOUT_MS = 5000
START_TIMEOUT_S = 5.0


class PublishError(RuntimeError):
    """The result publisher cannot start; the message names the endpoint and the fix."""


@dataclass(slots=True)
class _PendingResult:
    part_id: int
    header: dict
    anomaly_map: np.ndarray | None


class _RepeatedEvent:
    """A log event written at its first occurrence, with later repeats counted and logged in batches."""

    def __init__(self, event: str, level: str = "warning") -> None:
        self._event = event
        self._level = level
        self._lock = threading.Lock()
        self._seen = False
        self._repeats = 0

    def hit(self, **fields: object) -> None:
        with self._lock:
            first = not self._seen
            self._seen = True
            if not first:
                self._repeats += 1
        if first:
            getattr(log, self._level)(self._event, **fields)

    def flush(self) -> None:
        """Log how often the event repeated since the last flush, if at all."""
        with self._lock:
            repeats, self._repeats = self._repeats, 0
        if repeats:
            getattr(log, self._level)(self._event + " (repeated)", repeats=repeats)


class ResultPublisher:
    """Publish results and status messages on a bound ZeroMQ PUB socket.

    `status_provider` is called on the publisher thread every `config.status_interval_s`; its
    dict (usually `PipelineStats.snapshot(...)`) goes into the status header. `queue_size`
    bounds the parts waiting to be encoded and sent.

    With `count_send_drops`, the socket sets ZMQ_XPUB_NODROP, so a send that finds a
    subscriber at its high-water mark fails and is counted as `send_dropped`. The message then
    reaches no subscriber at all, so one stuck subscriber costs every other one its messages
    until ZeroMQ heartbeats disconnect it (after `heartbeat_timeout_ms`). Without it (the
    default), PUB drops silently and only for the slow subscriber, which can count the gaps
    in part ids, while `send_dropped` stays 0.

    `context` shares a ZeroMQ context with the caller (needed for inproc:// endpoints); the
    publisher then leaves it open at stop.
    """

    def __init__(
        self,
        config: PublishConfig,
        station: StationConfig,
        model: dict,
        thresholds: Thresholds,
        stats: PipelineStats,
        status_provider: Callable[[], dict],
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        count_send_drops: bool = False,
        heartbeat_ivl_ms: int = DEFAULT_HEARTBEAT_IVL_MS,
        heartbeat_timeout_ms: int = DEFAULT_HEARTBEAT_TIMEOUT_MS,
        context: zmq.Context | None = None,
    ) -> None:
        missing = [key for key in MODEL_FIELDS if not model.get(key)]
        if missing:
            raise ValueError(f"model identity lacks {', '.join(missing)}; pass ModelPackage.identity()")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if config.map_encoding == "png8":
            # Fails here rather than on every part when the threshold cannot scale a PNG.
            encode_anomaly_map(np.zeros((1, 1), np.float32), "png8", thresholds.pixel)

        self.config = config
        self.station = station
        self.model = {key: model[key] for key in MODEL_FIELDS}
        self.thresholds = thresholds
        self.stats = stats
        self.status_provider = status_provider
        self.count_send_drops = count_send_drops
        self.heartbeat_ivl_ms = heartbeat_ivl_ms
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.run_id = uuid.uuid4().hex[:16]

        self._result_topic = result_topic(station).encode("utf-8")
        self._status_topic = status_topic(station).encode("utf-8")
        self._queue: queue.Queue[_PendingResult | None] = queue.Queue(maxsize=queue_size)
        self._context = context
        self._owns_context = context is None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: PublishError | None = None
        self._submit_lock = threading.Lock()
        self._stopping = threading.Event()
        self._drain_deadline_s = 0.0
        self._status_sequence = 0
        self._published = 0
        self._bound_endpoint: str | None = None

        self._overflow_event = _RepeatedEvent("publish queue full, part not published")
        self._after_stop_event = _RepeatedEvent("part submitted after the publisher stopped, not published")
        self._invalid_part_event = _RepeatedEvent("part cannot be published", level="error")
        self._send_drop_event = _RepeatedEvent("subscriber at its high-water mark, message dropped")
        self._send_error_event = _RepeatedEvent("ZeroMQ send failed", level="error")
        self._map_error_event = _RepeatedEvent("anomaly map cannot be encoded, result sent without it", level="error")
        self._status_error_event = _RepeatedEvent("status provider failed, status sent without its fields", level="error")
        self._repeated_events = (
            self._overflow_event,
            self._after_stop_event,
            self._invalid_part_event,
            self._send_drop_event,
            self._send_error_event,
            self._map_error_event,
            self._status_error_event,
        )

    @property
    def endpoint(self) -> str | None:
        """The endpoint actually bound, with the port chosen for `tcp://HOST:*`; None before start()."""
        return self._bound_endpoint

    @property
    def published(self) -> int:
        """Results sent so far (not counting status messages or dropped sends)."""
        return self._published

    @property
    def queue_depth(self) -> int:
        """Parts waiting in the hand-over queue."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the publisher thread and bind its socket, raising PublishError when binding fails."""
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError("the publisher was already started or stopped; create a new ResultPublisher")
        _check_endpoint(self.config.endpoint)

        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise PublishError(
                f"the publisher did not bind {self.config.endpoint} within {START_TIMEOUT_S} s; "
                "check that ZeroMQ can reach the address"
            )
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

        log.info(
            "publisher started",
            endpoint=self._bound_endpoint,
            send_hwm=self.config.send_hwm,
            linger_ms=self.config.linger_ms,
            map_encoding=self.config.map_encoding,
            status_interval_s=self.config.status_interval_s,
            count_send_drops=self.count_send_drops,
            run_id=self.run_id,
        )

    def submit(self, part: Part) -> bool:
        """Queue a decided part for publishing without blocking and return whether it was queued.

        The header is built here, so the queue contains neither the camera image nor the tensor.
        The caller must not change `part.anomaly_map` afterwards. A part that cannot be queued
        is counted (`publish_overflow`, `publish_after_stop` or `publish_invalid_part`) and
        logged once, with repeats counted.
        """
        try:
            header = build_result_header(
                part, self.station, self.model, self.thresholds, map_info=None, run_id=self.run_id
            )
        except MessageError as error:
            self.stats.increment("publish_invalid_part")
            self._invalid_part_event.hit(part_id=part.part_id, error=str(error))
            return False

        anomaly_map = part.anomaly_map if self.config.map_encoding != "none" else None
        pending = _PendingResult(part.part_id, header, anomaly_map)

        with self._submit_lock:
            if self._stopping.is_set():
                self.stats.increment("publish_after_stop")
                self._after_stop_event.hit(part_id=part.part_id)
                return False
            try:
                self._queue.put_nowait(pending)
            except queue.Full:
                self.stats.count_publish_overflow()
                self._overflow_event.hit(part_id=part.part_id, queue_size=self._queue.maxsize)
                return False
        return True

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Publish what was submitted, send a final status and close; return False on a timeout.

        Queued parts are sent until `timeout_s` minus the linger time has passed. The rest are
        counted as `publish_discarded_at_stop`. Closing then waits at most `linger_ms` for
        unsent messages. Safe to call more than once.
        """
        with self._submit_lock:
            if not self._stopping.is_set():
                linger_s = self.config.linger_ms / 1000.0
                self._drain_deadline_s = time.monotonic() + max(0.0, timeout_s - linger_s)
                self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

        if self._thread is None:
            self._discard_queued()
            return True

        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("publisher did not stop in time", timeout_s=timeout_s, endpoint=self._bound_endpoint)
            return False
        return True

    def __enter__(self) -> ResultPublisher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            socket = self._open_socket()
        except PublishError as error:
            self._start_error = error
            self._ready.set()
            return
        self._ready.set()

        try:
            self._publish_until_stopped(socket)
            self._send_status(socket, final=True)
        finally:
            for event in self._repeated_events:
                event.flush()
            socket.close(linger=self.config.linger_ms)
            if self._owns_context and self._context is not None:
                self._context.term()
            log.info(
                "publisher stopped",
                endpoint=self._bound_endpoint,
                published=self._published,
                send_dropped=self.stats.counter("send_dropped"),
                publish_overflow=self.stats.counter("publish_overflow"),
                status_messages=self._status_sequence,
            )

    def _open_socket(self) -> zmq.Socket:
        if self._context is None:
            self._context = zmq.Context()
        socket = self._context.socket(zmq.PUB)

        # Options take effect for connections made after they are set, so all come before bind.
        socket.setsockopt(zmq.SNDHWM, self.config.send_hwm)
        socket.setsockopt(zmq.LINGER, self.config.linger_ms)
        socket.setsockopt(zmq.XPUB_NODROP, 1 if self.count_send_drops else 0)
        socket.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ivl_ms)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.heartbeat_timeout_ms)

        try:
            socket.bind(self.config.endpoint)
        except zmq.ZMQError as error:
            socket.close(linger=0)
            if self._owns_context:
                self._context.term()
                self._context = None
            raise PublishError(_bind_error_message(self.config.endpoint, error)) from error

        self._bound_endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        return socket

    def _publish_until_stopped(self, socket: zmq.Socket) -> None:
        interval_s = self.config.status_interval_s
        next_status_s = time.monotonic() + interval_s

        while True:
            now_s = time.monotonic()
            if now_s >= next_status_s:
                self._send_status(socket, final=False)
                for event in self._repeated_events:
                    event.flush()
                next_status_s += interval_s
                if next_status_s <= now_s:
                    next_status_s = now_s + interval_s

            if self._stopping.is_set():
                if time.monotonic() >= self._drain_deadline_s:
                    self._discard_queued()
                    return
                try:
                    pending = self._queue.get_nowait()
                except queue.Empty:
                    return
            else:
                try:
                    pending = self._queue.get(timeout=max(0.0, next_status_s - time.monotonic()))
                except queue.Empty:
                    continue

            if pending is None:
                continue
            try:
                self._publish_result(socket, pending)
            # One message that cannot be encoded must not end publishing for every later part.
            except Exception as error:  # noqa: BLE001
                self.stats.increment("publish_errors")
                self._send_error_event.hit(part_id=pending.part_id, error=repr(error))

    def _publish_result(self, socket: zmq.Socket, pending: _PendingResult) -> None:
        try:
            payload, map_info = encode_anomaly_map(pending.anomaly_map, self.config.map_encoding, self.thresholds.pixel)
        except MessageError as error:
            self.stats.increment("map_encode_errors")
            self._map_error_event.hit(part_id=pending.part_id, error=str(error))
            payload, map_info = b"", None

        header = pending.header
        header["map"] = map_info
        if self._send(socket, [self._result_topic, encode_json(header), payload], part_id=pending.part_id):
            self._published += 1
            self.stats.count_published()

    def _send_status(self, socket: zmq.Socket, final: bool) -> None:
        self._status_sequence += 1
        header: dict = {}
        try:
            provided = self.status_provider()
            if isinstance(provided, dict):
                header.update(provided)
            else:
                raise TypeError(f"status_provider returned {type(provided).__name__}, expected dict")
        # The provider is caller code. Whatever it raises, the status message must still go
        # out, because subscribers rely on it to tell that the station is alive.
        except Exception as error:  # noqa: BLE001
            header["status_error"] = f"{type(error).__name__}: {error}"
            self._status_error_event.hit(error=header["status_error"])

        now_ns = time.time_ns()
        header.update(
            {
                "schema_version": SCHEMA_VERSION,
                "type": STATUS_PREFIX,
                "line": self.station.line,
                "station": self.station.station,
                "run_id": self.run_id,
                "time": iso_utc(now_ns),
                "monotonic_ns": time.monotonic_ns(),
                "sequence": self._status_sequence,
                "interval_s": self.config.status_interval_s,
                "final": final,
                "model": self.model,
                "image_threshold": self.thresholds.image,
                "pixel_threshold": self.thresholds.pixel,
                "map_encoding": self.config.map_encoding,
            }
        )
        if not self._send(socket, [self._status_topic, encode_json(header), b""], part_id=None):
            self.stats.increment("status_dropped")

    def _send(self, socket: zmq.Socket, frames: list[bytes], part_id: int | None) -> bool:
        """Send one multipart message without blocking; return whether ZeroMQ took it."""
        try:
            socket.send_multipart(frames, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            if part_id is not None:
                self.stats.count_send_dropped()
            self._send_drop_event.hit(part_id=part_id, send_hwm=self.config.send_hwm)
            return False
        except zmq.ZMQError as error:
            self.stats.increment("publish_errors")
            self._send_error_event.hit(part_id=part_id, error=str(error), errno=error.errno)
            return False

    def _discard_queued(self) -> None:
        discarded = 0
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None:
                discarded += 1
        if discarded:
            self.stats.increment("publish_discarded_at_stop", discarded)
            log.warning("parts not published before the stop timeout", discarded=discarded)


def _check_endpoint(endpoint: str) -> None:
    """Reject a tcp port outside 1-65535, which libzmq 4.3 would silently replace by a random port."""
    if not endpoint.startswith("tcp://"):
        return
    _, separator, port = endpoint[len("tcp://") :].rpartition(":")
    if not separator or port == "*":
        return
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise PublishError(
            f"cannot bind the result publisher to {endpoint}: port {port!r} is not a number from 1 to 65535 "
            "or * (any free port); fix publish.endpoint (--endpoint), for example tcp://0.0.0.0:5556"
        )


def _bind_error_message(endpoint: str, error: zmq.ZMQError) -> str:
    fixes = {
        errno.EADDRINUSE: "another process is bound to it; stop that process or set publish.endpoint (--endpoint) to a free port",
        errno.EADDRNOTAVAIL: "the address is not one of this machine's; use one of its addresses, "
        "or tcp://0.0.0.0:PORT for all interfaces",
        errno.ENODEV: "the host or interface name is unknown; use an IP address, an interface name, "
        "or tcp://0.0.0.0:PORT for all interfaces",
        errno.ENOENT: "the folder of the ipc path does not exist; create it or choose another path",
        errno.EACCES: "permission denied; use a port above 1023 or an ipc path this user may write",
        errno.EINVAL: "the endpoint is invalid; use tcp://HOST:PORT, ipc:///path/to/socket or inproc://name",
        errno.EPROTONOSUPPORT: "the transport is not supported by this ZeroMQ build; use tcp://HOST:PORT",
    }
    fix = fixes.get(error.errno, "check publish.endpoint (--endpoint)")
    return f"cannot bind the result publisher to {endpoint} ({error.strerror}): {fix}"
