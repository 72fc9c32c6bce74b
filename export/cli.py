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
# The same names as export.tile_nets.ARCHITECTURES, repeated so that --help does not import torch.
TILE_ARCHITECTURES = ("efficientnet_lite0", "squeezenet1_1", "resnet18")
# The same names as export.attention_training.VARIANTS.
ATTENTION_VARIANTS = ("two-stage", "one-stage", "gap-cam")


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
    padim.add_argument("--unwrap", action="store_true",
                       help="fit on the unwrapped ring of each part (round parts), not the whole frame")
    padim.add_argument("--align", action="store_true",
                       help="with --unwrap: turn every strip to the angle of a reference part first, so the model "
                            "is rotation invariant")
    padim.add_argument("--strip-size", type=_parse_size, default=(64, 512),
                       help="with --unwrap: model input HEIGHTxWIDTH of the strip in pixels, multiples of 16 (default: 64x512)")
    _add_ring_options(padim)
    padim.add_argument("--seed", type=seed, default=0, help="seed for the calibration split and channel choice")
    padim.add_argument("--batch-size", type=integer_in(1, 1024), default=8, help="images per forward pass while fitting")
    padim.add_argument("--name", help="model name in the package (default: the --out folder name)")
    padim.add_argument("--model-version", help="model version string (default: the creation time, UTC)")
    padim.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    padim.add_argument("--force", action="store_true", help="replace an existing model package in --out")
    padim.set_defaults(handler=_run_padim)

    tiles = commands.add_parser(
        "tiles",
        help="train a tile classifier on good and defective parts (SDD-CNN)",
        description="Unwrap each part's ring into tiles, train a CNN that scores every tile, set the tile "
                    "threshold on validation parts, evaluate on test parts and write a model package.",
    )
    tiles.add_argument("--data", type=Path, required=True,
                       help="folder with one subfolder of images per class: the good class and at least one defect class")
    tiles.add_argument("--out", type=Path, required=True, help="model package folder to write")
    tiles.add_argument("--good", default="good", help="name of the good class folder in --data (default: good)")
    tiles.add_argument("--arch", choices=TILE_ARCHITECTURES, default="efficientnet_lite0",
                       help="network (default: efficientnet_lite0 with its bundled ImageNet weights; the others "
                            "train from scratch unless --weights is given)")
    tiles.add_argument("--weights", type=Path,
                       help="local torchvision state dict of the whole --arch network to start from")
    tiles.add_argument("--unwrap", action=argparse.BooleanOptionalAction, default=True,
                       help="unwrap each part's ring into a strip and cut it into tiles (default); with --no-unwrap "
                            "the whole frame, resized to the tile size, is the one tile")
    tiles.add_argument("--tile-size", type=integer_in(32, 512), default=96,
                       help="tile side in pixels, a multiple of 16; also the strip height (default: 96)")
    tiles.add_argument("--stride", type=integer_in(1, 512),
                       help="step between tiles along the strip in pixels (default: half the tile size)")
    tiles.add_argument("--epochs", type=integer_in(1, 1000), default=15,
                       help="maximum epochs of the final training, which stops early on the validation loss (default: 15)")
    tiles.add_argument("--plain", action="store_true",
                       help="train plainly on every tile with its image label: no coarse model, label dilation, "
                            "semi-supervised augmentation or class balancing (for comparison)")
    _add_ring_options(tiles)
    tiles.add_argument("--seed", type=seed, default=0, help="seed of the split, the initialisation and the sampling")
    tiles.add_argument("--threads", type=integer_in(1, 256),
                       help="CPU threads for PyTorch (default: PyTorch's choice, one per core)")
    tiles.add_argument("--name", help="model name in the package (default: the --out folder name)")
    tiles.add_argument("--model-version", help="model version string (default: the creation time, UTC)")
    tiles.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    tiles.add_argument("--force", action="store_true", help="replace an existing model package in --out")
    tiles.set_defaults(handler=_run_tiles)

    attention = commands.add_parser(
        "attention",
        help="train a two-stage object-level attention classifier for radiographs (Bi-CAM maps)",
        description="Stage 1 trains the type module on casting types. Stage 2 freezes it and trains the bilinear "
                    "defect module on ok/defect windows. Sets the window threshold on validation windows (held out "
                    "by series) and writes a model package whose daemon covers frames with overlapping windows.",
    )
    attention.add_argument("--types", type=Path,
                           help="folder with one subfolder of whole radiographs per casting type (stage 1); "
                                "not used by --variant one-stage")
    attention.add_argument("--defects", type=Path, required=True,
                           help="folder with ok/ and defect/ subfolders of equally sized grey windows (stage 2)")
    attention.add_argument("--out", type=Path, required=True, help="model package folder to write")
    attention.add_argument("--variant", choices=ATTENTION_VARIANTS, default="two-stage",
                           help="two-stage: frozen type module + bilinear pooling (default); one-stage: the same network "
                                "trained end to end on defects only; gap-cam: two-stage with average pooling and a plain "
                                "CAM (the last two for comparison)")
    attention.add_argument("--window-stride", type=integer_in(1, 4096),
                           help="step in pixels between the windows that cover a frame in the daemon "
                                "(default: half the window size)")
    attention.add_argument("--type-epochs", type=integer_in(1, 1000), default=4,
                           help="maximum epochs of stage 1, which stops early on the validation loss (default: 4)")
    attention.add_argument("--epochs", type=integer_in(1, 1000), default=12,
                           help="maximum epochs of stage 2, which stops early on the validation loss (default: 12)")
    attention.add_argument("--windows-per-epoch", type=integer_in(64, 1_000_000), default=1024,
                           help="augmented windows drawn per epoch, evenly by class and series (default: 1024)")
    attention.add_argument("--validation-fraction", type=float, default=0.2,
                           help="share of windows held out, as whole series, for early stopping and the threshold "
                                "(default: 0.2)")
    attention.add_argument("--weights", type=Path,
                           help="EfficientNet-Lite0 state dict to start from (default: the bundled ImageNet weights)")
    attention.add_argument("--seed", type=seed, default=0, help="seed of the split, the initialisation and the sampling")
    attention.add_argument("--threads", type=integer_in(1, 256),
                           help="CPU threads for PyTorch (default: PyTorch's choice, one per core)")
    attention.add_argument("--name", help="model name in the package (default: the --out folder name)")
    attention.add_argument("--model-version", help="model version string (default: the creation time, UTC)")
    attention.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    attention.add_argument("--force", action="store_true", help="replace an existing model package in --out")
    attention.set_defaults(handler=_run_attention)

    gdxray = commands.add_parser(
        "gdxray",
        help="prepare GDXray casting series as the type and defect datasets of `attention`",
        description="Copy the radiographs of the training series into one folder per casting type, cut annotated "
                    "images into windows (defect: holds a whole box; ok: touches no box), and split by series so no "
                    "series is in both training and test. The boxes are kept in boxes.json, for evaluation only.",
    )
    gdxray.add_argument("--data", type=Path, required=True,
                        help="folder of GDXray series (C0001/ ... with ground_truth.txt and the readme)")
    gdxray.add_argument("--out", type=Path, required=True, help="folder to write types/, defects/ and split.json to")
    gdxray.add_argument("--window", type=integer_in(32, 4096), default=128, help="window side in pixels (default: 128)")
    gdxray.add_argument("--stride", type=integer_in(1, 4096), default=64,
                        help="step between windows in pixels (default: 64)")
    gdxray.add_argument("--test-series", type=_parse_names,
                        help="comma-separated series held out for testing (default: C0030,C0035,C0041,C0057)")
    gdxray.add_argument("--ok-per-image", type=integer_in(0), default=16,
                        help="ok windows kept per image, chosen at random with --seed (default: 16; 0 keeps all)")
    gdxray.add_argument("--seed", type=seed, default=0, help="seed of the ok window choice")
    gdxray.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    gdxray.set_defaults(handler=_run_gdxray)
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
        unwrap=args.unwrap,
        align=args.align,
        strip_size=args.strip_size,
        ring_search=_ring_search(args),
    )
    summary = fit_padim(options)
    print(json.dumps(summary, indent=2))
    return 0


