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

With line I/O configured, a part can also be refused at the entry while the light controller
has not confirmed its recipe (`light_fault`), and the PLC's part-present messages replace free-run
capture (`trigger.mode: plc`), and a gap in the PLC's part counter makes `missed_trigger` parts.
Every part is registered with the reject scheduler in capture order. A part that reaches the
ejector without a verdict is published as REJECT `late` and rejected.

Stopping (SIGTERM, Ctrl-C, end of a finite source or `max_parts`) ends capture first, then the
stages drain their queues. Parts still queued when `drain_timeout_s` has passed are rejected with
reason `shutdown` instead of inspected, so the process ends in bounded time with every captured
part published. Parts in transit to the ejector are then served before the ports close.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from typing import Callable

import structlog

from edge.acquisition.base import FrameSource, SourceTimeout
from edge.config import AppConfig
from edge.lineio.base import LineIOError
from edge.lineio.line_io import LineIO
from edge.inference.models import ModelOutput
from edge.inference.watchdog import InferenceWatchdog
from edge.inspector import Inspector
from edge.log import RepeatLimiter
from edge.parts import Frame, Part, RejectReason, Verdict
from edge.inference.package import PackageError
from edge.inference.session import SessionError
from edge.preprocess.ring import RingNotFound
from edge.preprocess.transform import Roi
from edge.publish.messages import MessageError
from edge.publish.publisher import ResultPublisher
from edge.publish.stats import PipelineStats

log = structlog.get_logger(__name__)

_END = object()
_POLL_S = 0.1
# After the drain deadline, stages get this long to finish before their parts are rejected for them.
FORCED_STOP_GRACE_S = 1.0
# Maximum wait at stop for parts in transit to reach the ejector.
MAX_TRANSIT_WAIT_S = 3.0
STAGE_REJECT_REASONS = {
    "preprocess": RejectReason.PREPROCESS_ERROR,
    "inference": RejectReason.INFERENCE_ERROR,
    "decision": RejectReason.DECISION_ERROR,
}


