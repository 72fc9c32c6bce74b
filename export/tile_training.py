"""Training of a tile classifier with few, imbalanced labelled parts (SDD-CNN).

The method follows Xu et al., "Small Data-Driven Convolution Neural Networks for Subtle Roller
Defect Inspection", Applied Sciences 2019, with image labels only:

1. a coarse model learns by multiple-instance learning (a part's probability is the maximum of
   its tiles' defect probabilities, with binary cross-entropy at part level);
2. label dilation: tiles of defect parts that the coarse model marks as evidence become defect
   tiles, their other tiles are dropped, and the defect tiles are expanded with label-preserving
   transforms until the classes balance;
3. semi-supervised data augmentation: crops drawn toward high class activation of the coarse
   model, kept only where the coarse model is confident;
4. the final training with class-balanced sampling and early stopping on the validation loss.

The validation loss is the part-level loss of step 1 on the validation parts, so the plain
method and the full one stop on the same criterion.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge.preprocess.transform import Preprocessor
from export.tile_augment import cam_guided_crop, expansion_variant, online_augment
from export.tile_data import DEFECT_LABEL, GOOD_LABEL, Part, normalised_batch
from export.tile_nets import DEFECT_CLASS, TileClassifier

log = structlog.get_logger(__name__)

# A tile of a defect part is defect evidence from this coarse-model probability on.
EVIDENCE_PROBABILITY = 0.5
# Crops whose coarse-model probability lies in this band are too uncertain to inherit a label.
UNCERTAIN_BAND = (0.3, 0.7)
INFERENCE_BATCH = 64


@dataclass(frozen=True)
class TrainingSettings:
    """Epochs, batch and optimiser settings.

    Sized for CPU training: on the 500 cast impeller training images (96 px tiles, 8 per part)
    the whole default run took 4.5 minutes with 2 PyTorch threads on a shared 2-core VM
    (benchmarks/impeller_tiles.py). The final training stopped at epoch 7, best at epoch 4.
    """

    max_epochs: int = 15
    patience: int = 3
    coarse_epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    progress: bool = True


@dataclass
class TrainingReport:
    """Record of one training run, for the package's `training` section and the command's summary."""

    method: str
    coarse_epochs: int = 0
    epochs_run: int = 0
    epochs_to_converge: int = 0
    best_validation_loss: float = float("nan")
    tiles: dict[str, int] = field(default_factory=dict)
    training_s: float = 0.0

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "coarse_epochs": self.coarse_epochs,
            "epochs_run": self.epochs_run,
            "epochs_to_converge": self.epochs_to_converge,
            "best_validation_loss": round(self.best_validation_loss, 6),
            "tiles": dict(self.tiles),
            "training_s": round(self.training_s, 1),
        }


@dataclass
class TileSamples:
    """Labelled training tiles: uint8 [M, h, w, 3] and labels [M] (0 good, 1 defect)."""

    tiles: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def count(self, label: int) -> int:
        return int(np.count_nonzero(self.labels == label))

    def joined(self, other: TileSamples) -> TileSamples:
        if len(other) == 0:
            return self
        return TileSamples(np.concatenate([self.tiles, other.tiles]), np.concatenate([self.labels, other.labels]))


def train_full(
    model: TileClassifier,
    train: list[Part],
    validation: list[Part],
    preprocessor: Preprocessor,
    settings: TrainingSettings,
    seed: int,
) -> TrainingReport:
    """Train with the whole method (coarse model, label dilation, SSDA, balanced final training)."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    report = TrainingReport(method="sdd-cnn")

    train_mil(model, train, preprocessor, settings, rng)
    report.coarse_epochs = settings.coarse_epochs

    probabilities, cams = predict([part.tiles for part in train], model, preprocessor)
    dilation = dilate_labels(train, probabilities)
    labelled = dilation.samples
    expanded = expand_minority(labelled, dilation.sources, train, rng)
    crops, crop_counts = semi_supervised_crops(labelled, cams[dilation.flat_index], model, preprocessor, rng)
    samples = expanded.joined(crops)
    report.tiles = {**dilation.counts(), "expanded": len(expanded) - len(labelled), **crop_counts,
                    "good": samples.count(GOOD_LABEL), "defect": samples.count(DEFECT_LABEL)}
    log.info("training tiles prepared", **report.tiles)

    epoch_size = sum(len(part.tiles) for part in train)
    train_tiles(model, samples, validation, preprocessor, settings, rng, balanced=True, augment=True,
                epoch_size=epoch_size, report=report)
    report.training_s = time.perf_counter() - started
    return report


