"""`edge-export attention`: train the two-stage attention classifier, calibrate it and write its model package.

The package's graph takes `windows` [N, 3, H, W] and returns `defect_probability` [N] and
`bicam` [N, H, W], the Bi-CAM map at window size (the plain CAM for the `gap-cam` variant).
Its `windows` section makes the daemon cover larger frames with overlapping windows of
the training windows' size, at native resolution.

NOTE: on GDXray series held out from training, the default two-stage model classified 68% of
the windows correctly (docs/benchmarks.md), and its threshold, set on other held-out series,
moves from one series to the next. Check a model on the line's own castings before trusting it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
import torch

from edge.evaluation.metrics import classification_rates
from edge.preprocess.tiling import TileSpec
from edge.preprocess.transform import NORMALIZATIONS, PreprocessSpec, Preprocessor
from export.attention_nets import NORMALIZATION, AttentionClassifier, AttentionGraph, build_attention_classifier
from export.attention_training import VARIANTS, AttentionSettings, StageReport, train_defects, train_types
from export.onnx_graph import OPSET, cpu_session, export_onnx
from export.package_writer import file_list_sha256, write_package
from export.radiograph_data import (
    Windows,
    load_defect_windows,
    load_type_images,
    split_by_series,
    split_types,
)
from export.tile_data import normalised_batch

log = structlog.get_logger(__name__)

INPUT_NAME = "windows"
OUTPUT_NAMES = ["defect_probability", "bicam"]
# ONNX Runtime and PyTorch must agree within this share of each output's range (1 for probabilities).
PARITY_TOLERANCE = 1e-4
PARITY_WINDOWS = 64
CALIBRATION_METHOD = "max_balanced_accuracy"


@dataclass(frozen=True)
class AttentionOptions:
    types_dir: Path | None
    defects_dir: Path
    out_dir: Path
    variant: str = "two-stage"
    window_stride_px: int | None = None
    settings: AttentionSettings = AttentionSettings()
    validation_fraction: float = 0.2
    seed: int = 0
    threads: int | None = None
    weights: Path | None = None
    name: str | None = None
    model_version: str | None = None


def export_attention(options: AttentionOptions) -> dict:
    """Train the chosen variant, export it to ONNX, check parity, calibrate on validation windows, write the package.

    Returns the summary printed by the command.
    """
    started = time.perf_counter()
    head, two_stage = _check_variant(options)
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)

    windows = load_defect_windows(options.defects_dir)
    window_px = windows.window_px
    stride_px = options.window_stride_px or window_px[1] // 2
    windows_spec = TileSpec(window_px[0], window_px[1], _checked_stride(stride_px, window_px))
    train, validation = split_by_series(windows, options.validation_fraction, options.seed)
    type_images = load_type_images(options.types_dir) if two_stage else None

    mean, std = NORMALIZATIONS[NORMALIZATION]
    spec = PreprocessSpec(window_px[0], window_px[1], normalization=NORMALIZATION, mean=mean, std=std)
    preprocessor = Preprocessor(spec)
    type_count = len(type_images.type_names) if type_images else 2
    classifier = build_attention_classifier(type_count, head, options.weights)

    stages: list[StageReport] = []
    if two_stage:
        type_train, type_validation = split_types(type_images, options.validation_fraction, options.seed)
        stages.append(train_types(classifier.tcm, type_train, type_validation, window_px, preprocessor, options.settings, rng))
        classifier.tcm.freeze()
    else:
        classifier.tcm.type_classifier = None
    stages.append(train_defects(classifier, train, validation, preprocessor, options.settings, rng))

    onnx_bytes = export_graph(classifier, window_px)
    session = cpu_session(onnx_bytes)
    parity = check_parity(classifier, session, validation, preprocessor)

    validation_scores = window_scores(session, validation.images, preprocessor)
    threshold = calibrate_threshold(validation_scores, validation.labels)
    validation_metrics = window_metrics(validation_scores, validation.labels, threshold)

    threshold_entry = {"value": threshold, "method": CALIBRATION_METHOD, "validation_windows": len(validation)}
    sources = [options.defects_dir / name for name in windows.names]
    out_dir = write_package(
        options.out_dir,
        onnx_bytes,
        kind="attention",
        name=options.name or options.out_dir.resolve().name,
        version=options.model_version,
        preprocess=spec,
        thresholds={"image": dict(threshold_entry), "pixel": dict(threshold_entry)},
        onnx_info={
            "opset": OPSET,
            "input": INPUT_NAME,
            "input_shape": ["N", 3, window_px[0], window_px[1]],
            "outputs": OUTPUT_NAMES,
            "export_parity": parity,
        },
        sections={
            "windows": windows_spec.to_dict(),
            "network": {
                "variant": options.variant,
                "tcm": "efficientnet_lite0 blocks 0-10, output stride 8",
                "head": head,
                "weights": str(options.weights) if options.weights else "bundled ImageNet weights",
                "types": type_images.type_names if type_images else None,
            },
            "training": {
                "stages": [stage.to_dict() for stage in stages],
                "settings": {key: value for key, value in options.settings.__dict__.items() if key != "progress"},
                "windows": {"train": _counts(train), "validation": _counts(validation)},
                "defects_dir": str(options.defects_dir),
                "types_dir": str(options.types_dir) if two_stage else None,
                "file_list_sha256": file_list_sha256(sources, options.defects_dir),
                "seed": options.seed,
            },
            "evaluation": {"validation": validation_metrics},
        },
    )

    summary = {
        "out_dir": str(out_dir),
        "variant": options.variant,
        "window_px": list(window_px),
        "windows": {"train": _counts(train), "validation": _counts(validation)},
        "stages": [stage.to_dict() for stage in stages],
        "threshold": threshold,
        "validation": validation_metrics,
        "parity": parity,
        "total_s": round(time.perf_counter() - started, 1),
    }
    log.info("attention model exported", out_dir=summary["out_dir"], variant=options.variant, total_s=summary["total_s"],
             validation_accuracy=validation_metrics["accuracy"])
    return summary


def export_graph(classifier: AttentionClassifier, window_px: tuple[int, int]) -> bytes:
    """Export with a dynamic window axis, so one call scores all windows of a frame."""
    graph = AttentionGraph(classifier).eval()
    example = torch.zeros(2, 3, *window_px)
    return export_onnx(graph, example, INPUT_NAME, OUTPUT_NAMES, dynamic_batch="windows")


def check_parity(classifier: AttentionClassifier, session, windows: Windows, preprocessor: Preprocessor) -> dict:
    """Compare ONNX Runtime with PyTorch on real windows; the map's error is a share of the PyTorch map's range.

    Raises RuntimeError when a difference exceeds PARITY_TOLERANCE.
    """
    graph = AttentionGraph(classifier).eval()
    tensor = normalised_batch(windows.images[:PARITY_WINDOWS], preprocessor)
    with torch.no_grad():
        torch_probability, torch_map = (output.numpy() for output in graph(tensor))
    onnx_probability, onnx_map = session.run(OUTPUT_NAMES, {INPUT_NAME: tensor.numpy()})
    map_range = max(float(torch_map.max() - torch_map.min()), 1e-12)
    parity = {
        "windows": int(tensor.shape[0]),
        "max_probability_error": float(np.abs(onnx_probability - torch_probability).max()),
        "max_map_error_of_range": float(np.abs(onnx_map - torch_map).max()) / map_range,
        "tolerance": PARITY_TOLERANCE,
    }
    if parity["max_probability_error"] > PARITY_TOLERANCE or parity["max_map_error_of_range"] > PARITY_TOLERANCE:
        raise RuntimeError(
            f"the exported ONNX graph does not reproduce the PyTorch outputs ({parity}); no package was "
            "written. This is a bug in the export; report it with the command line used"
        )
    return parity


def window_scores(session, images: np.ndarray, preprocessor: Preprocessor, batch: int = 64) -> np.ndarray:
    """Return each window's defect probability from the ONNX graph, as the daemon computes it."""
    scores = []
    for start in range(0, len(images), batch):
        tensor = normalised_batch(images[start : start + batch], preprocessor).numpy()
        (probability,) = session.run(OUTPUT_NAMES[:1], {INPUT_NAME: tensor})
        scores.append(np.asarray(probability, dtype=np.float64).reshape(-1))
    return np.concatenate(scores)


