"""Benchmark the tile classifier on the cast impellers: the full SDD-CNN method against plain training.

    EDGE_INSPECT_DATA=/path/to/data python -m benchmarks.impeller_tiles [--out DIR] [--threads 2]

Trains both methods with `edge-export tiles` defaults on `casting_impeller/train`, which the
export splits 3:1:1 itself. Then every image of `casting_impeller/test` is scored through the
exported ONNX graph as the daemon does it: find the ring, unwrap, tile, one ONNX Runtime call
per part, and FAIL when the maximum tile probability reaches the package's threshold. A part whose ring is not found
counts as FAIL. All figures come from this one process on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.evaluation.metrics import classification_rates
from edge.log import configure_logging
from edge.preprocess.ring import RingNotFound
from edge.preprocess.transform import PreprocessSpec, Preprocessor
from export.images import list_images, read_image
from export.tile_data import TileLayout, normalised_batch
from export.tile_export import INPUT_NAME, OUTPUT_NAMES, TilesOptions, export_tiles

GOOD_CLASS = "ok_front"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for the model packages (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training and inference (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both trainings (default: 0)")
    args = parser.parse_args()

    data_root = os.environ.get("EDGE_INSPECT_DATA")
    if not data_root or not (Path(data_root) / "casting_impeller" / "test").is_dir():
        print("EDGE_INSPECT_DATA is missing or has no casting_impeller/ folder; set it to the real image folder",
              file=sys.stderr)
        return 2
    impeller = Path(data_root) / "casting_impeller"
    configure_logging("info", "json")
    out = args.out or Path(tempfile.mkdtemp(prefix="impeller_tiles_"))

    rows = []
    for plain in (False, True):
        model_dir = out / ("plain" if plain else "sdd_cnn")
        started = time.perf_counter()
        summary = export_tiles(TilesOptions(
            data_dir=impeller / "train", out_dir=model_dir, good=GOOD_CLASS, plain=plain, seed=args.seed,
            threads=args.threads, progress=False,
        ))
        training_min = (time.perf_counter() - started) / 60.0
        evaluation = evaluate_package(model_dir, impeller / "test", args.threads)
        rows.append((summary, training_min, evaluation))
        print(json.dumps({"summary": summary, "test_folder": evaluation}, indent=2, default=str), flush=True)

    print()
    print(f"casting_impeller/test: {rows[0][2]['parts']} parts, threads={args.threads}")
    print("| method | accuracy | escape rate | false reject rate | epochs to converge | training min | ring not found |")
    print("|---|---|---|---|---|---|---|")
    for summary, training_min, evaluation in rows:
        print(f"| {summary['method']} | {evaluation['accuracy']:.2%} | {evaluation['escape_rate']:.2%} | "
              f"{evaluation['false_reject_rate']:.2%} | {summary['training']['epochs_to_converge']} | "
              f"{training_min:.1f} | {evaluation['ring_not_found']} |")
    return 0


def evaluate_package(model_dir: Path, test_dir: Path, threads: int) -> dict:
    """Score every image under `test_dir` (good class folder GOOD_CLASS) through the package's ONNX graph."""
    description = json.loads((model_dir / "model.json").read_text())
    spec = PreprocessSpec.from_dict(description["preprocess"])
    layout = TileLayout.from_ring_section(description.get("ring"), spec.input_height)
    preprocessor = Preprocessor(spec)
    threshold = float(description["thresholds"]["image"]["value"])
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_dir / "model.onnx"), session_options, providers=["CPUExecutionProvider"])

    labels, failed = [], []
    ring_not_found = 0
    for folder in sorted(path for path in test_dir.iterdir() if path.is_dir()):
        for path in list_images(folder):
            labels.append(0 if folder.name == GOOD_CLASS else 1)
            try:
                tiles, _, _ = layout.cut(read_image(path))
            except RingNotFound:
                ring_not_found += 1
                failed.append(True)
                continue
            (probability,) = session.run(OUTPUT_NAMES[:1], {INPUT_NAME: normalised_batch(tiles, preprocessor).numpy()})
            failed.append(float(np.max(probability)) >= threshold)

    rates = classification_rates(np.asarray(labels), np.asarray(failed))
    return {
        "parts": len(labels),
        "accuracy": rates["accuracy"],
        "escape_rate": rates["escape_rate"],
        "false_reject_rate": rates["false_reject_rate"],
        "confusion_matrix": rates["confusion_matrix"],
        "ring_not_found": ring_not_found,
        "threshold": threshold,
    }


if __name__ == "__main__":
    sys.exit(main())