def train_plain(
    model: TileClassifier,
    train: list[Part],
    validation: list[Part],
    preprocessor: Preprocessor,
    settings: TrainingSettings,
    seed: int,
) -> TrainingReport:
    """Train on every tile with its part's label: no coarse model, dilation, SSDA, balancing or augmentation."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    report = TrainingReport(method="plain")
    samples = TileSamples(
        np.concatenate([part.tiles for part in train]),
        np.concatenate([np.full(len(part.tiles), part.label) for part in train]),
    )
    report.tiles = {"good": samples.count(GOOD_LABEL), "defect": samples.count(DEFECT_LABEL)}
    train_tiles(model, samples, validation, preprocessor, settings, rng, balanced=False, augment=False,
                epoch_size=len(samples), report=report)
    report.training_s = time.perf_counter() - started
    return report


def train_mil(
    model: TileClassifier, parts: list[Part], preprocessor: Preprocessor, settings: TrainingSettings, rng: np.random.Generator
) -> None:
    """Train the coarse model on part labels: a part's logit is the maximum of its tiles' defect logits."""
    optimizer = _optimizer(model, settings)
    parts_per_batch = max(1, settings.batch_size // len(parts[0].tiles))
    bar = tqdm(total=settings.coarse_epochs, desc="coarse model", unit="epoch", disable=not settings.progress)
    with bar:
        for epoch in range(settings.coarse_epochs):
            model.train()
            order = rng.permutation(len(parts))
            losses = []
            for start in range(0, len(order), parts_per_batch):
                batch = [parts[index] for index in order[start : start + parts_per_batch]]
                tiles = [online_augment(tile, rng) for part in batch for tile in part.tiles]
                loss = _part_loss(model, tiles, batch, preprocessor)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            log.info("coarse epoch finished", epoch=epoch + 1, train_loss=round(float(np.mean(losses)), 4))
            bar.update(1)


@dataclass
class Dilation:
    """Tiles labelled by the coarse model; `sources` is the (part, tile) index and `flat_index`
    the index among all training tiles of each sample."""

    samples: TileSamples
    sources: list[tuple[int, int]]
    flat_index: np.ndarray
    dropped_tiles: int

    def counts(self) -> dict[str, int]:
        return {
            "good_tiles": self.samples.count(GOOD_LABEL),
            "defect_tiles": self.samples.count(DEFECT_LABEL),
            "dropped_defect_part_tiles": self.dropped_tiles,
        }


def dilate_labels(parts: list[Part], probabilities: list[np.ndarray]) -> Dilation:
    """Label tiles from the coarse model: defect evidence of defect parts, and every tile of good parts.

    A defect part keeps its tiles with probability >= EVIDENCE_PROBABILITY, and at least its top
    tile. Its other tiles are dropped because they may show intact surface.
    """
    tiles, labels, flat_index, sources = [], [], [], []
    dropped = 0
    offset = 0
    for part_index, (part, part_probabilities) in enumerate(zip(parts, probabilities)):
        if part.label == GOOD_LABEL:
            keep = np.arange(len(part.tiles))
        else:
            keep = np.flatnonzero(part_probabilities >= EVIDENCE_PROBABILITY)
            if keep.size == 0:
                keep = np.array([int(np.argmax(part_probabilities))])
            dropped += len(part.tiles) - keep.size
        for tile_index in keep:
            tiles.append(part.tiles[tile_index])
            labels.append(part.label)
            flat_index.append(offset + int(tile_index))
            sources.append((part_index, int(tile_index)))
        offset += len(part.tiles)

    samples = TileSamples(np.stack(tiles), np.asarray(labels, dtype=np.int64))
    return Dilation(samples, sources, np.asarray(flat_index), dropped)


def expand_minority(
    samples: TileSamples, sources: list[tuple[int, int]], parts: list[Part], rng: np.random.Generator
) -> TileSamples:
    """Add label-preserving variants of the minority class's tiles until both classes have as many."""
    good_count, defect_count = samples.count(GOOD_LABEL), samples.count(DEFECT_LABEL)
    minority = DEFECT_LABEL if defect_count < good_count else GOOD_LABEL
    missing = abs(good_count - defect_count)
    candidates = np.flatnonzero(samples.labels == minority)
    if missing == 0 or candidates.size == 0:
        return samples

    variants = []
    for index in rng.choice(candidates, size=missing, replace=True):
        part_index, tile_index = sources[index]
        part = parts[part_index]
        origin = part.origins[tile_index] if part.origins is not None else None
        variants.append(expansion_variant(samples.tiles[index], part.strip, origin, rng))
    return samples.joined(TileSamples(np.stack(variants), np.full(missing, minority, dtype=np.int64)))


def semi_supervised_crops(
    samples: TileSamples, cams: np.ndarray, model: TileClassifier, preprocessor: Preprocessor, rng: np.random.Generator
) -> tuple[TileSamples, dict]:
    """Crop each labelled tile once toward its coarse-model activation and keep the confident crops.

    A crop inherits its tile's label, and is dropped when the coarse model's probability for it
    lies in UNCERTAIN_BAND.
    """
    crops = np.stack([cam_guided_crop(tile, cam, rng) for tile, cam in zip(samples.tiles, cams)])
    probabilities, _ = predict([crops], model, preprocessor)
    probability = probabilities[0]
    keep = (probability < UNCERTAIN_BAND[0]) | (probability > UNCERTAIN_BAND[1])
    counts = {"ssda_crops_kept": int(np.count_nonzero(keep)), "ssda_crops_dropped": int(np.count_nonzero(~keep))}
    return TileSamples(crops[keep], samples.labels[keep]), counts


