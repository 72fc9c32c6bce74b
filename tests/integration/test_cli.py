"""`edge-inspect` as a user runs it: a separate process, signals, exit codes, real sockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.subscriber import Collector, free_tcp_endpoint

REPO = Path(__file__).resolve().parents[2]


def edge_inspect(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge.cli", *args]


def start_daemon(*args: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(edge_inspect("run", *args), cwd=REPO, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_with_sigterm(process: subprocess.Popen, after_s: float) -> tuple[float, dict]:
    """Send SIGTERM after `after_s`; return the seconds the process took to exit and its summary."""
    time.sleep(after_s)
    assert process.poll() is None, process.stderr.read()
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=10)
    exit_s = time.monotonic() - signalled
    assert process.returncode == 0, stderr
    return exit_s, json.loads(stdout)


def test_sigterm_publishes_every_captured_part(brightness_package):
    endpoint = free_tcp_endpoint()
    with Collector(endpoint) as collector:
        process = start_daemon("--model", str(brightness_package), "--source", "synthetic", "--rate", "50",
                               "--endpoint", endpoint)
        exit_s, summary = stop_with_sigterm(process, after_s=2.5)
        frames = summary["counters"]["frames"]
        collector.wait_for_results(frames, timeout_s=3)
        collector.wait_quiet(0.3)

    assert exit_s < 5.0
    assert frames > 10
    assert summary["counters"]["published"] == frames
    # Parts published before the subscription arrived are lost by ZeroMQ's design; the rest must be complete.
    received = sorted(header["part_id"] for header in collector.results)
    assert received == list(range(received[0], frames + 1))
    assert received[0] <= 2


def test_bad_source_is_usage_error(brightness_package, tmp_path):
    result = subprocess.run(edge_inspect("run", "--model", str(brightness_package), "--source", str(tmp_path / "nope")),
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "is not a camera index, URL, pipeline, existing folder or existing file" in result.stderr


def test_run_without_model_is_usage_error():
    result = subprocess.run(edge_inspect("run", "--source", "synthetic"), cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "--model MODEL_DIR" in result.stderr


def test_changed_model_refused_at_start(brightness_package):
    with (brightness_package / "model.onnx").open("ab") as stream:
        stream.write(b"\0")
    result = subprocess.run(edge_inspect("run", "--model", str(brightness_package), "--source", "synthetic"),
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "sha256" in result.stderr


def test_check_config_reports_valid_and_invalid(brightness_package, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(f"model:\n  path: {brightness_package}\nsource:\n  kind: synthetic\n")
    result = subprocess.run(edge_inspect("check-config", str(good)), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "valid; model brightness version test-1" in result.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model:\n  path: {brightness_package}\nsource:\n  kind: webcam\n")
    result = subprocess.run(edge_inspect("check-config", str(bad)), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "bad.yaml:4" in result.stderr
    assert "source.kind" in result.stderr


def test_check_config_roi_below_window(tmp_path):
    from tests.fixtures import make_attention_package

    package = make_attention_package(tmp_path / "attention", window_px=32, stride_px=16)
    config = tmp_path / "station.yaml"
    config.write_text(
        f"model:\n  path: {package}\nsource:\n  kind: synthetic\n"
        "preprocess:\n  roi: {x: 0, y: 0, width: 20, height: 64}\n"
    )
    result = subprocess.run(edge_inspect("check-config", str(config)), cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "preprocess.roi: 20x64 px is smaller than the model's 32x32 px window" in result.stderr


def test_run_from_config_file(brightness_package, tmp_path):
    endpoint = free_tcp_endpoint()
    config = tmp_path / "station.yaml"
    config.write_text(
        f"station:\n  line: l7\n  station: s2\nmodel:\n  path: {brightness_package}\n"
        f"source:\n  kind: synthetic\n  max_frames: 5\npublish:\n  endpoint: {endpoint}\n"
    )
    with Collector(endpoint) as collector:
        result = subprocess.run(edge_inspect("run", "--config", str(config)), cwd=REPO, capture_output=True,
                                text=True, timeout=60)
        collector.wait_for_results(5, timeout_s=3)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counters"]["frames"] == 5
    assert {header["line"] for header in collector.results} == {"l7"}
    assert {header["station"] for header in collector.results} == {"s2"}


def test_check_config_finds_missing_source_and_cuda(brightness_package, tmp_path):
    config = tmp_path / "station.yaml"
    config.write_text(
        f"model:\n  path: {brightness_package}\nsource:\n  kind: folder\n  path: {tmp_path / 'nowhere'}\n"
        "inference:\n  providers: [CUDAExecutionProvider]\n"
    )
    result = subprocess.run(edge_inspect("check-config", str(config)), cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "source.path" in result.stderr
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "inference.providers" in result.stderr


def test_watch_rejects_bad_port():
    result = subprocess.run(edge_inspect("watch", "--endpoint", "tcp://127.0.0.1:99999", "--timeout-s", "1"),
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "port from 1 to 65535" in result.stderr
