"""Result subscriber: printing, heat maps, part-id gap counting and exit conditions."""

from __future__ import annotations

import io
import re
import threading
import time

import cv2
import numpy as np
import pytest

from edge.parts import Verdict
from edge.cli import main as cli_main
from edge.watch import PartIdTracker, format_result, render_heat_map, watch
from tests.unit.test_messages import make_part
from tests.unit.test_publisher import make_publisher


def run_watch_while_publishing(tmp_path, max_results: int) -> tuple[dict, str]:
    """Run watch() in a thread while parts are published until it returns."""
    publisher = make_publisher(map_encoding="png8", status_interval_s=0.05)
    publisher.start()
    out = io.StringIO()
    summary: dict = {}
    watcher = threading.Thread(
        target=lambda: summary.update(
            watch(publisher.endpoint, save_dir=tmp_path / "maps", max_results=max_results, timeout_s=30.0, out=out)
        )
    )
    watcher.start()

    verdicts = (Verdict.PASS, Verdict.FAIL, Verdict.REJECT)
    part_id = 0
    try:
        while watcher.is_alive():
            publisher.submit(make_part(part_id, verdicts[part_id % 3], seed=part_id))
            part_id += 1
            time.sleep(0.01)
        watcher.join()
    finally:
        publisher.stop(timeout_s=2.0)
    return summary, out.getvalue()