def train_tiles(
    model: TileClassifier,
    samples: TileSamples,
    validation: list[Part],
    preprocessor: Preprocessor,
    settings: TrainingSettings,
    rng: np.random.Generator,
    *,
    balanced: bool,
    augment: bool,
    epoch_size: int,
    report: TrainingReport,
) -> None:
    """Train on labelled tiles with AdamW and early stopping on the validation loss; keep the best epoch's weights."""
    optimizer = _optimizer(model, settings)
    best_loss = float("inf")
    best_state = copy.deepcopy(model.state_dict())
    stale_epochs = 0

    bar = tqdm(total=settings.max_epochs, desc="training", unit="epoch", disable=not settings.progress)
    with bar:
        for epoch in range(1, settings.max_epochs + 1):
            model.train()
            losses = []
            for indices in _epoch_batches(samples, epoch_size, settings.batch_size, balanced, rng):
                tiles = [online_augment(samples.tiles[index], rng) if augment else samples.tiles[index] for index in indices]
                logits, _ = model(normalised_batch(tiles, preprocessor))
                loss = F.cross_entropy(logits, torch.from_numpy(samples.labels[indices]))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())

            validation_loss = validation_part_loss(model, validation, preprocessor)
            report.epochs_run = epoch
            log.info("epoch finished", epoch=epoch, train_loss=round(float(np.mean(losses)), 4),
                     validation_loss=round(validation_loss, 4))
            bar.set_postfix(validation_loss=f"{validation_loss:.4f}")
            bar.update(1)
            if validation_loss < best_loss:
                best_loss, stale_epochs = validation_loss, 0
                best_state = copy.deepcopy(model.state_dict())
                report.epochs_to_converge = epoch
            else:
                stale_epochs += 1
                if stale_epochs >= settings.patience:
                    log.info("early stop", epoch=epoch, best_epoch=report.epochs_to_converge)
                    break

    model.load_state_dict(best_state)
    model.eval()
    report.best_validation_loss = best_loss


def validation_part_loss(model: TileClassifier, parts: list[Part], preprocessor: Preprocessor) -> float:
    """Return the mean part-level binary cross-entropy (maximum tile logit against the part label)."""
    model.eval()
    parts_per_batch = max(1, INFERENCE_BATCH // len(parts[0].tiles))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(parts), parts_per_batch):
            batch = parts[start : start + parts_per_batch]
            tiles = [tile for part in batch for tile in part.tiles]
            total += float(_part_loss(model, tiles, batch, preprocessor)) * len(batch)
            count += len(batch)
    return total / count


def predict(
    tile_groups: list[np.ndarray], model: TileClassifier, preprocessor: Preprocessor
) -> tuple[list[np.ndarray], np.ndarray]:
    """Return the defect probability of every tile, per group, and all CAMs [M, h, w] in order."""
    model.eval()
    flat = np.concatenate(tile_groups)
    probabilities, cams = [], []
    with torch.no_grad():
        for start in range(0, len(flat), INFERENCE_BATCH):
            logits, features = model(normalised_batch(flat[start : start + INFERENCE_BATCH], preprocessor))
            probabilities.append(torch.softmax(logits, dim=1)[:, DEFECT_CLASS].numpy())
            cams.append(model.defect_cam(features).numpy())
    probability = np.concatenate(probabilities)
    bounds = np.cumsum([len(group) for group in tile_groups])[:-1]
    return np.split(probability, bounds), np.concatenate(cams)


def _part_loss(model: TileClassifier, tiles: list[np.ndarray], parts: list[Part], preprocessor: Preprocessor) -> torch.Tensor:
    logits, _ = model(normalised_batch(tiles, preprocessor))
    # log-odds of the defect class; the maximum tile's odds are the part's under the max rule.
    margins = logits[:, DEFECT_CLASS] - logits[:, 1 - DEFECT_CLASS]
    part_margins = torch.stack([chunk.max() for chunk in torch.split(margins, [len(part.tiles) for part in parts])])
    labels = torch.tensor([float(part.label) for part in parts])
    return F.binary_cross_entropy_with_logits(part_margins, labels)


def _epoch_batches(
    samples: TileSamples, epoch_size: int, batch_size: int, balanced: bool, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    if balanced:
        # Half of each batch from each class, drawn with replacement.
        by_class = [np.flatnonzero(samples.labels == label) for label in (GOOD_LABEL, DEFECT_LABEL)]
        by_class = [indices for indices in by_class if indices.size]
        draws = [rng.choice(indices, size=epoch_size // len(by_class) + 1, replace=True) for indices in by_class]
        order = np.stack(draws, axis=1).ravel()[:epoch_size]
    else:
        order = rng.permutation(len(samples))[:epoch_size]
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        # BatchNorm cannot train on a single sample.
        if len(batch) > 1:
            yield batch


def _optimizer(model: TileClassifier, settings: TrainingSettings) -> torch.optim.Optimizer:
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
