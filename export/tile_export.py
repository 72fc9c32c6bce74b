"""`edge-export tiles`: train a tile classifier, calibrate its tile threshold, export and package it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
import torch

from edge.evaluation.metrics import classification_rates
from edge.preprocess.ring import RingSearch
from edge.preprocess.transform import Preprocessor
from export.onnx_graph import OPSET, cpu_session, export_onnx
from export.package_writer import file_list_sha256, write_package
from export.tile_data import DEFECT_LABEL, Part, TileLayout, load_parts, normalised_batch, tile_preprocessor
from export.tile_nets import TileClassifier, TileClassifierGraph, build_tile_classifier
from export.tile_training import TrainingSettings, train_full, train_plain

log = structlog.get_logger(__name__)

INPUT_NAME = "tiles"
OUTPUT_NAMES = ["defect_probability", "cam"]
# ONNX Runtime and PyTorch must agree within this share of each output's range (1 for probabilities).
PARITY_TOLERANCE = 1e-4
PARITY_TILES = 64
CALIBRATION_METHOD = "min_escapes_then_false_rejects"


@dataclass(frozen=True)
class TilesOptions:
    data_dir: Path
    out_dir: Path
    good: str = "good"
    arch: str = "efficientnet_lite0"
    weights: Path | None = None
    unwrap: bool = True
    tile_size: int = 96
    stride: int | None = None
    epochs: int = 15
    plain: bool = False
    seed: int = 0
    threads: int | None = None
    name: str | None = None
    model_version: str | None = None
    progress: bool = True
    ring_search: RingSearch | None = None


def export_tiles(options: TilesOptions) -> dict:
    """Load and split the parts, train, export to ONNX, calibrate on validation parts, evaluate on test parts.

    Returns the summary printed by the command.
    """
    started = time.perf_counter()
    stride = options.stride if options.stride is not None else options.tile_size // 2
    _check_options(options, stride)
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)

    layout = TileLayout.for_tiles(options.tile_size, stride, options.unwrap, search=options.ring_search)
    split = load_parts(options.data_dir, options.good, layout, options.seed)
    model = build_tile_classifier(options.arch, options.weights)
    spec, preprocessor = tile_preprocessor(options.tile_size, model.normalization)

    settings = TrainingSettings(max_epochs=options.epochs, progress=options.progress)
    train = train_plain if options.plain else train_full
    log.info("tile training started", method="plain" if options.plain else "sdd-cnn", arch=options.arch,
             train=len(split.train), validation=len(split.validation))
    report = train(model, split.train, split.validation, preprocessor, settings, options.seed)

    onnx_bytes = export_graph(model, options.tile_size)
    session = cpu_session(onnx_bytes)
    parity = check_parity(model, session, split.test, preprocessor)

    validation_scores = part_scores(session, split.validation, preprocessor)
    threshold = calibrate_threshold(validation_scores, _labels(split.validation))
    validation_metrics = part_metrics(validation_scores, _labels(split.validation), threshold)
    if validation_metrics["false_reject_rate"] >= 0.5:
        # Escapes come first in the calibration, so a weak model gets a threshold that fails good parts.
        log.warning("the calibrated threshold fails most good validation parts; train on more images or more epochs",
                    threshold=threshold, false_reject_rate=validation_metrics["false_reject_rate"])
    test_scores = part_scores(session, split.test, preprocessor)
    test_metrics = part_metrics(test_scores, _labels(split.test), threshold)

    threshold_entry = {"value": threshold, "method": CALIBRATION_METHOD, "validation_parts": len(split.validation)}
    all_paths = [part.path for part in split.train + split.validation + split.test]
    out_dir = write_package(
        options.out_dir,
        onnx_bytes,
        kind="tile_classifier",
        name=options.name or options.out_dir.resolve().name,
        version=options.model_version,
        preprocess=spec,
        thresholds={"image": dict(threshold_entry), "pixel": dict(threshold_entry)},
        onnx_info={
            "opset": OPSET,
            "input": INPUT_NAME,
            "input_shape": ["N", 3, options.tile_size, options.tile_size],
            "outputs": OUTPUT_NAMES,
            "export_parity": parity,
        },
        sections={
            "ring": layout.ring_section(),
            "network": {
                "arch": options.arch,
                "weights": _weights_label(options),
            },
            "training": {
                **report.to_dict(),
                "good_class": options.good,
                "class_counts": split.class_counts,
                "split": {"train": len(split.train), "validation": len(split.validation), "test": len(split.test)},
                "skipped_images": split.skipped,
                "file_list_sha256": file_list_sha256(all_paths, options.data_dir),
                "data_dir": str(options.data_dir),
                "seed": options.seed,
            },
            "evaluation": {"validation": validation_metrics, "test": test_metrics},
        },
    )

    summary = {
        "out_dir": str(out_dir),
        "method": report.method,
        "arch": options.arch,
        "unwrap": options.unwrap,
        "tiles_per_part": int(split.train[0].tiles.shape[0]),
        "images": split.class_counts,
        "skipped_images": len(split.skipped),
        "split": {"train": len(split.train), "validation": len(split.validation), "test": len(split.test)},
        "training": report.to_dict(),
        "threshold": threshold,
        "validation": validation_metrics,
        "test": test_metrics,
        "parity": parity,
        "total_s": round(time.perf_counter() - started, 1),
    }
    log.info("tile classifier exported", out_dir=summary["out_dir"], total_s=summary["total_s"],
             test_accuracy=test_metrics["accuracy"], test_escape_rate=test_metrics["escape_rate"])
    return summary


def export_graph(model: TileClassifier, tile_size: int) -> bytes:
    """Export the graph with a dynamic tile axis, so one call scores all tiles of a part."""
    graph = TileClassifierGraph(model).eval()
    example = torch.zeros(2, 3, tile_size, tile_size)
    return export_onnx(graph, example, INPUT_NAME, OUTPUT_NAMES, dynamic_batch="tiles")


def check_parity(model: TileClassifier, session, parts: list[Part], preprocessor: Preprocessor) -> dict:
    """Compare ONNX Runtime with PyTorch on real tiles: one part's tiles, then a batch of up to PARITY_TILES.

    Raises RuntimeError when a difference exceeds PARITY_TOLERANCE of the output's range.
    """
    graph = TileClassifierGraph(model).eval()
    flat = np.concatenate([part.tiles for part in parts])
    batches = [parts[0].tiles, flat[:PARITY_TILES]]
    worst_probability = worst_cam = 0.0
    tiles_checked = 0
    with torch.no_grad():
        for tiles in batches:
            tensor = normalised_batch(tiles, preprocessor)
            onnx_probability, onnx_cam = session.run(OUTPUT_NAMES, {INPUT_NAME: tensor.numpy()})
            torch_probability, torch_cam = (output.numpy() for output in graph(tensor))
            worst_probability = max(worst_probability, float(np.abs(onnx_probability - torch_probability).max()))
            cam_range = max(float(torch_cam.max()), 1e-6)
            worst_cam = max(worst_cam, float(np.abs(onnx_cam - torch_cam).max()) / cam_range)
            tiles_checked += len(tiles)

    parity = {
        "tiles": tiles_checked,
        "max_probability_error": worst_probability,
        "max_cam_error_of_range": worst_cam,
        "tolerance": PARITY_TOLERANCE,
    }
    if worst_probability > PARITY_TOLERANCE or worst_cam > PARITY_TOLERANCE:
        raise RuntimeError(
            f"the exported ONNX graph does not reproduce the PyTorch outputs ({parity}); no package was "
            "written. This is a bug in the export; report it with the command line used"
        )
    return parity


def part_scores(session, parts: list[Part], preprocessor: Preprocessor) -> np.ndarray:
    """Return each part's score as the daemon computes it: the maximum tile probability of one ONNX call."""
    scores = []
    for part in parts:
        (probability,) = session.run(OUTPUT_NAMES[:1], {INPUT_NAME: normalised_batch(part.tiles, preprocessor).numpy()})
        scores.append(float(np.max(probability)))
    return np.asarray(scores)


