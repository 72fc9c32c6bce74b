"""Training of attention models: stage 1 on casting types, stage 2 on defect windows.

Three variants share the network sizes, the defect data, the sampling and the budget of
stage 2 (epochs, windows per epoch, batch, optimiser, early stopping):
- `two-stage`: stage 1 trains the TCM on types; stage 2 freezes it and trains the bilinear DCM;
- `one-stage`: no stage 1; TCM and bilinear DCM are trained together on the defect windows;
- `gap-cam`:   as two-stage, with global average pooling and a plain CAM instead of bilinear pooling.

Each stage draws balanced batches of augmented windows: types in equal shares, and defect
windows in equal shares by class and, within a class, by series. A stage stops when the
validation loss has not improved for `patience` epochs and keeps the weights of its best epoch.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge.preprocess.transform import Preprocessor
from export.attention_nets import AttentionClassifier, TypeClassificationModule
from export.radiograph_augment import augment_window
from export.radiograph_data import TypeImages, Windows, balanced_draws, random_type_windows
from export.tile_data import normalised_batch

log = structlog.get_logger(__name__)

# variant name -> (DCM head, whether stage 1 trains and freezes the TCM first)
VARIANTS = {"two-stage": ("bilinear", True), "one-stage": ("bilinear", False), "gap-cam": ("gap", True)}
INFERENCE_BATCH = 64


@dataclass(frozen=True)
class AttentionSettings:
    """Budget and optimiser of both stages, sized for CPU training (see docs/benchmarks.md for timings)."""

    type_epochs: int = 4
    defect_epochs: int = 12
    windows_per_epoch: int = 1024
    type_validation_windows: int = 256
    batch_size: int = 32
    learning_rate: float = 1e-3
    backbone_learning_rate: float = 2e-4
    weight_decay: float = 1e-4
    patience: int = 3
    progress: bool = True


@dataclass
class StageReport:
    """Record of one training stage for the package's `training` section."""

    stage: str
    epochs_run: int = 0
    epochs_to_converge: int = 0
    best_validation_loss: float = float("nan")
    final_validation_accuracy: float = float("nan")
    training_s: float = 0.0

    def to_dict(self) -> dict:
        values = asdict(self)
        for key in ("best_validation_loss", "final_validation_accuracy", "training_s"):
            values[key] = round(values[key], 4)
        return values