def calibrate_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Choose the threshold with the best balanced accuracy (mean of the ok and defect recalls).

    Balanced accuracy does not depend on how many ok windows were kept per image. Candidates
    are the midpoints between neighbouring distinct scores; among equally good ones the lowest
    is taken, which lets the fewest defects escape.
    """
    distinct = np.unique(scores)
    candidates = np.concatenate([[distinct[0]], (distinct[:-1] + distinct[1:]) / 2.0]) if distinct.size > 1 else distinct
    defective, good = scores[labels == 1], scores[labels == 0]
    recall = (defective[None, :] >= candidates[:, None]).mean(axis=1)
    specificity = (good[None, :] < candidates[:, None]).mean(axis=1)
    return float(candidates[int(np.argmax((recall + specificity) / 2.0))])


def window_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Return accuracy, escape and false reject rates of the rule score >= threshold."""
    rates = classification_rates(labels, scores >= threshold)
    return {
        "windows": int(labels.size),
        "accuracy": rates["accuracy"],
        "escape_rate": rates["escape_rate"],
        "false_reject_rate": rates["false_reject_rate"],
        "confusion_matrix": rates["confusion_matrix"],
    }


def _check_variant(options: AttentionOptions) -> tuple[str, bool]:
    if options.variant not in VARIANTS:
        raise ValueError(f"--variant {options.variant!r} is unknown; use one of {', '.join(VARIANTS)}")
    head, two_stage = VARIANTS[options.variant]
    if two_stage and options.types_dir is None:
        raise ValueError(f"the {options.variant} variant trains stage 1 on casting types; pass --types DIR")
    if not two_stage and options.types_dir is not None:
        log.warning("the type dataset is not used by this variant", variant=options.variant, types=str(options.types_dir))
    return head, two_stage


def _checked_stride(stride_px: int, window_px: tuple[int, int]) -> int:
    if not 1 <= stride_px <= min(window_px):
        raise ValueError(
            f"--window-stride {stride_px} is invalid; use 1 to the window size {min(window_px)} px so windows leave no gaps"
        )
    return stride_px


def _counts(windows: Windows) -> dict[str, int]:
    return {"ok": windows.count(0), "defect": windows.count(1)}