def calibrate_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Choose the tile threshold that passes no defective part, then fails the fewest good parts.

    With no defective part below the lowest defective score, that score is the highest
    threshold with the fewest escapes. The threshold sits halfway between it and the highest
    good score below it, which keeps the same validation rates with a margin toward escapes.
    """
    defective = scores[labels == DEFECT_LABEL]
    good = scores[labels != DEFECT_LABEL]
    lowest_defective = float(defective.min())
    good_below = good[good < lowest_defective]
    if good_below.size == 0:
        return lowest_defective
    return float((good_below.max() + lowest_defective) / 2.0)


def part_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Return accuracy, escape and false reject rates of the rule score >= threshold."""
    rates = classification_rates(labels, scores >= threshold)
    return {
        "parts": int(labels.size),
        "accuracy": rates["accuracy"],
        "escape_rate": rates["escape_rate"],
        "false_reject_rate": rates["false_reject_rate"],
        "confusion_matrix": rates["confusion_matrix"],
    }


def _labels(parts: list[Part]) -> np.ndarray:
    return np.asarray([part.label for part in parts])


def _weights_label(options: TilesOptions) -> str:
    if options.weights is not None:
        return str(options.weights)
    return "bundled ImageNet weights" if options.arch == "efficientnet_lite0" else "none (trained from scratch)"


def _check_options(options: TilesOptions, stride: int) -> None:
    if options.tile_size % 16 != 0 or options.tile_size < 32:
        raise ValueError(f"--tile-size {options.tile_size} is invalid; use a multiple of 16 of at least 32, such as 96")
    if not 1 <= stride <= options.tile_size:
        raise ValueError(f"--stride {stride} is invalid; use 1 to the tile size {options.tile_size} so tiles leave no gaps")
    if options.epochs < 1:
        raise ValueError(f"--epochs {options.epochs} is invalid; use at least 1")
