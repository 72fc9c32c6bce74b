"""The attention model kind: package checks, window scoring and stitching, with torch-free ONNX packages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge.inference.models import MODEL_KINDS
from edge.inference.package import PackageError
from edge.inspector import Inspector
from edge.parts import Verdict
from edge.preprocess.polar import UnwrapSpec
from edge.preprocess.ring import Ring, RingSearch
from edge.preprocess.transform import NORMALIZATIONS, PreprocessError, PreprocessSpec, Preprocessor, Roi
from export.package_writer import write_description, write_package
from tests.fixtures import make_attention_package, make_brightness_package


def probability_of(grey_level: float) -> float:
    """The fixture's window probability for a window whose brightest grey level is `grey_level`."""
    return 1.0 / (1.0 + math.exp(-(grey_level - 127.5) / 128.0))


def spot_frame(height_px: int, width_px: int, spots: list[tuple[int, int, int]], background: int = 0) -> np.ndarray:
    """A grey BGR frame with 4x4 px squares at (x, y) of the given grey level."""
    frame = np.full((height_px, width_px, 3), background, np.uint8)
    for x, y, level in spots:
        frame[y : y + 4, x : x + 4] = level
    return frame


def write_graph_package(
    out_dir: Path, nodes: list, outputs: list, windows: dict | None, batch: str | int = "N"
) -> Path:
    """Write an attention package from hand-built nodes over the input `windows` [batch, 3, 32, 32]."""
    image = helper.make_tensor_value_info("windows", TensorProto.FLOAT, [batch, 3, 32, 32])
    model = helper.make_model(helper.make_graph(nodes, "custom", [image], outputs), opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    mean, std = NORMALIZATIONS["tf"]
    return write_package(
        out_dir,
        model.SerializeToString(),
        kind="attention",
        name="custom",
        version="test-1",
        preprocess=PreprocessSpec(32, 32, normalization="tf", mean=mean, std=std),
        thresholds={"image": {"value": 0.5, "method": "fixed"}, "pixel": {"value": 0.5, "method": "fixed"}},
        onnx_info={"opset": 17, "input": "windows"},
        sections={} if windows is None else {"windows": windows},
    )


@pytest.fixture
def windowed(tmp_path: Path) -> Path:
    return make_attention_package(tmp_path / "attention", window_px=32, stride_px=16)


def test_kind_registered(windowed):
    Inspector.from_path(windowed)

    assert "attention" in MODEL_KINDS


def test_spot_fails_map_peaks_at_probability(windowed):
    inspector = Inspector.from_path(windowed)
    frame = spot_frame(70, 90, [(60, 40, 255)])

    inspection = inspector.inspect(frame)

    assert inspection.verdict is Verdict.FAIL
    assert inspection.image_score == pytest.approx(probability_of(255), abs=1e-6)
    assert inspection.anomaly_map.shape == (70, 90)
    assert inspection.map_frame_xywh == (0, 0, 90, 70)
    assert float(inspection.anomaly_map.max()) == pytest.approx(inspection.image_score, abs=1e-6)
    peak_y, peak_x = np.unravel_index(int(np.argmax(inspection.anomaly_map)), inspection.anomaly_map.shape)
    assert 60 <= peak_x < 64
    assert 40 <= peak_y < 44


def test_region_covers_spot(windowed):
    inspector = Inspector.from_path(windowed)

    inspection = inspector.inspect(spot_frame(70, 90, [(60, 40, 255)]))

    assert len(inspection.regions) == 1
    region = inspection.regions[0]
    assert region.bbox_xywh == (60, 40, 4, 4)
    assert region.area_px == 16
    assert region.peak_score == pytest.approx(probability_of(255), abs=1e-6)
    assert region.peak_angle_deg is None


def test_score_is_max_window_probability(windowed):
    inspector = Inspector.from_path(windowed)
    # A dim spot at the top left and a brighter one at the bottom right, 50 px apart.
    frame = spot_frame(70, 90, [(4, 4, 180), (80, 60, 230)])

    inspection = inspector.inspect(frame)

    assert inspection.image_score == pytest.approx(probability_of(230), abs=1e-6)
    anomaly_map = inspection.anomaly_map
    assert float(anomaly_map[4:8, 4:8].max()) == pytest.approx(probability_of(180), abs=1e-6)
    assert float(anomaly_map[60:64, 80:84].max()) == pytest.approx(probability_of(230), abs=1e-6)
    # Only window (0, 0) covers pixel (2, 2): it contains the dim spot, so its dark pixels get ReLU(Bi-CAM) = 0.
    assert float(anomaly_map[2, 2]) == 0.0
    # Pixel (40, 10) lies only in windows without a spot, whose maps are their probability everywhere.
    assert float(anomaly_map[40, 10]) == pytest.approx(probability_of(0), abs=1e-6)


def test_dark_frame_passes_with_flat_map(windowed):
    inspector = Inspector.from_path(windowed)

    inspection = inspector.inspect(spot_frame(50, 50, []))

    # No Bi-CAM is positive, so every window spreads its probability over the window.
    assert inspection.verdict is Verdict.PASS
    assert inspection.regions == []
    np.testing.assert_allclose(inspection.anomaly_map, probability_of(0), atol=1e-6)


def test_all_windows_in_one_batch(windowed):
    inspector = Inspector.from_path(windowed)

    model_input = inspector.preprocess(spot_frame(70, 90, []))
    output = inspector.infer(model_input)

    # Rows 0, 16, 32, 38 and columns 0, 16, 32, 48, 58: one tensor of all 20 windows.
    assert model_input.tensor.shape == (20, 3, 32, 32)
    assert len(model_input.tile_origins) == 20
    assert output.anomaly_map.shape == (70, 90)


def test_roi_map_in_roi_pixels(tmp_path):
    package = make_attention_package(tmp_path / "attention", window_px=32, stride_px=8)
    roi = Roi(x=20, y=10, width=48, height=40)
    inspector = Inspector.from_path(package, roi=roi)
    frame = spot_frame(80, 100, [(50, 30, 255), (2, 2, 255)])

    inspection = inspector.inspect(frame)

    # The spot at (2, 2) lies outside the ROI and is not seen.
    assert inspection.map_frame_xywh == (20, 10, 48, 40)
    assert inspection.anomaly_map.shape == (40, 48)
    assert [region.bbox_xywh for region in inspection.regions] == [(50, 30, 4, 4)]
    assert inspection.regions[0].peak_xy == (50, 30)


def test_frame_smaller_than_window(windowed):
    inspector = Inspector.from_path(windowed)

    with pytest.raises(PreprocessError, match=r"40x20 px \(width x height\).*32x32 px window"):
        inspector.preprocess(spot_frame(20, 40, []))


def test_without_windows_resizes_frame(tmp_path):
    package = make_attention_package(tmp_path / "attention", window_px=32, stride_px=None)
    inspector = Inspector.from_path(package)
    frame = spot_frame(64, 96, [(40, 20, 255)])

    model_input = inspector.preprocess(frame)
    inspection = inspector.inspect(frame)

    assert inspector.window_preprocessor is None
    assert model_input.tensor.shape == (1, 3, 32, 32)
    resized = Preprocessor(inspector.package.preprocess).resized_rgb(frame)
    assert inspection.image_score == pytest.approx(probability_of(float(resized.max())), abs=1e-5)
    assert inspection.anomaly_map.shape == (32, 32)
    assert inspection.verdict is Verdict.FAIL
    region = inspection.regions[0]
    assert 36 <= region.peak_xy[0] <= 46
    assert 18 <= region.peak_xy[1] <= 26


def test_bare_batch_without_origins_rejected(windowed):
    inspector = Inspector.from_path(windowed)
    tensor = inspector.preprocess(spot_frame(70, 90, [])).tensor

    with pytest.raises(ValueError, match="without window origins"):
        inspector.infer(tensor)


def test_window_size_mismatch_rejected(tmp_path):
    windows = {"tile_height_px": 16, "tile_width_px": 16, "stride_px": 8}
    package = make_attention_package(tmp_path / "attention", window_px=32, windows=windows)

    with pytest.raises(PackageError, match=r"windows are 16x16 px.*model input is 32x32.*export the model again"):
        Inspector.from_path(package)


def test_windows_with_ring_rejected(tmp_path):
    ring = {
        "search": RingSearch(fixed=Ring(50.0, 50.0, 20.0, 40.0)).to_dict(),
        "unwrap": UnwrapSpec(radial_px=32, angular_px=128).to_dict(),
        "tiles": None,
    }
    package = make_attention_package(tmp_path / "attention", ring=ring)

    with pytest.raises(PackageError, match="both a windows section and ring.unwrap"):
        Inspector.from_path(package)


def test_padim_with_windows_rejected(tmp_path):
    package = make_brightness_package(tmp_path / "padim", size_px=32)
    description = json.loads((package / "model.json").read_text(encoding="utf-8"))
    description.pop("description_sha256")
    description["windows"] = {"tile_height_px": 32, "tile_width_px": 32, "stride_px": 16}
    write_description(package, description)

    with pytest.raises(PackageError, match="padim package cannot have a windows section"):
        Inspector.from_path(package)


def test_invalid_windows_section_rejected(tmp_path):
    windows = {"tile_height_px": 32, "tile_width_px": 32, "stride": 16}
    package = make_attention_package(tmp_path / "attention", windows=windows)

    with pytest.raises(PackageError, match="windows section of model.json is invalid"):
        Inspector.from_path(package)


def test_missing_bicam_output_rejected(tmp_path):
    package = make_attention_package(tmp_path / "attention", bicam_output="cam")

    with pytest.raises(PackageError, match="lacks the output.*bicam"):
        Inspector.from_path(package)


def test_bicam_of_wrong_rank_rejected(tmp_path):
    nodes = [
        helper.make_node("ReduceMean", ["windows"], ["bicam"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["bicam"], ["peak"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sigmoid", ["peak"], ["defect_probability"]),
    ]
    outputs = [
        helper.make_tensor_value_info("defect_probability", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("bicam", TensorProto.FLOAT, ["N", 1, 32, 32]),
    ]
    package = write_graph_package(tmp_path / "attention", nodes, outputs, {"tile_height_px": 32, "tile_width_px": 32, "stride_px": 16})

    with pytest.raises(PackageError, match=r"bicam has shape.*\[N, H, W\]"):
        Inspector.from_path(package)


def test_bicam_below_input_size_rejected(tmp_path):
    nodes = [
        helper.make_node("AveragePool", ["windows"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ReduceMean", ["pooled"], ["bicam"], axes=[1], keepdims=0),
        helper.make_node("ReduceMax", ["bicam"], ["peak"], axes=[1, 2], keepdims=0),
        helper.make_node("Sigmoid", ["peak"], ["defect_probability"]),
    ]
    outputs = [
        helper.make_tensor_value_info("defect_probability", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("bicam", TensorProto.FLOAT, ["N", 16, 16]),
    ]
    package = write_graph_package(tmp_path / "attention", nodes, outputs, None)

    with pytest.raises(PackageError, match="Bi-CAM at the input resolution"):
        Inspector.from_path(package)


def test_fixed_batch_with_windows_rejected(tmp_path):
    nodes = [
        helper.make_node("ReduceMean", ["windows"], ["bicam"], axes=[1], keepdims=0),
        helper.make_node("ReduceMax", ["bicam"], ["peak"], axes=[1, 2], keepdims=0),
        helper.make_node("Sigmoid", ["peak"], ["defect_probability"]),
    ]
    outputs = [
        helper.make_tensor_value_info("defect_probability", TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info("bicam", TensorProto.FLOAT, [1, 32, 32]),
    ]
    windows = {"tile_height_px": 32, "tile_width_px": 32, "stride_px": 16}
    package = write_graph_package(tmp_path / "attention", nodes, outputs, windows, batch=1)

    with pytest.raises(PackageError, match="fixed batch of 1"):
        Inspector.from_path(package)


def test_grey_frame_accepted(windowed):
    inspector = Inspector.from_path(windowed)
    frame = cv2.cvtColor(spot_frame(48, 48, [(30, 30, 255)]), cv2.COLOR_BGR2GRAY)

    inspection = inspector.inspect(frame)

    assert inspection.verdict is Verdict.FAIL
    assert inspection.regions[0].bbox_xywh == (30, 30, 4, 4)