def _run_tiles(args: argparse.Namespace) -> int:
    from export.tile_export import TilesOptions, export_tiles

    _check_output_folder(args.out, args.force)
    options = TilesOptions(
        data_dir=args.data,
        out_dir=args.out,
        good=args.good,
        arch=args.arch,
        weights=args.weights,
        unwrap=args.unwrap,
        tile_size=args.tile_size,
        stride=args.stride,
        epochs=args.epochs,
        plain=args.plain,
        seed=args.seed,
        threads=args.threads,
        name=args.name,
        model_version=args.model_version,
        progress=not args.no_progress,
        ring_search=_ring_search(args),
    )
    summary = export_tiles(options)
    print(json.dumps(summary, indent=2))
    return 0


def _run_attention(args: argparse.Namespace) -> int:
    from export.attention_export import AttentionOptions, export_attention
    from export.attention_training import AttentionSettings

    _check_output_folder(args.out, args.force)
    options = AttentionOptions(
        types_dir=args.types,
        defects_dir=args.defects,
        out_dir=args.out,
        variant=args.variant,
        window_stride_px=args.window_stride,
        settings=AttentionSettings(
            type_epochs=args.type_epochs,
            defect_epochs=args.epochs,
            windows_per_epoch=args.windows_per_epoch,
            progress=not args.no_progress,
        ),
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        threads=args.threads,
        weights=args.weights,
        name=args.name,
        model_version=args.model_version,
    )
    summary = export_attention(options)
    print(json.dumps(summary, indent=2))
    return 0


