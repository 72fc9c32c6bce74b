"""Build the reference model that `edge-inspect demo` runs when no model package is given.

The demo must work on a line PC without torch, so its default model is a small ONNX graph fitted
here with numpy on rendered good parts and shipped inside the `edge` package. Per anomaly-map
cell it stores the mean and spread of the pooled brightness of good parts; the anomaly map is the
absolute z-score. It catches lighting changes and gross defects such as chips, and misses the
faint ones (scratches, small pits): fit a PaDiM model (`edge-export padim`) to inspect for real.

Regenerate with `python -m export.demo_model` after changing the rendering of parts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.acquisition.synthetic import render_part
from edge.preprocess.transform import PreprocessSpec, Preprocessor
from export.package_writer import write_package

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "edge" / "demo" / "model"
INPUT_SIZE_PX = 128
POOL_PX = 4
# Floor of the per-cell spread, in normalised brightness units (the tf normalisation spans 2.0),
# so that cells that never change (the background) do not turn noise into large scores.
MIN_SPREAD = 0.01
FIT_PARTS = 200
CALIBRATION_PARTS = 200
# Seeds of the rendered parts: the demo's own parts use other seeds.
FIT_SEED = 9001
CALIBRATION_SEED = 9002


def pooled_brightness(tensor: np.ndarray) -> np.ndarray:
    """Compute the graph's features in numpy: channel mean, then mean over POOL_PX x POOL_PX cells."""
    grey = tensor.mean(axis=1)[0]
    cells = INPUT_SIZE_PX // POOL_PX
    return grey.reshape(cells, POOL_PX, cells, POOL_PX).mean(axis=(1, 3))


def build_graph(mean: np.ndarray, spread: np.ndarray) -> onnx.ModelProto:
    cells = INPUT_SIZE_PX // POOL_PX
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, INPUT_SIZE_PX, INPUT_SIZE_PX])
    anomaly_map = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, cells, cells])
    image_score = helper.make_tensor_value_info("image_score", TensorProto.FLOAT, [1])
    initializers = [
        numpy_helper.from_array(mean.reshape(1, 1, cells, cells).astype(np.float32), "good_mean"),
        numpy_helper.from_array(spread.reshape(1, 1, cells, cells).astype(np.float32), "good_spread"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["grey"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["grey"], ["pooled"], kernel_shape=[POOL_PX, POOL_PX], strides=[POOL_PX, POOL_PX]),
        helper.make_node("Sub", ["pooled", "good_mean"], ["deviation"]),
        helper.make_node("Div", ["deviation", "good_spread"], ["z_score"]),
        helper.make_node("Abs", ["z_score"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["image_score"], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "demo_reference", [image], [anomaly_map, image_score], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build(out_dir: Path) -> Path:
    spec = PreprocessSpec.with_normalization(INPUT_SIZE_PX, "tf")
    preprocessor = Preprocessor(spec)

    def features(seed: int, index: int) -> np.ndarray:
        image, _ = render_part(np.random.default_rng([seed, index]), None)
        return pooled_brightness(preprocessor(image))

    fit = np.stack([features(FIT_SEED, index) for index in range(FIT_PARTS)])
    mean = fit.mean(axis=0)
    spread = np.maximum(fit.std(axis=0), MIN_SPREAD)
    calibration = np.stack([features(CALIBRATION_SEED, index) for index in range(CALIBRATION_PARTS)])
    scores = np.abs((calibration - mean) / spread).reshape(CALIBRATION_PARTS, -1).max(axis=1)
    # Above every calibration part, with a margin, so the demo's good parts pass.
    threshold = float(scores.max() * 1.1)

    model = build_graph(mean, spread)
    method = f"1.1 x the largest score of {CALIBRATION_PARTS} rendered good parts"
    return write_package(
        out_dir,
        model.SerializeToString(),
        kind="padim",
        name="demo-reference",
        version="1",
        preprocess=spec,
        thresholds={
            "image": {"value": threshold, "method": method},
            "pixel": {"value": threshold, "method": method},
        },
        onnx_info={"opset": 17, "input": "image", "outputs": ["anomaly_map", "image_score"]},
        sections={"demo_reference": {"fit_parts": FIT_PARTS, "pool_px": POOL_PX, "min_spread": MIN_SPREAD}},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"package folder (default {DEFAULT_OUT})")
    args = parser.parse_args()
    print(build(args.out))


if __name__ == "__main__":
    main()