def test_watch_prints_and_saves(tmp_path) -> None:
    summary, output = run_watch_while_publishing(tmp_path, max_results=9)

    assert summary["results"] == 9
    assert summary["stopped_by"] == "max_results"
    assert sum(summary["by_verdict"].values()) == 9
    assert summary["gaps"] == 0

    result_lines = [line for line in output.splitlines() if " part=" in line]
    assert len(result_lines) == 9
    assert re.search(r"part=\d+ FAIL score=0\.7500/0\.5000 regions=1 total=20\.0ms model=brightness@test-1", output)
    assert re.search(r"part=\d+ REJECT reason=inference_error score=-/0\.5000 regions=0", output)

    saved = sorted((tmp_path / "maps").glob("*.png"))
    assert len(saved) == summary["maps_saved"]
    assert len(saved) == summary["by_verdict"].get("PASS", 0) + summary["by_verdict"].get("FAIL", 0)
    assert all(re.fullmatch(r"[0-9a-f]{8}_\d{8}_(PASS|FAIL)\.png", path.name) for path in saved)
    image = cv2.imread(str(saved[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (32, 48, 3)
    assert image.dtype == np.uint8


def test_watch_prints_status(tmp_path) -> None:
    publisher = make_publisher(status_interval_s=0.05)
    publisher.start()
    out = io.StringIO()
    try:
        summary = watch(publisher.endpoint, timeout_s=1.0, out=out)
    finally:
        publisher.stop(timeout_s=2.0)

    assert summary["stopped_by"] == "timeout"
    assert summary["results"] == 0
    assert summary["statuses"] >= 1
    assert re.search(r"line1/cam3 status seq=\d+ frames=0 pass=0 fail=0 reject=0 published=0", out.getvalue())


def test_watch_timeout_without_publisher() -> None:
    out = io.StringIO()

    summary = watch("tcp://127.0.0.1:1", timeout_s=0.3, out=out)

    assert summary["stopped_by"] == "timeout"
    assert summary["results"] == 0
    assert summary["statuses"] == 0
    assert out.getvalue().startswith("# watching tcp://127.0.0.1:1")


def test_watch_bad_endpoint() -> None:
    with pytest.raises(ValueError, match="cannot connect to nowhere"):
        watch("nowhere", timeout_s=0.1, out=io.StringIO())


def test_watch_command_summary(capsys) -> None:
    exit_code = cli_main(["watch", "--endpoint", "tcp://127.0.0.1:1", "--timeout-s", "0.2", "--json"])

    assert exit_code == 0
    output = capsys.readouterr().out
    assert "# 0 results" in output
    assert '"stopped_by": "timeout"' in output


def test_watch_command_rejects_bad_count(capsys) -> None:
    with pytest.raises(SystemExit):
        cli_main(["watch", "--count", "0"])
    assert "use 1 or more" in capsys.readouterr().err


def test_tracker_first_id_not_counted() -> None:
    tracker = PartIdTracker()

    tracker.observe("result.a", "run1", 500)
    tracker.observe("result.a", "run1", 501)

    assert tracker.missing == 0


def test_tracker_gap() -> None:
    tracker = PartIdTracker()

    for part_id in (1, 2, 5, 6, 9):
        tracker.observe("result.a", "run1", part_id)

    assert tracker.missing == 4


def test_tracker_late_part_fills_gap() -> None:
    tracker = PartIdTracker()

    for part_id in (1, 3, 4, 2):
        tracker.observe("result.a", "run1", part_id)

    assert tracker.missing == 0
    assert tracker.reordered == 1


def test_tracker_restart() -> None:
    tracker = PartIdTracker()

    for part_id in (1, 2, 4):
        tracker.observe("result.a", "run1", part_id)
    tracker.observe("result.a", "run2", 0)
    tracker.observe("result.a", "run2", 1)

    assert tracker.restarts == 1
    assert tracker.missing == 1


def test_tracker_restart_without_run_id() -> None:
    tracker = PartIdTracker()

    for part_id in (10, 11, 0, 1):
        tracker.observe("result.a", None, part_id)

    assert tracker.restarts == 1
    assert tracker.missing == 0


def test_tracker_duplicate() -> None:
    tracker = PartIdTracker()

    for part_id in (1, 2, 2):
        tracker.observe("result.a", "run1", part_id)

    assert tracker.duplicates == 1
    assert tracker.missing == 0


def test_tracker_large_jump() -> None:
    tracker = PartIdTracker(reorder_window=100)

    tracker.observe("result.a", "run1", 0)
    tracker.observe("result.a", "run1", 1001)
    tracker.observe("result.a", "run1", 1002)

    assert tracker.missing == 1000


def test_tracker_topics_apart() -> None:
    tracker = PartIdTracker()

    for part_id in (1, 2, 3):
        tracker.observe("result.a", "run1", part_id)
        tracker.observe("result.b", "run9", part_id * 10)

    assert tracker.missing == 18


def test_heat_map_threshold_mid_colour() -> None:
    anomaly_map = np.array([[0.0, 0.4, 0.8]], np.float32)
    header = {"pixel_threshold": 0.4, "map": {"encoding": "png8", "scale_min": 0.0, "scale_max": 0.8}}

    image = render_heat_map(anomaly_map, header)

    expected = cv2.applyColorMap(np.array([[0, 128, 255]], np.uint8), cv2.COLORMAP_JET)
    np.testing.assert_array_equal(image, expected)


def test_heat_map_float16_scales() -> None:
    anomaly_map = np.array([[-1.0, 0.0, 1.0, np.nan]], np.float32)

    by_threshold = render_heat_map(anomaly_map, {"pixel_threshold": 0.5, "map": {"encoding": "float16"}})
    by_range = render_heat_map(anomaly_map, {"pixel_threshold": -0.2, "map": {"encoding": "float16"}})

    jet = cv2.applyColorMap(np.array([[0, 0, 255, 0]], np.uint8), cv2.COLORMAP_JET)
    np.testing.assert_array_equal(by_threshold, jet)
    assert by_range.shape == (1, 4, 3)
    np.testing.assert_array_equal(by_range[0, 2], cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_JET)[0, 0])


def test_reject_line_shows_detail() -> None:
    header = {"part_id": 3, "verdict": "REJECT", "reason": "preprocess_error", "detail": "frame 90x60 px is too small"}
    line = format_result(header)
    assert "REJECT reason=preprocess_error" in line
    assert line.endswith('detail="frame 90x60 px is too small"')
