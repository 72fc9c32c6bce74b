"""PaDiM on real photographs (MVTec AD bottle): export parity, accuracy, daemon replay.

These tests need the real image folder named by EDGE_INSPECT_DATA and skip without it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge.evaluation.runner import evaluate  # noqa: E402
from edge.preprocess.transform import Preprocessor  # noqa: E402
from export.fit_padim import PadimOptions, fit, fit_padim  # noqa: E402
from export.images import read_image  # noqa: E402
from export.onnx_graph import export_onnx  # noqa: E402
from tests.integration.subscriber import Collector, free_tcp_endpoint  # noqa: E402

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bottle(real_data) -> Path:
    path = real_data / "mvtec_bottle"
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"{path} has no train/good folder")
    return path


@pytest.fixture(scope="module")
def bottle_model(bottle, tmp_path_factory) -> Path:
    """The package made by the default `edge-export padim --train train/good`."""
    out = tmp_path_factory.mktemp("bottle") / "bottle"
    fit_padim(PadimOptions(train_dir=bottle / "train" / "good", out_dir=out, progress=False))
    return out


@pytest.mark.parametrize("image_size", [224, 256])
def test_onnx_matches_pytorch_on_large_photos(bottle, image_size):
    # 900x900 photos into a smaller model: the resize is where exported models usually drift.
    options = PadimOptions(
        train_dir=bottle / "train" / "good", out_dir=Path("unused"), image_size=image_size,
        calibration_fraction=0.8, progress=False,
    )
    fitted = fit(options)
    onnx_bytes = export_onnx(fitted.graph, torch.zeros(1, 3, image_size, image_size), "image",
                             ["anomaly_map", "image_score"])

    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    preprocessor = Preprocessor(fitted.spec)
    paths = sorted((bottle / "test" / "good").glob("*.png"))[:3] + sorted((bottle / "test" / "broken_large").glob("*.png"))[:3]
    for path in paths:
        image = read_image(path)
        assert image.shape[:2] == (900, 900)
        tensor = preprocessor(image)
        onnx_map, onnx_score = session.run(None, {"image": tensor})
        with torch.inference_mode():
            torch_map, torch_score = fitted.graph(torch.from_numpy(tensor))
        torch_map = torch_map.numpy()
        map_range = float(torch_map.max() - torch_map.min())
        assert np.abs(onnx_map - torch_map).max() <= 1e-3 * map_range, path.name
        assert abs(float(onnx_score[0]) - float(torch_score[0])) <= 1e-4 * abs(float(torch_score[0])), path.name


def test_bottle_meets_accuracy_targets(bottle_model, bottle, tmp_path):
    metrics = evaluate(bottle_model, bottle, tmp_path / "eval")
    assert metrics["image_auroc"] >= 0.99
    assert metrics["pixel_auroc"] >= 0.975
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert (tmp_path / "eval" / "roc.png").is_file()
    description = json.loads((bottle_model / "model.json").read_text())
    assert description["training"]["image_count"] == 80
    assert description["onnx"]["export_parity"]["max_map_error_of_range"] < 1e-3


def test_replay_publishes_one_result_per_image(bottle_model, bottle):
    images = sorted(path for path in (bottle / "test").rglob("*.png"))
    endpoint = free_tcp_endpoint()
    with Collector(endpoint) as collector:
        result = subprocess.run(
            [sys.executable, "-m", "edge.cli", "run", "--model", str(bottle_model), "--source", str(bottle / "test"),
             "--endpoint", endpoint],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr
        collector.wait_for_results(len(images), timeout_s=10)
        collector.wait_quiet(0.5)

    assert len(collector.results) == len(images)
    assert sorted(header["part_id"] for header in collector.results) == list(range(1, len(images) + 1))
    assert {header["source_ref"] for header in collector.results} == {str(path.relative_to(bottle / "test")) for path in images}
    assert all(header["verdict"] in ("PASS", "FAIL") for header in collector.results)


def test_sigterm_mid_replay_publishes_captured_parts(bottle_model, bottle):
    endpoint = free_tcp_endpoint()
    with Collector(endpoint) as collector:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "run", "--model", str(bottle_model), "--source", str(bottle / "test"),
             "--rate", "10", "--endpoint", endpoint],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(4.0)
        assert process.poll() is None
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
        exit_s = time.monotonic() - signalled
        summary = json.loads(stdout)
        frames = summary["counters"]["frames"]
        collector.wait_for_results(frames, timeout_s=5)
        collector.wait_quiet(0.5)

    assert process.returncode == 0, stderr
    assert exit_s < 5.0
    assert 0 < frames < 83
    assert sorted(header["part_id"] for header in collector.results) == list(range(1, frames + 1))