def train_types(
    tcm: TypeClassificationModule,
    train: TypeImages,
    validation: TypeImages,
    window_px: tuple[int, int],
    preprocessor: Preprocessor,
    settings: AttentionSettings,
    rng: np.random.Generator,
) -> StageReport:
    """Stage 1: teach the TCM the casting types on random, augmented windows of whole radiographs."""
    validation_windows, validation_labels = random_type_windows(validation, settings.type_validation_windows, window_px, rng)
    validation_targets = torch.from_numpy(validation_labels)

    def batches() -> list[tuple[list[np.ndarray], torch.Tensor]]:
        windows, labels = random_type_windows(train, settings.windows_per_epoch, window_px, rng)
        return [
            ([augment_window(window, rng) for window in windows[start : start + settings.batch_size]],
             torch.from_numpy(labels[start : start + settings.batch_size]))
            for start in range(0, len(labels), settings.batch_size)
        ]

    def batch_loss(windows: list[np.ndarray], targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(tcm.type_logits(tcm(normalised_batch(windows, preprocessor))), targets)

    def validate() -> tuple[float, float]:
        logits = torch.cat([tcm.type_logits(tcm(batch)) for batch in _batches(validation_windows, preprocessor)])
        loss = float(F.cross_entropy(logits, validation_targets))
        accuracy = float((logits.argmax(dim=1) == validation_targets).float().mean())
        return loss, accuracy

    parameters = [{"params": _trainable(tcm), "lr": settings.backbone_learning_rate}]
    return _train_stage("types", tcm, parameters, batches, batch_loss, validate, settings.type_epochs, settings)


def train_defects(
    classifier: AttentionClassifier,
    train: Windows,
    validation: Windows,
    preprocessor: Preprocessor,
    settings: AttentionSettings,
    rng: np.random.Generator,
) -> StageReport:
    """Stage 2: train the DCM (and the TCM, unless it was frozen) on windows balanced by class and series."""
    validation_targets = torch.from_numpy(validation.labels).float()

    def batches() -> list[tuple[list[np.ndarray], torch.Tensor]]:
        order = balanced_draws(train, settings.windows_per_epoch, rng)
        return [
            ([augment_window(train.images[index], rng) for index in order[start : start + settings.batch_size]],
             torch.from_numpy(train.labels[order[start : start + settings.batch_size]]).float())
            for start in range(0, len(order), settings.batch_size)
        ]

    def batch_loss(windows: list[np.ndarray], targets: torch.Tensor) -> torch.Tensor:
        logits, _ = classifier(normalised_batch(windows, preprocessor))
        return F.binary_cross_entropy_with_logits(logits, targets)

    def validate() -> tuple[float, float]:
        logits = torch.cat([classifier(batch)[0] for batch in _batches(validation.images, preprocessor)])
        loss = float(F.binary_cross_entropy_with_logits(logits, validation_targets))
        accuracy = float(((logits > 0).float() == validation_targets).float().mean())
        return loss, accuracy

    parameters = [{"params": _trainable(classifier.dcm), "lr": settings.learning_rate}]
    if not classifier.tcm.frozen:
        parameters.append({"params": _trainable(classifier.tcm), "lr": settings.backbone_learning_rate})
    return _train_stage("defects", classifier, parameters, batches, batch_loss, validate, settings.defect_epochs, settings)


def predict_windows(
    classifier: AttentionClassifier, images: np.ndarray, preprocessor: Preprocessor
) -> tuple[np.ndarray, np.ndarray]:
    """Return the defect probability [M] and the defect map [M, h, w] at feature resolution, in PyTorch."""
    classifier.eval()
    probabilities, maps = [], []
    with torch.no_grad():
        for batch in _batches(images, preprocessor):
            logits, descriptors = classifier(batch)
            probabilities.append(torch.sigmoid(logits).numpy())
            maps.append(classifier.dcm.defect_map(descriptors).numpy())
    return np.concatenate(probabilities), np.concatenate(maps)


def _train_stage(
    stage: str,
    model: torch.nn.Module,
    parameters: list[dict],
    batches: Callable[[], list[tuple[list[np.ndarray], torch.Tensor]]],
    batch_loss: Callable[[list[np.ndarray], torch.Tensor], torch.Tensor],
    validate: Callable[[], tuple[float, float]],
    max_epochs: int,
    settings: AttentionSettings,
) -> StageReport:
    """Run AdamW epochs with early stopping on the validation loss; keep the best epoch's weights."""
    started = time.perf_counter()
    report = StageReport(stage)
    optimizer = torch.optim.AdamW(parameters, weight_decay=settings.weight_decay)
    best_loss, best_accuracy, stale_epochs = float("inf"), float("nan"), 0
    best_state = copy.deepcopy(model.state_dict())

    with tqdm(total=max_epochs, desc=f"stage {stage}", unit="epoch", disable=not settings.progress) as bar:
        for epoch in range(1, max_epochs + 1):
            model.train()
            losses = []
            for windows, targets in batches():
                # BatchNorm cannot train on a single sample.
                if len(windows) < 2:
                    continue
                loss = batch_loss(windows, targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())

            model.eval()
            with torch.no_grad():
                validation_loss, validation_accuracy = validate()
            report.epochs_run = epoch
            log.info("epoch finished", stage=stage, epoch=epoch, train_loss=round(float(np.mean(losses)), 4),
                     validation_loss=round(validation_loss, 4), validation_accuracy=round(validation_accuracy, 4))
            bar.set_postfix(validation_loss=f"{validation_loss:.4f}", accuracy=f"{validation_accuracy:.3f}")
            bar.update(1)

            if validation_loss < best_loss:
                best_loss, best_accuracy, stale_epochs = validation_loss, validation_accuracy, 0
                best_state = copy.deepcopy(model.state_dict())
                report.epochs_to_converge = epoch
            else:
                stale_epochs += 1
                if stale_epochs >= settings.patience:
                    log.info("early stop", stage=stage, epoch=epoch, best_epoch=report.epochs_to_converge)
                    break

    model.load_state_dict(best_state)
    model.eval()
    report.best_validation_loss = best_loss
    report.final_validation_accuracy = best_accuracy
    report.training_s = time.perf_counter() - started
    return report


def _batches(images: np.ndarray, preprocessor: Preprocessor):
    for start in range(0, len(images), INFERENCE_BATCH):
        yield normalised_batch(images[start : start + INFERENCE_BATCH], preprocessor)


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in module.parameters() if parameter.requires_grad]
