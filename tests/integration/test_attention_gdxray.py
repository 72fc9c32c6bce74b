"""Attention models on the real GDXray casting radiographs: a short training, parity, daemon and evaluation.

The training here is short (a few hundred windows per stage), so the test checks the chain and
the exported graph, not the accuracy. benchmarks/gdxray_attention.py measures the accuracy of the
default training, and docs/benchmarks.md reports it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from edge.evaluation.classification_runner import evaluate_classes  # noqa: E402
from edge.inspector import Inspector  # noqa: E402
from export.attention_export import PARITY_TOLERANCE, AttentionOptions, export_attention  # noqa: E402
from export.attention_training import AttentionSettings  # noqa: E402
from export.gdxray import DEFAULT_TEST_SERIES, GdxrayOptions, prepare_gdxray  # noqa: E402

pytestmark = [pytest.mark.real_data, pytest.mark.slow, pytest.mark.timeout(1200)]

SHORT = AttentionSettings(type_epochs=1, defect_epochs=2, windows_per_epoch=256, type_validation_windows=64, progress=False)


@pytest.fixture(scope="module")
def trained(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    gdxray = real_data / "gdxray_castings"
    if not gdxray.is_dir():
        pytest.skip(f"{gdxray} is missing; it holds the GDXray castings series")
    root = tmp_path_factory.mktemp("gdxray_attention")
    prepare_gdxray(GdxrayOptions(gdxray, root / "data", ok_per_image=4, progress=False))
    summary = export_attention(AttentionOptions(
        types_dir=root / "data" / "types", defects_dir=root / "data" / "defects" / "train", out_dir=root / "model",
        settings=SHORT, threads=2,
    ))
    return root / "model", root / "data", summary


def test_onnx_bicam_equals_pytorch_on_real_windows(trained) -> None:
    _, _, summary = trained
    parity = summary["parity"]
    assert parity["windows"] == 64
    assert parity["max_map_error_of_range"] <= PARITY_TOLERANCE
    assert parity["max_probability_error"] <= PARITY_TOLERANCE


def test_daemon_covers_a_whole_radiograph(trained, real_data: Path) -> None:
    model_dir, _, _ = trained
    path = sorted((real_data / "gdxray_castings" / DEFAULT_TEST_SERIES[0]).glob("*.png"))[0]
    frame = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    inspector = Inspector.from_path(model_dir)

    inspection = inspector.inspect(frame)

    assert inspection.anomaly_map.shape == frame.shape
    assert inspection.map_frame_xywh == (0, 0, frame.shape[1], frame.shape[0])
    assert float(inspection.anomaly_map.max()) == pytest.approx(inspection.image_score, abs=1e-6)
    for region in inspection.regions:
        x, y, width, height = region.bbox_xywh
        assert min(x, y) >= 0
        assert x + width <= frame.shape[1]
        assert y + height <= frame.shape[0]


def test_evaluation_scores_held_out_windows_and_boxes(trained, tmp_path: Path) -> None:
    model_dir, data_dir, _ = trained
    test_dir = data_dir / "defects" / "test"

    metrics = evaluate_classes(model_dir, test_dir, tmp_path / "report", "ok", boxes_path=test_dir / "boxes.json",
                               overlays_per_class=1)

    defect_windows = len(list((test_dir / "defect").glob("*.png")))
    assert metrics["counts"]["defective"] == defect_windows
    localisation = metrics["localisation"]
    assert localisation["images_with_boxes"] == defect_windows
    assert 0.0 <= localisation["pointing_game_rate"] <= 1.0
    assert 0.0 <= localisation["mean_mass_in_boxes"] <= 1.0
    assert np.isfinite(metrics["roc_auc"])
    assert (tmp_path / "report" / "metrics.json").is_file()
