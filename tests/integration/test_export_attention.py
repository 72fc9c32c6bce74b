"""`edge-export attention` on small rendered radiographs: training, package, and the daemon scoring a frame."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from edge.inference.package import load_package  # noqa: E402
from edge.inspector import Inspector  # noqa: E402
from edge.parts import Verdict  # noqa: E402
from export.attention_export import calibrate_threshold  # noqa: E402
from export.cli import main as export_main  # noqa: E402

WINDOW_PX = 64
QUICK = ["--type-epochs", "1", "--epochs", "3", "--windows-per-epoch", "128", "--no-progress", "--threads", "2"]


def _radiograph(rng: np.random.Generator, height: int, width: int, period_px: float) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = 130 + 35 * np.sin(x / period_px) * np.cos(y / period_px) + rng.normal(0, 4, (height, width))
    return image


def _pore(image: np.ndarray, x: int, y: int) -> np.ndarray:
    cv2.circle(image, (x, y), 6, 40, -1)
    return image


def _write_datasets(root: Path) -> tuple[Path, Path]:
    """Two casting types of whole images, and 64 px ok/defect windows from 24 source images."""
    rng = np.random.default_rng(0)
    for type_name, period_px in (("wheel", 6.0), ("knuckle", 18.0)):
        folder = root / "types" / type_name
        folder.mkdir(parents=True)
        for index in range(5):
            image = _radiograph(rng, 120, 160, period_px)
            cv2.imwrite(str(folder / f"{type_name}_{index:04d}.png"), np.clip(image, 0, 255).astype(np.uint8))
    for source in range(24):
        for window_index in range(3):
            defect = window_index == 0
            folder = root / "defects" / ("defect" if defect else "ok")
            folder.mkdir(parents=True, exist_ok=True)
            image = _radiograph(rng, WINDOW_PX, WINDOW_PX, 6.0)
            if defect:
                image = _pore(image, *(int(value) for value in rng.integers(12, 52, 2)))
            name = f"S{source:02d}_0001__x{window_index * 32:04d}_y0000.png"
            cv2.imwrite(str(folder / name), np.clip(image, 0, 255).astype(np.uint8))
    return root / "types", root / "defects"


@pytest.fixture(scope="module")
def attention_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("attention")
    types, defects = _write_datasets(root)
    out = root / "model"
    assert export_main(["attention", "--types", str(types), "--defects", str(defects), "--out", str(out), *QUICK]) == 0
    return out


def test_package_describes_windows_and_parity(attention_package: Path) -> None:
    package = load_package(attention_package)
    description = package.description

    assert package.kind == "attention"
    assert description["windows"] == {"tile_height_px": WINDOW_PX, "tile_width_px": WINDOW_PX, "stride_px": WINDOW_PX // 2}
    assert description["network"]["variant"] == "two-stage"
    assert description["network"]["types"] == ["knuckle", "wheel"]
    assert [stage["stage"] for stage in description["training"]["stages"]] == ["types", "defects"]
    parity = description["onnx"]["export_parity"]
    assert parity["max_map_error_of_range"] <= 1e-4
    assert parity["max_probability_error"] <= 1e-4
    assert description["thresholds"]["image"]["method"] == "max_balanced_accuracy"


def test_daemon_scores_a_frame_larger_than_the_window(attention_package: Path) -> None:
    inspector = Inspector.from_path(attention_package)
    rng = np.random.default_rng(7)
    frame = np.clip(_pore(_radiograph(rng, 150, 200, 6.0), 150, 100), 0, 255).astype(np.uint8)

    inspection = inspector.inspect(frame)

    assert inspection.anomaly_map.shape == (150, 200)
    assert 0.0 <= inspection.image_score <= 1.0
    assert inspection.verdict in (Verdict.PASS, Verdict.FAIL)


def test_one_stage_needs_no_types(tmp_path: Path, attention_package: Path) -> None:
    defects = attention_package.parent / "defects"
    out = tmp_path / "one_stage"
    assert export_main(["attention", "--variant", "one-stage", "--defects", str(defects), "--out", str(out), *QUICK]) == 0
    description = json.loads((out / "model.json").read_text())
    assert [stage["stage"] for stage in description["training"]["stages"]] == ["defects"]
    assert description["network"]["types"] is None


def test_two_stage_without_types_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_main(["attention", "--defects", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "pass --types DIR" in capsys.readouterr().err


def test_missing_defect_folders_name_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "types").mkdir()
    code = export_main(["attention", "--types", str(tmp_path / "types"), "--defects", str(tmp_path / "none"),
                        "--out", str(tmp_path / "m")])
    assert code == 2
    assert "ok/ and defect/ subfolders" in capsys.readouterr().err


def test_threshold_maximises_balanced_accuracy() -> None:
    scores = np.asarray([0.1, 0.2, 0.3, 0.6, 0.7, 0.9, 0.35])
    labels = np.asarray([0, 0, 0, 1, 1, 1, 1])
    threshold = calibrate_threshold(scores, labels)
    assert 0.3 < threshold <= 0.35
