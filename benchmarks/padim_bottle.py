"""Benchmark PaDiM on MVTec AD bottle: fit time, accuracy, export parity and daemon latency.

    EDGE_INSPECT_DATA=/path/to/data python -m benchmarks.padim_bottle [--out DIR]

Fits one model per normalisation (tf and imagenet) with the default options, evaluates each
exactly as `edge-inspect eval` does, then replays `test/` through the daemon's pipeline
(no rate, so every image is inspected) and prints per-stage latency. All figures come from
this one process on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from edge.acquisition.factory import create_source
from edge.config import validate_config
from edge.evaluation.runner import evaluate
from edge.log import configure_logging
from edge.pipeline import build_pipeline
from export.fit_padim import PadimOptions, fit_padim


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for models and reports (default: a temporary folder)")
    args = parser.parse_args()

    data_root = os.environ.get("EDGE_INSPECT_DATA")
    if not data_root or not (Path(data_root) / "mvtec_bottle").is_dir():
        print("EDGE_INSPECT_DATA is missing or has no mvtec_bottle/ folder; set it to the real image folder",
              file=sys.stderr)
        return 2
    bottle = Path(data_root) / "mvtec_bottle"
    configure_logging("warning", "json")
    out = args.out or Path(tempfile.mkdtemp(prefix="padim_bottle_"))

    rows = []
    for normalization in ("tf", "imagenet"):
        model_dir = out / f"bottle_{normalization}"
        started = time.perf_counter()
        summary = fit_padim(PadimOptions(train_dir=bottle / "train" / "good", out_dir=model_dir,
                                         normalization=normalization, progress=False))
        export_s = time.perf_counter() - started
        metrics = evaluate(model_dir, bottle, out / f"eval_{normalization}")
        rows.append((normalization, summary, export_s, metrics))

    print("| normalisation | fit s | export total s | image AUROC | pixel AUROC | PRO | F1 | false reject | escape | parity map | parity score |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for normalization, summary, export_s, metrics in rows:
        parity = summary["parity"]
        print(f"| {normalization} | {summary['fit_s']:.1f} | {export_s:.1f} | {metrics['image_auroc']:.4f} | "
              f"{metrics['pixel_auroc']:.4f} | {metrics['pro']:.4f} | {metrics['f1']:.4f} | "
              f"{metrics['false_reject_rate']:.3f} | {metrics['escape_rate']:.3f} | "
              f"{parity['max_map_error_of_range']:.1e} | {parity['max_score_relative_error']:.1e} |")

    status = replay_latency(out / "bottle_tf", bottle / "test")
    print()
    print(f"daemon replay of {status['counters']['frames']} images (tf model), latency in ms:")
    print("| stage | p50 | p99 |")
    print("|---|---|---|")
    for stage, figures in status["latency_ms"].items():
        print(f"| {stage} | {figures['p50']:.1f} | {figures['p99']:.1f} |")
    print()
    print(json.dumps({"metrics_tf": {key: value for key, value in rows[0][3].items() if key != "per_class"}},
                     indent=2, default=str))
    return 0


def replay_latency(model_dir: Path, images: Path) -> dict:
    config = validate_config({
        "model": {"path": str(model_dir)},
        "source": {"kind": "folder", "path": str(images)},
        "publish": {"endpoint": "tcp://127.0.0.1:*", "subscriber_grace_ms": 0},
    })
    return build_pipeline(config, create_source(config.source)).run()


if __name__ == "__main__":
    sys.exit(main())
