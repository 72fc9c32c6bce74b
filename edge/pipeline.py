"""The inspection pipeline: stages in their own threads, joined by bounded queues.

    acquisition -> [queue] -> preprocess -> [queue] -> inference -> [queue] -> decision -> publisher

Queue policy, fail-safe by construction:
- Acquisition never waits on a live source (a camera, or a replay with a rate): when the first
  queue is full the new part is published at once as REJECT with reason `overload`.
- A replay source without a rate is paced by the pipeline instead, so replaying a folder as fast
  as possible inspects every image.
- The later stages wait for room downstream; the only place a part can be refused is the entry.
- Every captured part leaves through `_finish`, which publishes it. A part that cannot be
  inspected (undecodable frame, preprocessing, inference or decision error, shutdown) is
  published as REJECT with its reason.

Stopping (SIGTERM, Ctrl-C, end of a finite source or `max_parts`) ends capture first, then the
stages drain their queues. Parts still queued when `drain_timeout_s` has passed are rejected with
reason `shutdown` instead of inspected, so the process ends in bounded time with every captured
part published.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from typing import Callable

import structlog

from edge.acquisition.base import FrameSource, SourceError, SourceTimeout
from edge.config import AppConfig
from edge.inference.models import ModelOutput
from edge.inspector import Inspector
from edge.log import RepeatLimiter
from edge.parts import Part, RejectReason
from edge.publish.publisher import ResultPublisher
from edge.publish.stats import PipelineStats

log = structlog.get_logger(__name__)

_END = object()
_POLL_S = 0.1


class Pipeline:
    """Wires source, inspector stages and publisher; `run` blocks until the pipeline has drained."""

    def __init__(self, config: AppConfig, source: FrameSource, inspector: Inspector, stats: PipelineStats | None = None) -> None:
        self.config = config
        self.source = source
        self.inspector = inspector
        self.stats = stats or PipelineStats()
        self.stop_requested = threading.Event()
        self._drain_deadline: float | None = None
        self._next_part_id = 1
        self._errors = RepeatLimiter(log)

        size = config.pipeline.queue_size
        self._queues: dict[str, queue.Queue] = {
            "preprocess": queue.Queue(maxsize=size),
            "inference": queue.Queue(maxsize=size),
            "decision": queue.Queue(maxsize=size),
        }
        self.publisher = ResultPublisher(
            config.publish,
            config.station,
            inspector.package.identity(),
            inspector.thresholds,
            self.stats,
            status_provider=self.status,
        )
        self._result_listeners: list[Callable[[Part], None]] = []

    def add_result_listener(self, listener: Callable[[Part], None]) -> None:
        """Call `listener(part)` for every finished part, from the thread that finished it."""
        self._result_listeners.append(listener)

    def status(self) -> dict:
        """Return the counters, queue depths and source state for the status message."""
        depths = {name: stage_queue.qsize() for name, stage_queue in self._queues.items()}
        return self.stats.snapshot(queue_depths=depths, source=self.source.describe())

    def request_stop(self) -> None:
        """Stop capture and drain; safe to call from a signal handler."""
        if not self.stop_requested.is_set():
            self._drain_deadline = time.monotonic() + self.config.pipeline.drain_timeout_s
            self.stop_requested.set()

    def run(self) -> dict:
        """Run until the source ends, `max_parts` is reached or a stop is requested; return the summary.

        Raises SourceError when the source cannot be opened, before any part is published.
        """
        self.publisher.start()
        # Subscribers that are already waiting connect during the grace period; the source opens
        # after it, so a live source does not count the wait as frames missed.
        self.stop_requested.wait(self.config.publish.subscriber_grace_ms / 1000.0)
        try:
            self.source.open()
        except Exception:
            self.publisher.stop(timeout_s=1.0)
            raise
        threads = [
            threading.Thread(target=self._acquire, name="acquisition", daemon=True),
            threading.Thread(target=self._stage_loop, args=("preprocess", self._preprocess, "inference"), name="preprocess", daemon=True),
            threading.Thread(target=self._stage_loop, args=("inference", self._infer, "decision"), name="inference", daemon=True),
            threading.Thread(target=self._stage_loop, args=("decision", self._decide, None), name="decision", daemon=True),
        ]
        log.info("pipeline started", source=self.source.name, queue_size=self.config.pipeline.queue_size,
                 model=self.inspector.package.identity())
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=_POLL_S)
        finally:
            self.publisher.stop(timeout_s=1.5)
        summary = self.status()
        log.info("pipeline stopped", counters=summary["counters"], rejected_by_reason=summary["rejected_by_reason"])
        return summary

    # Stages

    def _acquire(self) -> None:
        entry = self._queues["preprocess"]
        max_parts = self.config.pipeline.max_parts
        read_timeout_s = self.config.source.read_timeout_ms / 1000.0
        try:
            while not self.stop_requested.is_set():
                if max_parts is not None and self._next_part_id > max_parts:
                    log.info("max parts reached", max_parts=max_parts)
                    break
                try:
                    frame = self.source.read(timeout_s=min(read_timeout_s, 0.5))
                except SourceTimeout:
                    continue
                if frame is None:
                    log.info("capture ended: end of source", source=self.source.name)
                    break

                part = Part(part_id=self._next_part_id, frame=frame)
                self._next_part_id += 1
                self.stats.count_frame()
                if frame.image is None:
                    self._finish(part.reject(RejectReason.BAD_FRAME, frame.error))
                elif self.source.live:
                    self._offer(entry, part)
                else:
                    self._put_or_reject(entry, part)
        except SourceError as error:
            log.error("source failed", source=self.source.name, error=str(error))
        finally:
            self.source.close()
            # The end of a finite source drains without a deadline; only a stop request sets one.
            self._put_blocking(entry, _END)

    def _stage_loop(self, name: str, work: Callable[[Part], bool], downstream: str | None) -> None:
        inbox = self._queues[name]
        outbox = self._queues[downstream] if downstream else None
        while True:
            item = inbox.get()
            if item is _END:
                if outbox is not None:
                    self._put_blocking(outbox, _END)
                return
            part: Part = item
            if self._drain_expired():
                self._finish(part.reject(RejectReason.SHUTDOWN, f"not inspected within the drain timeout, at {name}"))
                continue
            started = time.perf_counter()
            passed_on = work(part)
            part.stage_ms[name] = (time.perf_counter() - started) * 1000.0
            if not passed_on:
                continue
            if outbox is None:
                self._finish(part)
            else:
                self._put_blocking(outbox, part)

    def _preprocess(self, part: Part) -> bool:
        try:
            part.tensor = self.inspector.preprocessor(part.frame.image)
            return True
        except Exception as error:  # a bad frame must never stop the line
            self._errors.error("preprocessing failed", part_id=part.part_id, error=repr(error))
            self._finish(part.reject(RejectReason.PREPROCESS_ERROR, str(error)))
            return False

    def _infer(self, part: Part) -> bool:
        try:
            output = self.inspector.model.run(part.tensor)
        except Exception as error:  # onnxruntime raises untyped errors
            self._errors.error("inference failed", part_id=part.part_id, error=repr(error))
            self._finish(part.reject(RejectReason.INFERENCE_ERROR, str(error)))
            return False
        if not math.isfinite(output.image_score):
            self._errors.error("inference returned a non-finite image score", part_id=part.part_id, image_score=output.image_score)
            self._finish(part.reject(RejectReason.INFERENCE_ERROR, f"image score is {output.image_score}"))
            return False
        part.anomaly_map = output.anomaly_map
        part.image_score = output.image_score
        part.tensor = None
        return True

    def _decide(self, part: Part) -> bool:
        try:
            output = ModelOutput(part.anomaly_map, part.image_score)
            frame_shape = part.frame.image.shape
            to_frame = self.inspector.preprocessor.map_to_frame(frame_shape)
            part.verdict, part.regions = self.inspector.decider.decide(output, to_frame)
            part.map_frame_xywh = self.inspector.preprocessor.covered_area(frame_shape)
            part.reason = None
            return True
        except Exception as error:
            self._errors.error("decision failed", part_id=part.part_id, error=repr(error))
            self._finish(part.reject(RejectReason.DECISION_ERROR, str(error)))
            return False

    # Queue helpers

    def _finish(self, part: Part) -> None:
        """Publish a part whose verdict is final; every captured part passes here exactly once."""
        part.stamp_decision()
        part.frame.image = None
        self.stats.record_part(part)
        self.publisher.submit(part)
        for listener in self._result_listeners:
            listener(part)

    def _offer(self, entry: queue.Queue, part: Part) -> None:
        try:
            entry.put_nowait(part)
        except queue.Full:
            self._errors.warning("part rejected: overload", part_id=part.part_id, queue_size=entry.maxsize)
            self._finish(part.reject(RejectReason.OVERLOAD, "preprocess queue full"))

    def _put_or_reject(self, entry: queue.Queue, part: Part) -> None:
        while not self.stop_requested.is_set():
            try:
                entry.put(part, timeout=_POLL_S)
                return
            except queue.Full:
                continue
        self._finish(part.reject(RejectReason.SHUTDOWN, "captured while stopping"))

    def _put_blocking(self, target: queue.Queue, item: object) -> None:
        # Downstream stages consume until they see _END, so this wait always ends.
        while True:
            try:
                target.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _drain_expired(self) -> bool:
        return self._drain_deadline is not None and time.monotonic() > self._drain_deadline


class DaemonError(RuntimeError):
    """The daemon cannot start as configured; the message states what to change."""


def build_pipeline(config: AppConfig, source: FrameSource) -> Pipeline:
    """Load the model package named by the config and wire it to the source and the publisher."""
    from edge.inference.package import PackageError
    from edge.inference.session import SessionError
    from edge.preprocess.transform import Roi

    roi = Roi(**config.preprocess.roi.model_dump()) if config.preprocess.roi else None
    try:
        inspector = Inspector.from_path(
            config.model.path,
            inference=config.inference,
            decision=config.decision,
            roi=roi,
            image_threshold=config.model.image_threshold,
            pixel_threshold=config.model.pixel_threshold,
        )
    except (PackageError, SessionError) as error:
        raise DaemonError(str(error)) from error
    return Pipeline(config, source, inspector)
