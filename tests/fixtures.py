"""Small model packages built without torch, for tests of the daemon side."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from edge.preprocess.transform import PreprocessSpec
from export.package_writer import write_package


def make_brightness_package(
    out_dir: Path,
    size_px: int = 32,
    image_threshold: float = 0.5,
    pixel_threshold: float = 0.5,
) -> Path:
    """Write a `padim`-kind package whose anomaly map is the channel mean of the input tensor.

    With the tf normalisation a black pixel scores -1 and a white pixel about +1, so a bright
    spot on a dark frame fails and a dark frame passes.
    """
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size_px, size_px])
    anomaly_map = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, size_px, size_px])
    image_score = helper.make_tensor_value_info("image_score", TensorProto.FLOAT, [1])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["anomaly_map"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["anomaly_map"], ["image_score"], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "brightness", [image], [anomaly_map, image_score])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)

    return write_package(
        out_dir,
        model.SerializeToString(),
        kind="padim",
        name="brightness",
        version="test-1",
        preprocess=PreprocessSpec.with_normalization(size_px, "tf"),
        thresholds={
            "image": {"value": image_threshold, "method": "fixed for tests"},
            "pixel": {"value": pixel_threshold, "method": "fixed for tests"},
        },
        onnx_info={"opset": 17, "input": "image", "outputs": ["anomaly_map", "image_score"]},
        sections={},
    )
