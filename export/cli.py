"""`edge-export`: make model packages for the inspection daemon."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.arguments import integer_in, seed
from edge.log import configure_logging
from edge.preprocess.transform import INTERPOLATIONS, NORMALIZATIONS, Roi

BACKBONE_CHOICES = ("efficientnet_lite0", "resnet18", "wide_resnet50_2")


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    configure_logging(level="info", format="auto")
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"edge-export: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-export: interrupted; no package was written", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-export", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    padim = commands.add_parser(
        "padim",
        help="fit a PaDiM anomaly model on images of good parts",
        description="Fit PaDiM on good parts, set thresholds on held-out good parts and write a model package.",
    )
    padim.add_argument("--train", type=Path, required=True, help="folder of good-part images (searched recursively)")
    padim.add_argument("--out", type=Path, required=True, help="model package folder to write")
    padim.add_argument("--backbone", choices=BACKBONE_CHOICES, default="efficientnet_lite0",
                       help="feature extractor (default: efficientnet_lite0 with its bundled ImageNet weights)")
    padim.add_argument("--weights", type=Path, help="local torchvision state dict; required for the ResNet backbones")
    padim.add_argument("--image-size", type=integer_in(64, 1024), default=224, help="model input size in pixels, square (default: 224)")
    padim.add_argument("--channels", type=integer_in(0), default=100,
                       help="feature channels kept, chosen at random with --seed (default: 100; 0 keeps all)")
    padim.add_argument("--calibration-fraction", type=float, default=0.2,
                       help="share of good images held out to set thresholds (default: 0.2)")
    padim.add_argument("--target-false-reject", type=float, default=0.005,
                       help="false-reject rate the thresholds aim at on good parts (default: 0.005)")
    padim.add_argument("--normalization", choices=sorted(NORMALIZATIONS),
                       help="pixel normalisation: tf maps (x - 127.5) / 128, imagenet uses ImageNet mean and std "
                            "(default: the backbone's own convention, tf for efficientnet_lite0)")
    padim.add_argument("--interpolation", choices=sorted(INTERPOLATIONS), default="area",
                       help="resize interpolation (default: area, which antialiases when shrinking)")
    padim.add_argument("--roi", type=_parse_roi, help="crop X,Y,WIDTH,HEIGHT in pixels before resizing")
    padim.add_argument("--seed", type=seed, default=0, help="seed for the calibration split and channel choice")
    padim.add_argument("--batch-size", type=integer_in(1, 1024), default=8, help="images per forward pass while fitting")
    padim.add_argument("--name", help="model name in the package (default: the --out folder name)")
    padim.add_argument("--model-version", help="model version string (default: the creation time, UTC)")
    padim.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    padim.add_argument("--force", action="store_true", help="replace an existing model package in --out")
    padim.set_defaults(handler=_run_padim)
    return parser


def _run_padim(args: argparse.Namespace) -> int:
    from export.fit_padim import PadimOptions, fit_padim

    _check_output_folder(args.out, args.force)
    options = PadimOptions(
        train_dir=args.train,
        out_dir=args.out,
        backbone=args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        channels=args.channels or None,
        calibration_fraction=args.calibration_fraction,
        target_false_reject=args.target_false_reject,
        normalization=args.normalization,
        interpolation=args.interpolation,
        roi=args.roi,
        seed=args.seed,
        batch_size=args.batch_size,
        name=args.name,
        model_version=args.model_version,
        progress=not args.no_progress,
    )
    summary = fit_padim(options)
    print(json.dumps(summary, indent=2))
    return 0


def _check_output_folder(out: Path, force: bool) -> None:
    """Reject an --out that would overwrite files, unless it is a model package and --force is given."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder for the model package")
    if not out.is_dir() or not any(out.iterdir()):
        return
    is_package = (out / "model.json").is_file()
    if is_package and force:
        return
    if is_package:
        raise ValueError(f"--out {out} already contains a model package; pass --force to replace it, or choose another folder")
    raise ValueError(f"--out {out} is not empty and contains no model package; choose an empty or new folder")


def _parse_roi(text: str) -> Roi:
    try:
        x, y, width, height = (int(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"ROI {text!r} is invalid; write X,Y,WIDTH,HEIGHT in pixels, e.g. 100,50,640,480")
    if min(x, y) < 0 or min(width, height) <= 0:
        raise argparse.ArgumentTypeError(f"ROI {text!r} is invalid; X and Y must be >= 0, WIDTH and HEIGHT > 0")
    return Roi(x, y, width, height)


if __name__ == "__main__":
    sys.exit(main())
