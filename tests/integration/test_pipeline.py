"""The daemon's pipeline against real sockets, real files and an ONNX Runtime session."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.acquisition.factory import create_source
from edge.config import validate_config
from edge.pipeline import Pipeline, build_pipeline
from tests.integration.subscriber import Collector, free_tcp_endpoint


def make_config(model: Path, endpoint: str, source: dict, **sections) -> object:
    data = {
        "model": {"path": str(model)},
        "source": source,
        "publish": {"endpoint": endpoint, "status_interval_s": 0.2, "subscriber_grace_ms": 300},
        **sections,
    }
    return validate_config(data)


def write_parts(folder: Path, dark: int, bright: int) -> None:
    folder.mkdir(parents=True)
    for index in range(dark):
        cv2.imwrite(str(folder / f"a_dark_{index:02d}.png"), np.zeros((48, 64, 3), np.uint8))
    for index in range(bright):
        image = np.zeros((48, 64, 3), np.uint8)
        image[10:26, 20:40] = 255
        sub = folder / "sub"
        sub.mkdir(exist_ok=True)
        cv2.imwrite(str(sub / f"b_bright_{index:02d}.png"), image)
    (folder / "c_broken.png").write_bytes(b"not a png")


def slow_down(pipeline: Pipeline, delay_s: float) -> None:
    run = pipeline.inspector.model.run

    def slow_run(tensor, run_options=None):
        time.sleep(delay_s)
        return run(tensor, run_options)

    pipeline.inspector.model.run = slow_run


def run_in_thread(pipeline: Pipeline) -> tuple[threading.Thread, dict]:
    holder: dict = {}
    thread = threading.Thread(target=lambda: holder.update(summary=pipeline.run()), daemon=True)
    thread.start()
    return thread, holder


def run_then_stop(pipeline: Pipeline, collector: Collector, run_s: float) -> tuple[float, int, threading.Thread]:
    """Run for `run_s`, request a stop and wait for every captured part to arrive.

    Returns the seconds from the stop request to the end of `run`, the frames captured and
    the pipeline thread (still alive when the stop took too long).
    """
    thread, holder = run_in_thread(pipeline)
    time.sleep(run_s)
    stop_requested = time.monotonic()
    pipeline.request_stop()
    thread.join(timeout=6)
    stopped_after_s = time.monotonic() - stop_requested
    frames = holder["summary"]["counters"]["frames"] if "summary" in holder else -1
    collector.wait_for_results(frames, timeout_s=3)
    collector.wait_quiet(0.3)
    return stopped_after_s, frames, thread


def test_folder_replay_publishes_every_image(brightness_package, tmp_path):
    write_parts(tmp_path / "images", dark=5, bright=4)
    endpoint = free_tcp_endpoint()
    config = make_config(brightness_package, endpoint, {"kind": "folder", "path": str(tmp_path / "images")})

    with Collector(endpoint) as collector:
        summary = build_pipeline(config, create_source(config.source)).run()
        assert collector.wait_for_results(10, timeout_s=5)
        collector.wait_quiet(0.3)

    results = {header["part_id"]: header for header in collector.results}
    assert sorted(results) == list(range(1, 11))
    by_ref = {header["source_ref"]: header for header in collector.results}
    assert by_ref["c_broken.png"]["verdict"] == "REJECT"
    assert by_ref["c_broken.png"]["reason"] == "bad_frame"
    verdicts = {ref: header["verdict"] for ref, header in by_ref.items()}
    assert all(verdicts[ref] == "PASS" for ref in verdicts if "dark" in ref)
    assert all(verdicts[ref] == "FAIL" for ref in verdicts if "bright" in ref)
    assert summary["counters"]["frames"] == 10


def test_result_header_names_model_and_thresholds(brightness_package, tmp_path):
    write_parts(tmp_path / "images", dark=0, bright=1)
    endpoint = free_tcp_endpoint()
    config = make_config(brightness_package, endpoint, {"kind": "folder", "path": str(tmp_path / "images")})

    with Collector(endpoint) as collector:
        build_pipeline(config, create_source(config.source)).run()
        collector.wait_for_results(2, timeout_s=5)

    failed = next(header for header in collector.results if header["verdict"] == "FAIL")
    assert failed["model"]["version"] == "test-1"
    assert len(failed["model"]["sha256"]) == 64
    assert failed["image_threshold"] == 0.5
    assert failed["pixel_threshold"] == 0.5
    assert failed["regions"]
    x, y, width, height = failed["regions"][0]["bbox_xywh"]
    assert abs(x - 20) <= 3
    assert abs(y - 10) <= 3
    assert {"preprocess", "inference", "decision"} <= set(failed["latency_ms"])
    index = collector.results.index(failed)
    assert collector.maps[index].shape == (32, 32)


def test_live_overload_rejects_instead_of_dropping(brightness_package):
    endpoint = free_tcp_endpoint()
    config = make_config(
        brightness_package, endpoint,
        {"kind": "synthetic", "rate_fps": 200, "max_frames": 60},
        pipeline={"queue_size": 1},
    )
    pipeline = build_pipeline(config, create_source(config.source))
    slow_down(pipeline, 0.03)

    with Collector(endpoint) as collector:
        summary = pipeline.run()
        collector.wait_for_results(60, timeout_s=5)

    counters = summary["counters"]
    assert counters["frames"] == 60
    assert summary["rejected_by_reason"].get("overload", 0) > 0
    assert counters.get("pass", 0) + counters.get("fail", 0) + counters.get("reject", 0) == 60
    assert sorted(header["part_id"] for header in collector.results) == list(range(1, 61))


def test_inference_error_rejects_part(brightness_package):
    endpoint = free_tcp_endpoint()
    config = make_config(brightness_package, endpoint, {"kind": "synthetic", "max_frames": 3})
    pipeline = build_pipeline(config, create_source(config.source))

    def broken_run(tensor, run_options=None):
        raise RuntimeError("simulated ONNX Runtime failure")

    pipeline.inspector.model.run = broken_run
    with Collector(endpoint) as collector:
        summary = pipeline.run()
        collector.wait_for_results(3, timeout_s=5)

    assert summary["rejected_by_reason"]["inference_error"] == 3
    assert sum(summary["rejected_by_reason"].values()) == 3
    assert {header["reason"] for header in collector.results} == {"inference_error"}
    assert all(header["image_score"] is None for header in collector.results)


def test_stop_drains_and_publishes_every_part(brightness_package):
    endpoint = free_tcp_endpoint()
    config = make_config(
        brightness_package, endpoint, {"kind": "synthetic"}, pipeline={"queue_size": 8, "drain_timeout_s": 0.5}
    )
    pipeline = build_pipeline(config, create_source(config.source))
    slow_down(pipeline, 0.05)

    with Collector(endpoint) as collector:
        stopped_after_s, frames, thread = run_then_stop(pipeline, collector, run_s=1.5)

    assert not thread.is_alive()
    assert stopped_after_s < 3.0
    assert len(collector.results) == frames
    assert len({header["part_id"] for header in collector.results}) == frames


def test_status_messages_carry_counters(brightness_package):
    endpoint = free_tcp_endpoint()
    config = make_config(brightness_package, endpoint, {"kind": "synthetic", "rate_fps": 20, "max_frames": 20})
    with Collector(endpoint) as collector:
        build_pipeline(config, create_source(config.source)).run()

    assert len(collector.statuses) >= 2
    last = collector.statuses[-1]
    text = str(last)
    assert "frames" in text
    assert "queue_depths" in text
    assert "p99" in text


def test_missing_model_is_clear_error(tmp_path):
    from edge.pipeline import DaemonError

    config = make_config(tmp_path / "absent", free_tcp_endpoint(), {"kind": "synthetic"})
    with pytest.raises(DaemonError, match="not found"):
        build_pipeline(config, create_source(config.source))


def test_watch_draws_maps_over_replayed_images(brightness_package, tmp_path):
    import io

    from edge.watch import watch

    write_parts(tmp_path / "images", dark=1, bright=1)
    endpoint = free_tcp_endpoint()
    config = make_config(brightness_package, endpoint, {"kind": "folder", "path": str(tmp_path / "images")},
                         preprocess={"roi": {"x": 8, "y": 4, "width": 48, "height": 40}})
    holder: dict = {}
    watcher = threading.Thread(target=lambda: holder.update(summary=watch(
        endpoint, save_dir=tmp_path / "maps", max_results=3, timeout_s=10, out=io.StringIO(),
        images_dir=tmp_path / "images")), daemon=True)
    watcher.start()
    time.sleep(0.2)
    build_pipeline(config, create_source(config.source)).run()
    watcher.join(timeout=15)

    saved = {path.name.split("_", 2)[2]: cv2.imread(str(path)) for path in (tmp_path / "maps").glob("*.png")}
    assert holder["summary"]["maps_saved"] == 2
    # Overlays keep the frame size; plain heat maps would have the model's 32x32 size.
    assert {image.shape[:2] for image in saved.values()} == {(48, 64)}


def test_inference_timeout_rejects_and_continues(brightness_package):
    endpoint = free_tcp_endpoint()
    config = make_config(brightness_package, endpoint, {"kind": "synthetic", "max_frames": 4},
                         inference={"timeout_ms": 100})
    pipeline = build_pipeline(config, create_source(config.source))
    run = pipeline.inspector.model.run

    def hang_on_first_part(tensor, run_options=None):
        if not getattr(hang_on_first_part, "done", False):
            hang_on_first_part.done = True
            while not run_options.terminate:
                time.sleep(0.01)
            raise RuntimeError("Exiting due to terminate flag being set to true")
        return run(tensor, run_options)

    pipeline.inspector.model.run = hang_on_first_part
    with Collector(endpoint) as collector:
        summary = pipeline.run()
        collector.wait_for_results(4, timeout_s=5)

    assert summary["rejected_by_reason"]["inference_error"] == 1
    first = next(header for header in collector.results if header["part_id"] == 1)
    assert "terminated" in first["detail"]
    assert summary["counters"]["pass"] + summary["counters"]["fail"] == 3


def test_stuck_stage_still_publishes_at_stop(brightness_package):
    endpoint = free_tcp_endpoint()
    config = make_config(brightness_package, endpoint, {"kind": "synthetic"},
                         pipeline={"queue_size": 2, "drain_timeout_s": 0.5})
    pipeline = build_pipeline(config, create_source(config.source))
    never = threading.Event()

    def ignore_terminate(tensor, run_options=None):
        never.wait(30)  # a call stuck inside one node, which RunOptions.terminate cannot reach

    pipeline.inspector.model.run = ignore_terminate
    with Collector(endpoint) as collector:
        stopped_after_s, frames, thread = run_then_stop(pipeline, collector, run_s=1.0)
    never.set()
    time.sleep(0.2)  # let the released stage thread finish while this test still captures its log

    assert stopped_after_s < 4.0
    assert sorted(header["part_id"] for header in collector.results) == list(range(1, frames + 1))
    assert {header["reason"] for header in collector.results} <= {"shutdown"}


class FailingSource:
    """A source that delivers two frames and then fails, as a camera that cannot be reopened."""

    name = "failing"
    live = False

    def __init__(self):
        self.reads = 0
        self.state = None

    def open(self):
        pass

    def read(self, timeout_s):
        from edge.acquisition.base import SourceError
        from edge.parts import Frame

        self.reads += 1
        if self.reads > 2:
            raise SourceError("device unplugged and not found again")
        return Frame.now(np.zeros((32, 32, 3), np.uint8), f"frame{self.reads}")

    def close(self):
        pass

    def describe(self):
        return {"name": self.name, "reads": self.reads}


def test_source_failure_is_reported(brightness_package):
    from edge.pipeline import Pipeline
    from edge.inspector import Inspector

    endpoint = free_tcp_endpoint()
    config = make_config(brightness_package, endpoint, {"kind": "synthetic"})
    pipeline = Pipeline(config, FailingSource(), Inspector.from_path(brightness_package))
    with Collector(endpoint) as collector:
        summary = pipeline.run()
        collector.wait_for_results(2, timeout_s=3)

    assert "device unplugged" in pipeline.failure
    assert summary["counters"]["frames"] == 2
    assert len(collector.results) == 2


def test_onnxruntime_honours_terminate(brightness_package):
    import onnxruntime as ort

    from edge.inference.package import load_package
    from edge.inference.session import create_session
    from edge.config import InferenceConfig

    session = create_session(load_package(brightness_package).onnx_path, InferenceConfig())
    options = ort.RunOptions()
    options.terminate = True
    with pytest.raises(Exception, match="terminate"):
        session.run(None, {"image": np.zeros((1, 3, 32, 32), np.float32)}, options)
