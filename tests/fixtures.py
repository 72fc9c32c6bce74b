"""Small model packages built without torch, for tests of the daemon side."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from edge.preprocess.transform import NORMALIZATIONS, PreprocessSpec
from export.package_writer import write_package


def make_brightness_package(
    out_dir: Path,
    size_px: int = 32,
    image_threshold: float = 0.5,
    pixel_threshold: float = 0.5,
    width_px: int | None = None,
    ring: dict | None = None,
) -> Path:
    """Write a `padim`-kind package whose anomaly map is the channel mean of the input tensor.

    With the tf normalisation a black pixel scores -1 and a white pixel about +1, so a bright
    spot on a dark frame fails and a dark frame passes. The input is size_px high and
    `width_px` (default size_px) wide. `ring` becomes the package's `ring` section.
    """
    width_px = width_px or size_px
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size_px, width_px])
    anomaly_map = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, size_px, width_px])
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
        preprocess=_tf_spec(size_px, width_px),
        thresholds={
            "image": {"value": image_threshold, "method": "fixed for tests"},
            "pixel": {"value": pixel_threshold, "method": "fixed for tests"},
        },
        onnx_info={"opset": 17, "input": "image", "outputs": ["anomaly_map", "image_score"]},
        sections={} if ring is None else {"ring": ring},
    )


def make_tile_classifier_package(
    out_dir: Path,
    tile_height_px: int = 16,
    tile_width_px: int = 16,
    threshold: float = 0.5,
    cam_pool_px: int = 4,
    ring: dict | None = None,
) -> Path:
    """Write a `tile_classifier`-kind package whose tile probability is the tile's mean brightness.

    The defect probability of a tile is (mean of its normalised values + 1) / 2, which for the
    tf normalisation is (mean grey level + 0.5) / 256: a black tile scores 0.002 and a white one
    0.998. The CAM is the channel mean after ReLU (so only pixels above grey level 127.5
    count), then average-pooled over cam_pool_px x cam_pool_px blocks. `ring` is the package's
    `ring` section (None writes all entries null, which makes the whole frame one tile).
    """
    tiles = helper.make_tensor_value_info("tiles", TensorProto.FLOAT, ["N", 3, tile_height_px, tile_width_px])
    probability = helper.make_tensor_value_info("defect_probability", TensorProto.FLOAT, ["N"])
    cam_height, cam_width = tile_height_px // cam_pool_px, tile_width_px // cam_pool_px
    cam = helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", cam_height, cam_width])
    constants = [
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("channel_axis", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["tiles"], ["tile_mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Add", ["tile_mean", "one"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "half"], ["scaled"]),
        helper.make_node("Clip", ["scaled", "zero", "one"], ["defect_probability"]),
        helper.make_node("ReduceMean", ["tiles"], ["channel_mean"], axes=[1], keepdims=1),
        helper.make_node("Relu", ["channel_mean"], ["positive"]),
        helper.make_node(
            "AveragePool", ["positive"], ["pooled"], kernel_shape=[cam_pool_px, cam_pool_px], strides=[cam_pool_px, cam_pool_px]
        ),
        helper.make_node("Squeeze", ["pooled", "channel_axis"], ["cam"]),
    ]
    graph = helper.make_graph(nodes, "tile_brightness", [tiles], [probability, cam], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)

    return write_package(
        out_dir,
        model.SerializeToString(),
        kind="tile_classifier",
        name="tile-brightness",
        version="test-1",
        preprocess=_tf_spec(tile_height_px, tile_width_px),
        thresholds={
            "image": {"value": threshold, "method": "fixed for tests"},
            "pixel": {"value": threshold, "method": "fixed for tests"},
        },
        onnx_info={"opset": 17, "input": "tiles", "outputs": ["defect_probability", "cam"]},
        sections={"ring": ring if ring is not None else {"search": None, "unwrap": None, "tiles": None}},
    )


def make_attention_package(
    out_dir: Path,
    window_px: int = 32,
    stride_px: int | None = 16,
    threshold: float = 0.5,
    pixel_threshold: float | None = None,
    window_width_px: int | None = None,
    windows: dict | None = None,
    ring: dict | None = None,
    bicam_output: str = "bicam",
) -> Path:
    """Write an `attention`-kind package whose Bi-CAM is the channel mean of the input.

    The input is `windows` [N, 3, window_px, window_width_px (default window_px)]. With the tf
    normalisation the Bi-CAM of grey level g is (g - 127.5) / 128, negative for dark pixels.
    A window's defect probability is the sigmoid of its Bi-CAM's maximum, sigmoid((g_max - 127.5) / 128).
    That is 0.27 for a black window and 0.73 for a window with a white pixel. The default
    threshold 0.5 thus fails any window with a pixel brighter than 127.5. `stride_px` None writes no windows
    section (the whole frame is resized to the input); `windows` replaces the section written.
    `ring` becomes the package's `ring` section, and `bicam_output` renames the map output.
    """
    window_width_px = window_width_px or window_px
    image = helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["N", 3, window_px, window_width_px])
    probability = helper.make_tensor_value_info("defect_probability", TensorProto.FLOAT, ["N"])
    bicam = helper.make_tensor_value_info(bicam_output, TensorProto.FLOAT, ["N", window_px, window_width_px])
    nodes = [
        helper.make_node("ReduceMean", ["windows"], [bicam_output], axes=[1], keepdims=0),
        helper.make_node("ReduceMax", [bicam_output], ["peak"], axes=[1, 2], keepdims=0),
        helper.make_node("Sigmoid", ["peak"], ["defect_probability"]),
    ]
    graph = helper.make_graph(nodes, "attention_brightness", [image], [probability, bicam])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)

    sections: dict = {}
    if windows is not None:
        sections["windows"] = windows
    elif stride_px is not None:
        sections["windows"] = {"tile_height_px": window_px, "tile_width_px": window_width_px, "stride_px": stride_px}
    if ring is not None:
        sections["ring"] = ring
    return write_package(
        out_dir,
        model.SerializeToString(),
        kind="attention",
        name="attention-brightness",
        version="test-1",
        preprocess=_tf_spec(window_px, window_width_px),
        thresholds={
            "image": {"value": threshold, "method": "fixed for tests"},
            "pixel": {"value": threshold if pixel_threshold is None else pixel_threshold, "method": "fixed for tests"},
        },
        onnx_info={"opset": 17, "input": "windows", "outputs": ["defect_probability", bicam_output]},
        sections=sections,
    )


def _tf_spec(height_px: int, width_px: int) -> PreprocessSpec:
    mean, std = NORMALIZATIONS["tf"]
    return PreprocessSpec(height_px, width_px, normalization="tf", mean=mean, std=std)