class Pipeline:
    """Wires source, inspector stages and publisher; `run` blocks until the pipeline has drained."""

    def __init__(
        self,
        config: AppConfig,
        source: FrameSource,
        inspector: Inspector,
        stats: PipelineStats | None = None,
        line: LineIO | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.inspector = inspector
        self.line = line
        self.stats = stats or PipelineStats()
        self.stop_requested = threading.Event()
        # Set once the line I/O and the source are open and capture runs.
        self.capture_started = threading.Event()
        self.failure: str | None = None
        self._drain_deadline: float | None = None
        self._next_part_id = 1
        self._errors = RepeatLimiter(log)
        self._watchdog = InferenceWatchdog(config.inference.timeout_ms / 1000.0)
        self._finish_lock = threading.Lock()
        self._abandoned = threading.Event()
        # The part each thread has taken and not yet handed on, by thread name, for a forced stop.
        self._in_flight: dict[str, Part] = {}

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
            count_send_drops=config.publish.count_send_drops,
        )

    def status(self) -> dict:
        """Return the counters, queue depths and source state for the status message."""
        depths = {name: stage_queue.qsize() for name, stage_queue in self._queues.items()}
        depths["publish"] = self.publisher.queue_depth
        status = self.stats.snapshot(queue_depths=depths, source=self.source.describe())
        if self.line is not None:
            status["line_io"] = self.line.describe(drain_recent=True)
        return status

    def request_stop(self) -> None:
        """Stop capture and drain. Safe to call from a signal handler, so it neither logs nor blocks."""
        if not self.stop_requested.is_set():
            self._drain_deadline = time.monotonic() + self.config.pipeline.drain_timeout_s
            self.stop_requested.set()

    def run(self) -> dict:
        """Run until the source ends, `max_parts` is reached or a stop is requested; return the summary.

        Raises SourceError when the source cannot be opened, before any part is published. A
        source that fails later ends the run, and `failure` then gives the reason.
        """
        self.publisher.start()
        # Subscribers that are already waiting connect during the grace period. The source opens
        # after it, so a live source does not count the wait as missed frames.
        self.stop_requested.wait(self.config.publish.subscriber_grace_ms / 1000.0)
        if self.stop_requested.is_set():
            self._stop_publisher()
            return self.status()
        if self.line is not None:
            try:
                self.line.open(settle=self._settle_at_ejector)
            except LineIOError:
                self._stop_publisher()
                raise
        try:
            self.source.open()
        except Exception:
            self._close_line()
            self._stop_publisher()
            raise

        self._watchdog.start()
        threads = [
            threading.Thread(target=self._acquire, name="acquisition", daemon=True),
            threading.Thread(target=self._stage_loop, args=("preprocess", self._preprocess, "inference"),
                             name="preprocess", daemon=True),
            threading.Thread(target=self._stage_loop, args=("inference", self._infer, "decision"),
                             name="inference", daemon=True),
            threading.Thread(target=self._stage_loop, args=("decision", self._decide, None),
                             name="decision", daemon=True),
        ]
        log.info("pipeline started", source=self.source.name, queue_size=self.config.pipeline.queue_size,
                 model=self.inspector.package.identity())
        for thread in threads:
            thread.start()
        self.capture_started.set()
        try:
            self._join(threads)
        finally:
            self._watchdog.stop()
            self._close_line()
            self._stop_publisher()

        summary = self.status()
        log.info("pipeline stopped", counters=summary["counters"], rejected_by_reason=summary["rejected_by_reason"],
                 failure=self.failure)
        return summary

    def _join(self, threads: list[threading.Thread]) -> None:
        """Wait for the stages; after the drain deadline, terminate inference, then stop waiting."""
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=_POLL_S)
                if self._drain_deadline is None or time.monotonic() <= self._drain_deadline:
                    continue
                self._watchdog.terminate_current()
                if time.monotonic() > self._drain_deadline + FORCED_STOP_GRACE_S:
                    self._reject_abandoned_parts([stage.name for stage in threads if stage.is_alive()])
                    return

    def _stop_publisher(self) -> None:
        self.publisher.stop(timeout_s=self.config.publish.linger_ms / 1000.0 + 1.0)

    def _close_line(self) -> None:
        if self.line is None:
            return
        reject = self.config.line_io.reject
        transit_s = reject.delay_ms / 1000.0 + 0.5 if reject is not None and reject.timing == "delay" else MAX_TRANSIT_WAIT_S
        self.line.close(transit_timeout_s=min(transit_s, MAX_TRANSIT_WAIT_S))

    # Stages

    def _acquire(self) -> None:
        try:
            mode = self.line.trigger_mode if self.line is not None else "free_run"
            if mode == "plc":
                self._acquire_on_plc_trigger()
            elif mode == "software":
                self._acquire_on_software_trigger()
            else:
                self._acquire_free_run()
            if self.stop_requested.is_set():
                log.info("capture ended: stop requested", source=self.source.name)
        except Exception as error:  # any source failure ends capture, and the exit code reports it
            self.failure = f"source {self.source.name} failed: {error}"
            log.error("source failed", source=self.source.name, error=repr(error))
        finally:
            try:
                self.source.close()
            except Exception as error:
                log.error("source close failed", source=self.source.name, error=repr(error))
            # The end of a finite source drains without a deadline; only a stop request sets one.
            self._put_blocking(self._queues["preprocess"], _END)

    def _capture_allowed(self) -> bool:
        max_parts = self.config.pipeline.max_parts
        if max_parts is not None and self._next_part_id > max_parts:
            log.info("capture ended: max parts reached", max_parts=max_parts)
            return False
        return not self.stop_requested.is_set()

    def _acquire_free_run(self) -> None:
        read_timeout_s = min(self.config.source.read_timeout_ms / 1000.0, 0.5)
        while self._capture_allowed():
            try:
                frame = self.source.read(timeout_s=read_timeout_s)
            except SourceTimeout:
                continue
            if frame is None:
                log.info("capture ended: end of source", source=self.source.name)
                return
            self._admit(self._new_part(frame), frame.capture_monotonic_ns, live=self.source.live)

    def _acquire_on_plc_trigger(self) -> None:
        """Capture one part per part-present message from the PLC, with the newest frame of the camera."""
        while self._capture_allowed():
            event, missed = self.line.next_trigger(timeout_s=_POLL_S)
            if event is None:
                continue
            for _ in range(missed):
                part = self._new_part(Frame(None, time.time_ns(), event.monotonic_ns, "trigger", "no trigger received"))
                self._admit(part, event.monotonic_ns, live=True, reason=RejectReason.MISSED_TRIGGER,
                            detail="the PLC counted a part that no trigger message announced",
                            reference_counts=event.encoder_counts)
            if not self._triggered_capture(event.monotonic_ns, event.encoder_counts):
                return

    def _acquire_on_software_trigger(self) -> None:
        """Capture one part per period of the station's own trigger clock."""
        period_ns = int(self.config.line_io.trigger.period_ms * 1e6)
        due_ns = time.monotonic_ns()
        while self._capture_allowed():
            wait_s = (due_ns - time.monotonic_ns()) / 1e9
            if wait_s > 0 and self.stop_requested.wait(wait_s):
                return
            trigger_ns = time.monotonic_ns()
            due_ns += period_ns
            if due_ns < trigger_ns:
                due_ns = trigger_ns + period_ns
            try:
                self.line.software_trigger()
            except LineIOError as error:
                part = self._new_part(Frame(None, time.time_ns(), trigger_ns, "trigger", str(error)))
                self._admit(part, trigger_ns, live=True, reason=RejectReason.LIGHT_FAULT, detail=f"strobe trigger failed: {error}")
                continue
            if not self._triggered_capture(trigger_ns):
                return

    def _triggered_capture(self, trigger_ns: int, reference_counts: int | None = None) -> bool:
        """Take the newest frame for a trigger; return False when the source has ended."""
        timeout_s = self.config.line_io.trigger.frame_timeout_ms / 1000.0
        try:
            frame = self.source.read(timeout_s=timeout_s)
        except SourceTimeout as error:
            self.line.count_trigger_without_frame()
            frame = Frame(None, time.time_ns(), trigger_ns, "trigger", f"no frame within {timeout_s * 1000:.0f} ms of the trigger: {error}")
        if frame is None:
            log.info("capture ended: end of source", source=self.source.name)
            return False
        self._admit(self._new_part(frame), trigger_ns, live=True, reference_counts=reference_counts)
        return True

    def _new_part(self, frame: Frame) -> Part:
        part = Part(part_id=self._next_part_id, frame=frame)
        self._next_part_id += 1
        self.stats.count_frame()
        return part

    def _admit(self, part: Part, reference_ns: int, live: bool, reason: RejectReason | None = None,
               detail: str | None = None, reference_counts: int | None = None) -> None:
        """Register a new part for the ejector, then queue it or reject it at the entry."""
        if self.line is not None:
            self.line.register(part, reference_ns, reference_counts)
        if reason is None and self.line is not None and not self.line.light_ok():
            self.line.count_light_fault()
            reason, detail = RejectReason.LIGHT_FAULT, "the light controller has not confirmed the recipe"

        if reason is not None:
            self._finish(part.reject(reason, detail))
        elif part.frame.image is None:
            self._finish(part.reject(RejectReason.BAD_FRAME, part.frame.error))
        elif live:
            self._offer(self._queues["preprocess"], part)
        else:
            self._put_or_reject(self._queues["preprocess"], part)

    def _stage_loop(self, name: str, work: Callable[[Part], None], downstream: str | None) -> None:
        inbox = self._queues[name]
        outbox = self._queues[downstream] if downstream else None
        while True:
            item = inbox.get()
            if item is _END:
                if outbox is not None:
                    self._put_blocking(outbox, _END)
                return
            self._in_flight[name] = item
            try:
                self._process(name, work, item, outbox)
            finally:
                self._in_flight.pop(name, None)

    def _process(self, name: str, work: Callable[[Part], None], part: Part, outbox: queue.Queue | None) -> None:
        if part.finished:
            return  # published already: it reached the ejector first and was rejected as late
        if self._drain_expired():
            self._finish(part.reject(RejectReason.SHUTDOWN, f"not inspected within the drain timeout, at {name}"))
            return

        started = time.perf_counter()
        try:
            work(part)
        except RingNotFound as error:
            # A part without a visible ring is a property of the part, not a stage failure.
            part.stage_ms[name] = (time.perf_counter() - started) * 1000.0
            self._errors.warning("part rejected: ring not found", part_id=part.part_id, error=str(error))
            self._finish(part.reject(RejectReason.RING_NOT_FOUND, str(error)))
            return
        except Exception as error:  # one part's failure must never stop the line
            part.stage_ms[name] = (time.perf_counter() - started) * 1000.0
            self._errors.error(f"{name} failed", part_id=part.part_id, error=repr(error))
            self._finish(part.reject(STAGE_REJECT_REASONS[name], str(error)))
            return
        part.stage_ms[name] = (time.perf_counter() - started) * 1000.0

        if outbox is None:
            self._finish(part)
        else:
            self._put_blocking(outbox, part)

    def _preprocess(self, part: Part) -> None:
        part.model_input = self.inspector.preprocess(part.frame.image)

    def _infer(self, part: Part) -> None:
        output = self._watchdog.run(lambda run_options: self.inspector.infer(part.model_input, run_options))
        if not math.isfinite(output.image_score):
            raise ValueError(f"the model returned a non-finite image score ({output.image_score})")
        part.anomaly_map = output.anomaly_map
        part.image_score = output.image_score
        # The decision needs the ring geometry only; a part rejected meanwhile has no input left.
        if part.model_input is not None:
            part.model_input = part.model_input.without_tensor()

    def _decide(self, part: Part) -> None:
        output = ModelOutput(part.anomaly_map, part.image_score)
        decision = self.inspector.decide(output, part.model_input, part.frame.image.shape)
        part.verdict, part.regions = decision.verdict, decision.regions
        part.anomaly_map = decision.anomaly_map
        part.reason = None
        part.map_frame_xywh = decision.map_frame_xywh
        part.model_input = None

    # Hand-over and publishing

    def _finish(self, part: Part) -> None:
        """Publish a part whose verdict is final; a part that was already published is skipped."""
        with self._finish_lock:
            if part.finished:
                return
            part.finished = True
        part.stamp_decision()
        part.frame.image = None
        self.stats.record_part(part)
        self.publisher.submit(part)

    def _settle_at_ejector(self, part: Part) -> tuple[bool, bool]:
        """Called when a part reaches the ejector: return (reject, late).

        A part without a verdict yet is published now as REJECT `late`, and the stage that is
        still working on it drops it later. The published record is a copy, so no stage thread and the
        publisher ever touch the same object at once.
        """
        with self._finish_lock:
            if part.finished:
                return part.verdict is not Verdict.PASS, False
            part.finished = True
        frame = part.frame
        late = Part(
            part_id=part.part_id,
            frame=Frame(None, frame.capture_time_ns, frame.capture_monotonic_ns, frame.source_ref),
            stage_ms=dict(part.stage_ms),
        )
        late.reject(RejectReason.LATE, "the part reached the ejector before its verdict")
        late.finished = True
        late.stamp_decision()
        self.stats.record_part(late)
        self.publisher.submit(late)
        self._errors.warning("part rejected: late", part_id=part.part_id)
        return True, True

    def _offer(self, entry: queue.Queue, part: Part) -> None:
        try:
            entry.put_nowait(part)
        except queue.Full:
            self._errors.warning("part rejected: overload", part_id=part.part_id, queue_size=entry.maxsize)
            self._finish(part.reject(RejectReason.OVERLOAD, "preprocess queue full"))

    def _put_or_reject(self, entry: queue.Queue, part: Part) -> None:
        self._in_flight["acquisition"] = part
        try:
            if not self._put_until(entry, part, self.stop_requested):
                self._finish(part.reject(RejectReason.SHUTDOWN, "captured while stopping"))
        finally:
            self._in_flight.pop("acquisition", None)

    def _put_blocking(self, target: queue.Queue, item: object) -> None:
        # Downstream stages consume until they receive _END, so this wait ends unless a stage is
        # stuck. A forced stop then sets _abandoned, and the part this thread has is rejected for it.
        self._put_until(target, item, self._abandoned)

    def _put_until(self, target: queue.Queue, item: object, give_up: threading.Event) -> bool:
        """Wait for room in `target`; return False without putting when `give_up` is set first."""
        while not give_up.is_set():
            try:
                target.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _reject_abandoned_parts(self, stuck_threads: list[str]) -> None:
        """Publish every part still queued or held by a stuck stage as REJECT with reason `shutdown`."""
        self._abandoned.set()
        parts = list(self._in_flight.values())
        for stage_queue in self._queues.values():
            while True:
                try:
                    item = stage_queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, Part):
                    parts.append(item)
        for part in parts:
            self._finish(part.reject(RejectReason.SHUTDOWN, "a pipeline stage did not stop within the drain timeout"))
        log.error("stages did not stop within the drain timeout; their parts were rejected",
                  stuck_threads=stuck_threads, rejected=len(parts))

    def _drain_expired(self) -> bool:
        return self._drain_deadline is not None and time.monotonic() > self._drain_deadline


class DaemonError(RuntimeError):
    """The daemon cannot start as configured; the message states what to change."""


def build_pipeline(config: AppConfig, source: FrameSource) -> Pipeline:
    """Load the model package named by the config and wire it to the source and the publisher."""
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
    line = None
    if LineIO.configured(config.line_io):
        try:
            line = LineIO(config.line_io)
        except (LineIOError, ValueError) as error:
            raise DaemonError(f"cannot set up the line I/O: {error}") from error
    try:
        return Pipeline(config, source, inspector, line=line)
    except (ValueError, MessageError) as error:
        raise DaemonError(f"cannot publish with this model and config: {error}") from error
