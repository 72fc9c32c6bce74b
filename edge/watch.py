"""A subscriber for the daemon's results: prints one line per message and can save heat maps.

Run it as `edge-inspect watch --endpoint tcp://127.0.0.1:5556 --save maps --count 100`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np
import zmq

from edge.parts import Region
from edge.preprocess.transform import Roi
from edge.publish.messages import RESULT_PREFIX, STATUS_PREFIX, MessageError, decode_result
from edge.visualize import overlay_anomaly_map

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
DEFAULT_TOPICS = ("result.", "status.")
DEFAULT_RCV_HWM = 100
POLL_INTERVAL_MS = 100
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000
# Part ids this far below the highest one seen are no longer expected to arrive late.
REORDER_WINDOW = 10_000
MAX_PRINTED_DECODE_ERRORS = 5


@dataclass
class _RunState:
    run_id: str | None
    highest_part_id: int
    missing: set[int] = field(default_factory=set)


class PartIdTracker:
    """Count part ids missing from the results of each topic.

    Parts can arrive out of order, because rejects and inspected parts leave the pipeline from
    different stages, so a missing id counts as lost only once it is REORDER_WINDOW ids behind
    the highest one seen, or at the end. Ids before the first result of a run are never
    counted, because a subscriber that joins late misses them by design. A new `run_id`, or an
    id seen again when the publisher sends no run id, starts a new run.
    """

    def __init__(self, reorder_window: int = REORDER_WINDOW) -> None:
        self.reorder_window = reorder_window
        self.lost = 0
        self.reordered = 0
        self.duplicates = 0
        self.restarts = 0
        self._runs: dict[str, _RunState] = {}

    @property
    def missing(self) -> int:
        """Part ids lost so far plus those still missing within the reorder window."""
        return self.lost + sum(len(state.missing) for state in self._runs.values())

    def observe(self, topic: str, run_id: str | None, part_id: int) -> None:
        state = self._runs.get(topic)
        if state is None:
            self._runs[topic] = _RunState(run_id, part_id)
            return

        if run_id != state.run_id:
            self._restart(topic, run_id, part_id)
            return

        if part_id > state.highest_part_id:
            first_missing = state.highest_part_id + 1
            skipped = part_id - first_missing
            if skipped > self.reorder_window:
                self.lost += skipped - self.reorder_window
                first_missing = part_id - self.reorder_window
            state.missing.update(range(first_missing, part_id))
            state.highest_part_id = part_id
            self._expire(state)
        elif part_id in state.missing:
            state.missing.discard(part_id)
            self.reordered += 1
        elif run_id is None:
            self._restart(topic, run_id, part_id)
        else:
            self.duplicates += 1

    def _restart(self, topic: str, run_id: str | None, part_id: int) -> None:
        self.lost += len(self._runs[topic].missing)
        self.restarts += 1
        self._runs[topic] = _RunState(run_id, part_id)

    def _expire(self, state: _RunState) -> None:
        oldest_expected = state.highest_part_id - self.reorder_window
        expired = [part_id for part_id in state.missing if part_id < oldest_expected]
        for part_id in expired:
            state.missing.discard(part_id)
        self.lost += len(expired)


def render_heat_map(anomaly_map: np.ndarray, header: dict) -> np.ndarray:
    """Colour a decoded anomaly map with the JET colour map; return a BGR uint8 image.

    The scale is the one of the png8 encoding (the pixel threshold is the middle colour) when
    the header gives it, [0, 2 * pixel_threshold] for a float16 map with a positive threshold,
    and the map's own range otherwise.
    """
    map_info = header.get("map") or {}
    threshold = header.get("pixel_threshold")
    if "scale_min" in map_info and "scale_max" in map_info:
        low, high = float(map_info["scale_min"]), float(map_info["scale_max"])
    elif isinstance(threshold, (int, float)) and threshold > 0:
        low, high = 0.0, 2.0 * float(threshold)
    else:
        finite = anomaly_map[np.isfinite(anomaly_map)]
        low = float(finite.min()) if finite.size else 0.0
        high = float(finite.max()) if finite.size else 1.0

    if high <= low:
        high = low + 1.0
    scaled = np.nan_to_num((anomaly_map.astype(np.float64) - low) / (high - low), nan=0.0)
    levels = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.applyColorMap(levels, cv2.COLORMAP_JET)


def format_result(header: dict) -> str:
    """Return the one-line summary of a result header."""
    score = header.get("image_score")
    threshold = header.get("image_threshold")
    score_text = "-" if score is None else f"{score:.4f}"
    threshold_text = "-" if threshold is None else f"{threshold:.4f}"
    total_ms = (header.get("latency_ms") or {}).get("total")
    total_text = "-" if total_ms is None else f"{total_ms:.1f}ms"
    model = header.get("model") or {}

    fields = [
        str(header.get("decision_time", "-")),
        f"{header.get('line')}/{header.get('station')}",
        f"part={header.get('part_id')}",
        str(header.get("verdict")),
    ]
    if header.get("reason"):
        fields.append(f"reason={header['reason']}")
    fields += [
        f"score={score_text}/{threshold_text}",
        f"regions={len(header.get('regions') or [])}",
        f"total={total_text}",
        f"model={model.get('name', '-')}@{model.get('version', '-')}",
    ]
    # A REJECT's detail gives the reason the part was not inspected (a frame smaller than the window, a timeout).
    if header.get("detail"):
        fields.append(f"detail={json.dumps(header['detail'])}")
    return " ".join(fields)


def format_status(header: dict) -> str:
    """Return the one-line summary of a status header."""
    counters = header.get("counters") or {}
    source = header.get("source") or {}
    total = (header.get("latency_ms") or {}).get("total") or {}
    p99_ms = total.get("p99")

    fields = [
        str(header.get("time", "-")),
        f"{header.get('line')}/{header.get('station')}",
        f"status seq={header.get('sequence')}",
        f"frames={counters.get('frames', '-')}",
        f"pass={counters.get('pass', '-')}",
        f"fail={counters.get('fail', '-')}",
        f"reject={counters.get('reject', '-')}",
        f"published={counters.get('published', '-')}",
        f"send_dropped={counters.get('send_dropped', '-')}",
        f"source={source.get('state', '-')}",
        f"p99_total={'-' if p99_ms is None else f'{p99_ms:.1f}ms'}",
    ]
    if header.get("status_error"):
        fields.append(f"status_error={header['status_error']!r}")
    if header.get("final"):
        fields.append("final")
    return " ".join(fields)


def watch(
    endpoint: str,
    save_dir: Path | str | None = None,
    max_results: int | None = None,
    timeout_s: float | None = None,
    topics: tuple[str, ...] | list[str] = DEFAULT_TOPICS,
    out: TextIO = sys.stdout,
    rcv_hwm: int = DEFAULT_RCV_HWM,
    context: zmq.Context | None = None,
    images_dir: Path | str | None = None,
) -> dict:
    """Subscribe to `endpoint`, print a line per message and return a summary.

    Stops after `max_results` results, after `timeout_s` seconds in total, or on Ctrl-C.
    With `save_dir`, each result that carries a map is saved as a heat map named
    `<run id>_<part id>_<verdict>.png`, so a restarted daemon does not overwrite earlier files.
    The camera image is not published. When `images_dir` is the folder a replay reads, the
    image named by each result's `source_ref` is loaded from it and the map is drawn over it as
    an overlay instead. Topics are prefixes, so "result.line1.station1" also matches
    "result.line1.station10".
    """
    _check_tcp_port(endpoint)
    save_path = Path(save_dir) if save_dir is not None else None
    images_path = Path(images_dir) if images_dir is not None else None
    if save_path is not None:
        try:
            save_path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create the folder {save_path} for saved maps ({error.strerror}); "
                             "choose a writable folder") from error

    owns_context = context is None
    context = context or zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, rcv_hwm)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    for topic in topics:
        socket.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))

    try:
        socket.connect(endpoint)
    except zmq.ZMQError as error:
        socket.close(linger=0)
        if owns_context:
            context.term()
        raise ValueError(
            f"cannot connect to {endpoint} ({error.strerror}); use tcp://HOST:PORT, ipc:///path or inproc://name"
        ) from error

    print(f"# watching {endpoint} topics {', '.join(topics)}", file=out, flush=True)
    summary = _Summary()
    started_s = time.monotonic()
    deadline_s = None if timeout_s is None else started_s + timeout_s

    try:
        summary.stopped_by = _receive_until_done(socket, summary, save_path, images_path, max_results, deadline_s, out)
    except KeyboardInterrupt:
        summary.stopped_by = "interrupt"
    finally:
        socket.close(linger=0)
        if owns_context:
            context.term()

    return summary.as_dict(time.monotonic() - started_s)


@dataclass
class _Summary:
    results: int = 0
    statuses: int = 0
    by_verdict: dict[str, int] = field(default_factory=dict)
    undecodable: int = 0
    maps_saved: int = 0
    save_errors: int = 0
    stopped_by: str = ""
    part_ids: PartIdTracker = field(default_factory=PartIdTracker)

    def as_dict(self, duration_s: float) -> dict:
        return {
            "results": self.results,
            "by_verdict": dict(self.by_verdict),
            "gaps": self.part_ids.missing,
            "reordered": self.part_ids.reordered,
            "duplicates": self.part_ids.duplicates,
            "restarts": self.part_ids.restarts,
            "statuses": self.statuses,
            "undecodable": self.undecodable,
            "maps_saved": self.maps_saved,
            "save_errors": self.save_errors,
            "duration_s": round(duration_s, 3),
            "stopped_by": self.stopped_by,
        }


def _receive_until_done(
    socket: zmq.Socket,
    summary: _Summary,
    save_path: Path | None,
    images_path: Path | None,
    max_results: int | None,
    deadline_s: float | None,
    out: TextIO,
) -> str:
    """Receive and handle messages; return why receiving stopped ("max_results" or "timeout")."""
    while max_results is None or summary.results < max_results:
        wait_ms = POLL_INTERVAL_MS
        if deadline_s is not None:
            remaining_ms = (deadline_s - time.monotonic()) * 1000.0
            if remaining_ms <= 0:
                return "timeout"
            wait_ms = int(min(wait_ms, max(remaining_ms, 1.0)))

        if not socket.poll(wait_ms, zmq.POLLIN):
            continue
        frames = socket.recv_multipart(zmq.NOBLOCK)
        _handle_message(frames, summary, save_path, images_path, out)
    return "max_results"


def _handle_message(
    frames: list[bytes], summary: _Summary, save_path: Path | None, images_path: Path | None, out: TextIO
) -> None:
    try:
        topic, header, anomaly_map = decode_result(frames)
    except MessageError as error:
        summary.undecodable += 1
        if summary.undecodable <= MAX_PRINTED_DECODE_ERRORS:
            print(f"# undecodable message: {error}", file=out, flush=True)
        return

    if header.get("type") == STATUS_PREFIX or topic.startswith(STATUS_PREFIX + "."):
        summary.statuses += 1
        print(format_status(header), file=out, flush=True)
        return
    if not (header.get("type") == RESULT_PREFIX or topic.startswith(RESULT_PREFIX + ".")):
        return

    summary.results += 1
    verdict = str(header.get("verdict"))
    summary.by_verdict[verdict] = summary.by_verdict.get(verdict, 0) + 1
    part_id = header.get("part_id")
    if isinstance(part_id, int):
        summary.part_ids.observe(topic, header.get("run_id"), part_id)
    print(format_result(header), file=out, flush=True)

    if save_path is not None and anomaly_map is not None:
        name = f"{part_id:08d}" if isinstance(part_id, int) else str(part_id)
        run = str(header.get("run_id") or "run")[:8]
        path = save_path / f"{run}_{name}_{verdict}.png"
        picture = _overlay_on_source(images_path, header, anomaly_map)
        if picture is None:
            picture = render_heat_map(anomaly_map, header)
        if cv2.imwrite(str(path), picture):
            summary.maps_saved += 1
        else:
            summary.save_errors += 1
            if summary.save_errors == 1:
                print(f"# cannot write {path}; check that the folder is writable", file=out, flush=True)


def _overlay_on_source(images_path: Path | None, header: dict, anomaly_map: np.ndarray) -> np.ndarray | None:
    """Draw the map over the replayed image named by `source_ref`; None when there is no such image."""
    source_ref = header.get("source_ref")
    area = header.get("map_frame_xywh")
    if images_path is None or not source_ref or not area:
        return None
    image_path = images_path / source_ref
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR) if image_path.is_file() else None
    if image is None:
        return None

    map_info = header.get("map") or {}
    threshold = header.get("pixel_threshold")
    scale_max = map_info.get("scale_max") or (2.0 * threshold if isinstance(threshold, (int, float)) and threshold > 0 else None)
    if not scale_max:
        return None
    regions = [
        Region(
            area_px=int(region["area_px"]),
            bbox_xywh=tuple(region["bbox_xywh"]),
            peak_score=float(region["peak_score"]),
            peak_xy=tuple(region["peak_xy"]),
        )
        for region in header.get("regions") or []
    ]
    label = (
        f"{source_ref} part {header.get('part_id')} {header.get('verdict')} "
        f"score {_number_text(header.get('image_score'))}/{_number_text(header.get('image_threshold'))}"
    )
    whole_frame = list(area) == [0, 0, image.shape[1], image.shape[0]]
    roi = None if whole_frame else Roi(*area)
    return overlay_anomaly_map(image, anomaly_map, float(scale_max), regions=regions, roi=roi, label=label)


def _number_text(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def _check_tcp_port(endpoint: str) -> None:
    """Reject a tcp:// endpoint whose port is not 1 to 65535; ZeroMQ would wait on it in silence."""
    if not endpoint.startswith("tcp://"):
        return
    _, _, port = endpoint.rpartition(":")
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"endpoint {endpoint} has no valid port; use tcp://HOST:PORT with a port from 1 to 65535")
