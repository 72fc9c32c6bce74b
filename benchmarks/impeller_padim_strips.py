"""Benchmark PaDiM on unwrapped impeller strips, with and without angular alignment.

    EDGE_INSPECT_DATA=/path/to/data python -m benchmarks.impeller_padim_strips [--out DIR]

Fits `edge-export padim --unwrap` with its defaults on `casting_impeller/train/ok_front` only,
once as unwrapped and once with `--align`, and evaluates both on the class folders of
`casting_impeller/test` exactly as `edge-inspect eval --good ok_front` does. All figures come
from this one process on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from edge.evaluation.classification_runner import evaluate_classes
from edge.log import configure_logging
from export.fit_padim import PadimOptions, fit_padim

GOOD_CLASS = "ok_front"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for models and reports (default: a temporary folder)")
    args = parser.parse_args()

    data_root = os.environ.get("EDGE_INSPECT_DATA")
    impellers = Path(data_root) / "casting_impeller" if data_root else None
    if impellers is None or not impellers.is_dir():
        print("EDGE_INSPECT_DATA is missing or has no casting_impeller/ folder; set it to the real image folder",
              file=sys.stderr)
        return 2
    configure_logging("warning", "json")
    out = args.out or Path(tempfile.mkdtemp(prefix="padim_strips_"))

    print("| strips | image ROC AUC | accuracy | escape rate | false reject rate | fit s |")
    print("|---|---|---|---|---|---|")
    for align in (False, True):
        name = "aligned" if align else "unwrapped"
        started = time.perf_counter()
        fit_padim(PadimOptions(train_dir=impellers / "train" / GOOD_CLASS, out_dir=out / name, unwrap=True,
                               align=align, progress=False))
        fit_s = time.perf_counter() - started
        metrics = evaluate_classes(out / name, impellers / "test", out / f"{name}_eval", good=GOOD_CLASS)
        print(f"| {name} | {metrics['roc_auc']:.4f} | {metrics['accuracy']:.4f} | {metrics['escape_rate']:.4f} | "
              f"{metrics['false_reject_rate']:.4f} | {fit_s:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
