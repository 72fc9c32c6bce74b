"""Benchmark attention models on GDXray casting radiographs: two-stage Bi-CAM against one-stage and GAP-CAM.

    EDGE_INSPECT_DATA=/path/to/data python -m benchmarks.gdxray_attention [--out DIR] [--threads 2]

Prepares `gdxray_castings` with `edge-export gdxray` defaults (series C0030, C0035, C0041 and
C0057 held out for testing), then trains each variant with the same defect windows, seed and
stage-2 budget:
(a) two-stage: type module trained on casting types and frozen, bilinear defect module, Bi-CAM.
(b) one-stage: the same network trained end to end on the defect windows only.
(c) gap-cam: as (a), with global average pooling and a plain CAM.
Each package is scored on the held-out windows by `edge-inspect eval --good ok --boxes`'s own
code: window classification, pointing game and map mass in the boxes. The frame rate is that
of the daemon's Inspector on whole 768 x 572 test radiographs covered by overlapping windows.
All figures come from this one process on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from edge.config import InferenceConfig
from edge.evaluation.classification_runner import evaluate_classes
from edge.evaluation.metrics import roc_auc
from edge.inference.package import load_package
from edge.inspector import Inspector
from edge.log import configure_logging
from edge.preprocess.transform import Preprocessor
from export.attention_export import AttentionOptions, export_attention, window_scores
from export.attention_training import VARIANTS
from export.gdxray import DEFAULT_TEST_SERIES, GdxrayOptions, prepare_gdxray
from export.radiograph_data import load_defect_windows, split_by_series

FPS_FRAMES = 30
VALIDATION_FRACTION = AttentionOptions.__dataclass_fields__["validation_fraction"].default


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for the data, packages and evaluations (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training and inference (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data preparation and every training (default: 0)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants (default: all three)")
    args = parser.parse_args()

    data_root = os.environ.get("EDGE_INSPECT_DATA")
    if not data_root or not (Path(data_root) / "gdxray_castings").is_dir():
        print("EDGE_INSPECT_DATA is missing or has no gdxray_castings/ folder; set it to the real image folder",
              file=sys.stderr)
        return 2
    configure_logging("info", "json")
    out = args.out or Path(tempfile.mkdtemp(prefix="gdxray_attention_"))
    data = out / "data"
    preparation = prepare_gdxray(GdxrayOptions(Path(data_root) / "gdxray_castings", data, seed=args.seed, progress=False))
    test_dir = data / "defects" / "test"

    rows = []
    for variant in args.variants.split(","):
        model_dir = out / variant
        started = time.perf_counter()
        summary = export_attention(AttentionOptions(
            types_dir=data / "types", defects_dir=data / "defects" / "train", out_dir=model_dir, variant=variant,
            seed=args.seed, threads=args.threads,
        ))
        training_min = (time.perf_counter() - started) / 60.0
        metrics = evaluate_classes(model_dir, test_dir, out / f"eval_{variant}", "ok",
                                   inspector_kwargs={"inference": InferenceConfig(intra_op_num_threads=args.threads)},
                                   boxes_path=test_dir / "boxes.json")
        fps = frame_rate(model_dir, Path(data_root) / "gdxray_castings", args.threads)
        seen_vs_unseen = series_auc(model_dir, data / "defects", args.seed)
        rows.append((variant, summary, training_min, metrics, fps, seen_vs_unseen))
        metrics["localisation"].pop("per_image", None)
        print(json.dumps({"variant": variant, "summary": summary, "test": metrics, "frame_rate": fps,
                          "roc_auc_by_series": seen_vs_unseen}, indent=2, default=str), flush=True)

    counts = preparation["defects"]["test"]
    print()
    print(f"held-out series {', '.join(DEFAULT_TEST_SERIES)}: {counts['ok']} ok and {counts['defect']} defect windows, "
          f"threads={args.threads}")
    print("| variant | accuracy | precision | recall | F1 | ROC AUC | pointing game | mass in boxes (mean) "
          "| training min | frames/s (768x572) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant, summary, training_min, metrics, fps, _ in rows:
        localisation = metrics["localisation"]
        print(f"| {variant} | {metrics['accuracy']:.2%} | {metrics['precision']:.2%} | {metrics['recall']:.2%} | "
              f"{metrics['f1']:.3f} | {metrics['roc_auc']:.4f} | {localisation['pointing_game_rate']:.2%} | "
              f"{localisation['mean_mass_in_boxes']:.3f} | {training_min:.1f} | {fps['frames_per_s']:.2f} |")

    print()
    print("ROC AUC of window scores on castings the model trained on, on held-out validation series, and per test series:")
    for variant, *_, seen_vs_unseen in rows:
        print(f"{variant}: " + ", ".join(f"{name} {value:.3f}" for name, value in seen_vs_unseen.items()))
    return 0


def series_auc(model_dir: Path, defects_dir: Path, seed: int) -> dict[str, float]:
    """ROC AUC of the ONNX window scores: training series, the export's validation series, each test series."""
    package = load_package(model_dir)
    session = ort.InferenceSession(str(package.onnx_path), providers=["CPUExecutionProvider"])
    preprocessor = Preprocessor(package.preprocess)
    train, validation = split_by_series(load_defect_windows(defects_dir / "train"), VALIDATION_FRACTION, seed)
    test = load_defect_windows(defects_dir / "test")

    # Every fourth training window is enough for the estimate.
    sample = train.subset(np.arange(0, len(train), 4))
    result = {
        "training series": roc_auc(sample.labels, window_scores(session, sample.images, preprocessor)),
        "validation series": roc_auc(validation.labels, window_scores(session, validation.images, preprocessor)),
    }
    scores = window_scores(session, test.images, preprocessor)
    names = np.asarray([name.split("/")[1].split("_")[0] for name in test.names])
    for series in DEFAULT_TEST_SERIES:
        chosen = names == series
        result[f"test {series}"] = roc_auc(test.labels[chosen], scores[chosen])
    return result


def frame_rate(model_dir: Path, gdxray_dir: Path, threads: int) -> dict:
    """Inspect whole test radiographs through the Inspector, as the daemon does, and return frames per second."""
    inspector = Inspector.from_path(model_dir, inference=InferenceConfig(intra_op_num_threads=threads))
    paths = sorted((gdxray_dir / DEFAULT_TEST_SERIES[0]).glob("*.png"))[:FPS_FRAMES]
    frames = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in paths]
    inspector.inspect(frames[0])
    started = time.perf_counter()
    windows = 0
    for frame in frames:
        model_input = inspector.preprocess(frame)
        windows += int(model_input.tensor.shape[0])
        inspector.decide(inspector.infer(model_input), model_input, frame.shape)
    elapsed_s = time.perf_counter() - started
    return {
        "frames": len(frames),
        "frame_px": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "windows_per_frame": windows / len(frames),
        "frames_per_s": len(frames) / elapsed_s,
        "ms_per_frame": float(np.round(1000.0 * elapsed_s / len(frames), 1)),
    }


if __name__ == "__main__":
    sys.exit(main())