def _run_gdxray(args: argparse.Namespace) -> int:
    from export.gdxray import GdxrayOptions, prepare_gdxray

    options = GdxrayOptions(
        data_dir=args.data,
        out_dir=args.out,
        window_px=args.window,
        stride_px=args.stride,
        test_series=args.test_series,
        ok_per_image=args.ok_per_image,
        seed=args.seed,
        progress=not args.no_progress,
    )
    summary = prepare_gdxray(options)
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


def _add_ring_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ring-radius", type=_parse_fractions,
                        help="with unwrapping: range MIN,MAX of the part's outer radius, as fractions of the "
                             "image's shorter side (default: 0.35,0.5)")
    parser.add_argument("--ring-inner", type=float,
                        help="with unwrapping: inner radius of the ring as a fraction of the outer radius (default: 0.15)")
    parser.add_argument("--ring-min-contrast", type=float,
                        help="with unwrapping: smallest edge step in grey levels per pixel that counts as the part's "
                             "edge (default: 4)")


def _ring_search(args: argparse.Namespace):
    """Return the RingSearch the ring options describe, or None when none was given."""
    from edge.preprocess.ring import RingSearch

    settings = {}
    if args.ring_radius is not None:
        settings["min_outer_radius_fraction"], settings["max_outer_radius_fraction"] = args.ring_radius
    if args.ring_inner is not None:
        settings["inner_radius_fraction"] = args.ring_inner
    if args.ring_min_contrast is not None:
        settings["min_edge_contrast"] = args.ring_min_contrast
    if not settings:
        return None
    if not getattr(args, "unwrap", False):
        raise ValueError("--ring-radius, --ring-inner and --ring-min-contrast set the ring search; add --unwrap")
    try:
        return RingSearch(**settings)
    except ValueError as error:
        raise ValueError(f"invalid ring search options (--ring-radius, --ring-inner, --ring-min-contrast): {error}") from None


def _parse_fractions(text: str) -> tuple[float, float]:
    try:
        low, high = (float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"range {text!r} is invalid; write MIN,MAX as fractions, e.g. 0.3,0.5")
    return low, high


def _parse_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"series list {text!r} is empty; write names separated by commas, e.g. C0030,C0057")
    return names


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(value) for value in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is invalid; write HEIGHTxWIDTH in pixels, e.g. 64x512")
    return height, width


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
