"""`edge-export padim`: fit PaDiM on good images, calibrate thresholds, write the model package."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import structlog
import torch
from tqdm import tqdm

from edge.preprocess.polar import UnwrapSpec
from edge.preprocess.ring import RingSearch
from edge.preprocess.ring_input import RingSection, strip_for_model
from edge.preprocess.transform import NORMALIZATIONS, PreprocessSpec, Preprocessor, Roi
from export.backbones import build_backbone
from export.images import list_images, read_image, split_calibration, tensor_batches
from export.onnx_graph import OPSET, export_onnx
from export.package_writer import file_list_sha256, write_package
from export.padim import (
    COVARIANCE_REGULARIZATION,
    FEATURE_STRIDE,
    GAUSSIAN_SIGMA,
    GaussianAccumulator,
    PadimGraph,
    embed,
    image_threshold_from_good,
    invert_covariances,
    pixel_threshold_from_good,
    select_channels,
)

log = structlog.get_logger(__name__)

# Exported and PyTorch maps must agree within this share of the map's range.
PARITY_MAP_TOLERANCE = 1e-3
PARITY_SCORE_TOLERANCE = 1e-4
# Protobuf limits an ONNX file to 2 GiB; keep room for the backbone and the graph.
MAX_ONNX_BYTES = int(1.8 * 2**30)
# Below these counts of good images the covariances and the threshold estimates are noisy.
RECOMMENDED_FITTING_IMAGES = 30
RECOMMENDED_CALIBRATION_IMAGES = 10


@dataclass(frozen=True)
class PadimOptions:
    train_dir: Path
    out_dir: Path
    backbone: str = "efficientnet_lite0"
    weights: Path | None = None
    image_size: int = 224
    channels: int | None = 100
    calibration_fraction: float = 0.2
    target_false_reject: float = 0.005
    normalization: str | None = None
    interpolation: str = "area"
    roi: Roi | None = None
    seed: int = 0
    batch_size: int = 8
    name: str | None = None
    model_version: str | None = None
    progress: bool = True
    # Fit on the unwrapped ring of each part (strip_size is the model input, height x width), and
    # optionally turn every strip to the angle of a reference strip first.
    unwrap: bool = False
    align: bool = False
    strip_size: tuple[int, int] = (64, 512)
    ring_search: RingSearch | None = None


@dataclass
class FittedPadim:
    """A fitted PaDiM graph with the preprocessing and the image split it was fitted with."""

    graph: PadimGraph
    spec: PreprocessSpec
    ring: RingSection
    images: list[Path]
    fitting: list[Path]
    calibration: list[Path]
    backbone_name: str
    layer_names: list[str]
    layer_channels: list[int]
    channel_indices: np.ndarray


def fit(options: PadimOptions) -> FittedPadim:
    """Fit the per-position Gaussians on the fitting images and build the graph to export."""
    if not 0.0 < options.target_false_reject < 0.5:
        raise ValueError(
            f"--target-false-reject {options.target_false_reject} is invalid; use a rate above 0 and below 0.5, such as 0.005 (0.5%)"
        )
    input_height, input_width = model_input_size(options)
    torch.manual_seed(options.seed)

    images = list_images(options.train_dir)
    fitting, calibration = split_calibration(images, options.calibration_fraction, options.seed)
    backbone = build_backbone(options.backbone, options.weights)
    normalization = options.normalization or backbone.default_normalization
    mean, std = NORMALIZATIONS[normalization] if normalization in NORMALIZATIONS else (None, None)
    if mean is None:
        raise ValueError(f"--normalization {normalization!r} is unknown; use one of {sorted(NORMALIZATIONS)}")
    spec = PreprocessSpec(input_height, input_width, resize_interpolation=options.interpolation,
                          normalization=normalization, mean=mean, std=std, roi=options.roi)
    ring = ring_section_for(options, fitting)
    preprocessor = ImagePreprocessor(spec, ring)
    if len(fitting) < RECOMMENDED_FITTING_IMAGES or len(calibration) < RECOMMENDED_CALIBRATION_IMAGES:
        log.warning(
            "few good images: the model and its thresholds will be unreliable",
            fitting=len(fitting),
            calibration=len(calibration),
            recommended_fitting=RECOMMENDED_FITTING_IMAGES,
            recommended_calibration=RECOMMENDED_CALIBRATION_IMAGES,
        )
    log.info("padim fit started", images=len(images), fitting=len(fitting), calibration=len(calibration),
             backbone=backbone.name, normalization=normalization, image_size=options.image_size)

    channel_indices = select_channels(sum(backbone.channels), options.channels, options.seed)
    positions = (input_height // FEATURE_STRIDE) * (input_width // FEATURE_STRIDE)
    _check_model_size(positions, len(channel_indices))
    index_tensor = torch.as_tensor(channel_indices, dtype=torch.long)
    accumulator = GaussianAccumulator(len(channel_indices), positions)
    with torch.inference_mode():
        batches = tensor_batches(fitting, preprocessor, options.batch_size)
        for _, batch in _progress(batches, len(fitting), "fitting", options.progress):
            accumulator.add(embed(backbone, batch, index_tensor))
    mean, covariance = accumulator.mean_and_covariance()
    inverse_covariance = invert_covariances(covariance)

    graph = PadimGraph(backbone, channel_indices, mean, inverse_covariance, (input_height, input_width))
    graph.eval()
    return FittedPadim(
        graph=graph,
        spec=spec,
        ring=ring,
        images=images,
        fitting=fitting,
        calibration=calibration,
        backbone_name=backbone.name,
        layer_names=list(backbone.layer_names),
        layer_channels=list(backbone.channels),
        channel_indices=channel_indices,
    )


def fit_padim(options: PadimOptions) -> dict:
    """Fit, export, check and calibrate; return a summary with timings and parity figures."""
    started = time.perf_counter()
    fitted = fit(options)
    fitted_at = time.perf_counter()

    # Score the held-out good images with the exported graph itself, so the thresholds are set
    # on exactly the scores the daemon will compute.
    input_height, input_width = fitted.spec.input_height, fitted.spec.input_width
    example = torch.zeros(1, 3, input_height, input_width)
    onnx_bytes = export_onnx(fitted.graph, example, "image", ["anomaly_map", "image_score"])
    maps, scores, parity = _score_calibration(
        fitted.graph, onnx_bytes, fitted.calibration, ImagePreprocessor(fitted.spec, fitted.ring), options.progress
    )
    image_threshold = image_threshold_from_good(scores, options.target_false_reject)
    pixel_threshold = pixel_threshold_from_good(maps, options.target_false_reject)

    out_dir = write_package(
        options.out_dir,
        onnx_bytes,
        kind="padim",
        name=options.name or options.out_dir.resolve().name,
        version=options.model_version,
        preprocess=fitted.spec,
        thresholds={
            "image": {"value": image_threshold.value, **image_threshold.details},
            "pixel": {"value": pixel_threshold.value, **pixel_threshold.details},
        },
        onnx_info={
            "opset": OPSET,
            "input": "image",
            "input_shape": [1, 3, input_height, input_width],
            "outputs": ["anomaly_map", "image_score"],
            "export_parity": parity,
        },
        sections={
            "backbone": {
                "name": fitted.backbone_name,
                "layers": fitted.layer_names,
                "layer_channels": fitted.layer_channels,
                "weights": str(options.weights) if options.weights else "bundled ImageNet weights",
            },
            "padim": {
                "feature_stride": FEATURE_STRIDE,
                "channels_total": int(sum(fitted.layer_channels)),
                "channel_seed": options.seed,
                "channel_indices": [int(index) for index in fitted.channel_indices],
                "covariance_regularization": COVARIANCE_REGULARIZATION,
                "gaussian_sigma": GAUSSIAN_SIGMA,
            },
            **({"ring": fitted.ring.to_dict()} if fitted.ring.unwraps else {}),
            "training": {
                "image_count": len(fitted.fitting),
                "calibration_count": len(fitted.calibration),
                "file_list_sha256": file_list_sha256(fitted.images, options.train_dir),
                "train_dir": str(options.train_dir),
                "seed": options.seed,
            },
        },
    )
    finished = time.perf_counter()
    summary = {
        "out_dir": str(out_dir),
        "fit_s": round(fitted_at - started, 1),
        "total_s": round(finished - started, 1),
        "image_threshold": image_threshold.value,
        "pixel_threshold": pixel_threshold.value,
        "parity": parity,
    }
    log.info("padim exported", out_dir=summary["out_dir"], total_s=summary["total_s"])
    return summary


def _check_model_size(positions: int, channels: int) -> None:
    """Fail before fitting when the inverse covariances would not fit in one ONNX file."""
    size_bytes = positions * channels * channels * 4
    if size_bytes > MAX_ONNX_BYTES:
        raise ValueError(
            f"{positions} anomaly-map positions with --channels {channels} need {size_bytes / 2**30:.1f} GiB of inverse "
            f"covariances, more than the {MAX_ONNX_BYTES / 2**30:.1f} GiB an ONNX file can hold without external "
            "data; lower --channels or --image-size (--strip-size with --unwrap)"
        )


def model_input_size(options: PadimOptions) -> tuple[int, int]:
    """Return the model input (height, width): the square image size, or the strip size when unwrapping."""
    if options.align and not options.unwrap:
        raise ValueError("--align turns unwrapped strips; add --unwrap")
    if options.unwrap:
        if options.roi is not None:
            raise ValueError("--roi crops the frame before a square resize and does not apply with --unwrap; remove it")
        if options.image_size != 224:
            raise ValueError("--image-size does not apply with --unwrap; set the model input with --strip-size")
        height, width = options.strip_size
        if height % 16 or width % 16 or height < 32 or width < 64:
            raise ValueError(
                f"--strip-size {height}x{width} is invalid; use multiples of 16, at least 32x64, such as 64x512"
            )
        return height, width
    if options.strip_size != (64, 512):
        raise ValueError("--strip-size sets the model input of unwrapped strips; add --unwrap or remove it")
    if options.image_size % 16 != 0 or options.image_size < 64:
        raise ValueError(f"--image-size {options.image_size} is invalid; use a multiple of 16 of at least 64, such as 224")
    return options.image_size, options.image_size


# Size of the grey reference strip stored for angular alignment: few rows, enough columns for
# the angular resolution (360 / 256 = 1.4 degrees).
ALIGNMENT_REFERENCE_SIZE = (16, 256)


def ring_section_for(options: PadimOptions, fitting: list[Path]) -> RingSection:
    """Build the `ring` section: none, unwrapping only, or unwrapping with a reference strip for alignment."""
    if not options.unwrap:
        return RingSection()
    section = RingSection(search=options.ring_search or RingSearch(), unwrap=UnwrapSpec(radial_px=options.strip_size[0]))
    if not options.align:
        return section
    # The first fitting image sets the canonical angle; every other strip is turned to match it.
    strip = strip_for_model(read_image(fitting[0]), section)
    grey = cv2.cvtColor(strip, cv2.COLOR_BGR2GRAY) if strip.ndim == 3 else strip
    reference = cv2.resize(grey, ALIGNMENT_REFERENCE_SIZE[::-1], interpolation=cv2.INTER_AREA).astype(np.float32)
    return dataclasses.replace(section, alignment_reference=reference)


class ImagePreprocessor:
    """The daemon's input for one image: the whole frame, or the part's aligned strip, preprocessed."""

    def __init__(self, spec: PreprocessSpec, ring: RingSection) -> None:
        self.preprocessor = Preprocessor(spec)
        self.ring = ring

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.ring.unwraps:
            image = strip_for_model(image, self.ring)
        return self.preprocessor(image)


def _score_calibration(
    graph: PadimGraph, onnx_bytes: bytes, calibration: list[Path], preprocessor: Preprocessor, progress: bool
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Score held-out images in ONNX Runtime and compare every one with the PyTorch graph."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    maps, scores = [], []
    worst_map_error = worst_score_error = 0.0
    with torch.inference_mode():
        for _, tensor in _progress(tensor_batches(calibration, preprocessor, 1), len(calibration), "calibrating", progress):
            onnx_map, onnx_score = session.run(None, {"image": tensor.numpy()})
            torch_map, torch_score = graph(tensor)
            torch_map = torch_map.numpy()
            map_range = float(torch_map.max() - torch_map.min()) or 1.0
            worst_map_error = max(worst_map_error, float(np.abs(onnx_map - torch_map).max()) / map_range)
            worst_score_error = max(
                worst_score_error, abs(float(onnx_score[0]) - float(torch_score[0])) / max(abs(float(torch_score[0])), 1e-12)
            )
            maps.append(onnx_map[0, 0])
            scores.append(float(onnx_score[0]))

    if not all(np.isfinite(score) for score in scores) or not all(np.isfinite(item).all() for item in maps):
        raise RuntimeError(
            "the exported graph returned NaN or infinite scores on held-out good images; check that the "
            "training images are valid and try fewer --channels"
        )
    parity = {
        "images": len(calibration),
        "max_map_error_of_range": worst_map_error,
        "max_score_relative_error": worst_score_error,
    }
    if worst_map_error > PARITY_MAP_TOLERANCE or worst_score_error > PARITY_SCORE_TOLERANCE:
        raise RuntimeError(
            f"the exported ONNX graph does not reproduce the PyTorch scores ({parity}); "
            "this is a bug in the export, please report it with the command line used"
        )
    return np.stack(maps), np.asarray(scores), parity


def _progress(iterator, total: int, label: str, enabled: bool):
    with tqdm(total=total, desc=label, unit="img", disable=not enabled) as bar:
        for paths, batch in iterator:
            yield paths, batch
            bar.update(len(paths))

