"""Training data of attention models: type images, defect windows, their series, and the validation split.

The defect dataset is a folder with `ok/` and `defect/` subfolders of equally sized grey
windows. A window named `<series>_<image>__<anything>.png` came from the image
`<series>_<image>` of a series of radiographs (the names `edge-export gdxray` writes). A name
without `__` is its own image, and an image name without `_` is its own series.

Series matter twice. The validation split holds out whole series, so that early stopping and
the threshold see castings the model has not seen, as the line will. And training draws each
class evenly from every series: in GDXray some series have ten times more defect windows per
image than others, and a model fed windows in proportion learns to recognise those series
instead of defects.

The type dataset has one folder per casting type with whole radiographs of any size. Stage 1
trains on random windows cut from them at the defect windows' size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import structlog

from export.images import IMAGE_SUFFIXES, list_images

log = structlog.get_logger(__name__)

OK_FOLDER = "ok"
DEFECT_FOLDER = "defect"
SOURCE_SEPARATOR = "__"
SERIES_SEPARATOR = "_"
# With fewer series than this, the validation split holds out images instead of series.
MIN_SERIES_FOR_SERIES_SPLIT = 3
MIN_WINDOW_PX = 32
# The TCM has output stride 8; the ONNX graph is traced at the window size.
WINDOW_MULTIPLE_PX = 8


@dataclass
class Windows:
    """Grey uint8 windows [M, h, w], labels [M] (0 ok, 1 defect), names `ok/<file>`, source image and series ids [M]."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    sources: np.ndarray
    series: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def count(self, label: int) -> int:
        return int(np.count_nonzero(self.labels == label))

    def subset(self, indices: np.ndarray) -> Windows:
        return Windows(
            self.images[indices],
            self.labels[indices],
            [self.names[index] for index in indices],
            self.sources[indices],
            self.series[indices],
        )

    @property
    def window_px(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


@dataclass
class TypeImages:
    """Whole grey radiographs and their type index; `type_names[index]` is the type's folder name."""

    images: list[np.ndarray]
    labels: np.ndarray
    type_names: list[str]


def load_defect_windows(defects_dir: Path) -> Windows:
    """Read every window of `defects_dir/ok` and `defects_dir/defect`.

    Raises ValueError naming the folder or file when a class folder is missing or empty,
    when a window cannot be read, or when windows differ in size.
    """
    if not defects_dir.is_dir():
        raise ValueError(
            f"defect dataset {defects_dir} is not a folder; pass a folder with ok/ and defect/ subfolders of "
            "windows (edge-export gdxray writes one)"
        )
    images, labels, names, sources, series = [], [], [], [], []
    source_ids: dict[str, int] = {}
    series_ids: dict[str, int] = {}
    for label, folder_name in enumerate((OK_FOLDER, DEFECT_FOLDER)):
        folder = defects_dir / folder_name
        if not folder.is_dir():
            nested = [path.parent for path in sorted(defects_dir.glob(f"*/{folder_name}")) if path.is_dir()]
            if nested:
                raise ValueError(
                    f"defect dataset {defects_dir} has no {folder_name}/ folder, but {nested[0]} has one; "
                    f"pass --defects {nested[0]}"
                )
            raise ValueError(f"defect dataset {defects_dir} has no {folder_name}/ folder; add {folder} with its windows")
        paths = list_images(folder)
        for path in paths:
            window = read_grey(path)
            if images and window.shape != images[0].shape:
                raise ValueError(
                    f"window {path} is {window.shape[1]}x{window.shape[0]} px, but {names[0]} is "
                    f"{images[0].shape[1]}x{images[0].shape[0]} px; all windows of a defect dataset must have one size"
                )
            source = path.stem.split(SOURCE_SEPARATOR)[0]
            images.append(window)
            labels.append(label)
            names.append(f"{folder_name}/{path.name}")
            sources.append(source_ids.setdefault(source, len(source_ids)))
            series.append(series_ids.setdefault(series_of(source), len(series_ids)))

    height, width = images[0].shape
    if min(height, width) < MIN_WINDOW_PX or height % WINDOW_MULTIPLE_PX or width % WINDOW_MULTIPLE_PX:
        raise ValueError(
            f"the windows in {defects_dir} are {width}x{height} px; use windows of at least {MIN_WINDOW_PX} px "
            f"whose sides are multiples of {WINDOW_MULTIPLE_PX}, such as 128x128"
        )
    windows = Windows(np.stack(images), np.asarray(labels, dtype=np.int64), names, np.asarray(sources), np.asarray(series))
    log.info("defect windows loaded", folder=str(defects_dir), ok=windows.count(0), defect=windows.count(1),
             window_px=f"{width}x{height}", source_images=len(source_ids), series=len(series_ids))
    return windows


def series_of(source: str) -> str:
    """Return the series of a source image name: the text before its last `_`, or the name itself."""
    head, separator, _ = source.rpartition(SERIES_SEPARATOR)
    return head if separator and head else source


def split_by_series(windows: Windows, validation_fraction: float, seed: int) -> tuple[Windows, Windows]:
    """Split into (train, validation), holding out whole series for about `validation_fraction` of the windows.

    Series are added to the validation side in a seeded order until it reaches the fraction.
    A series is skipped when it would leave the training side without ok or defect windows. With fewer
    than MIN_SERIES_FOR_SERIES_SPLIT series, whole source images are held out instead. Raises
    ValueError when no split gives both classes to both sides.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction {validation_fraction} is invalid; use a value between 0 and 1, such as 0.2")
    groups = windows.series if len(np.unique(windows.series)) >= MIN_SERIES_FOR_SERIES_SPLIT else windows.sources
    order = np.random.default_rng(seed).permutation(np.unique(groups))
    target = validation_fraction * len(windows)

    in_validation = np.zeros(len(windows), dtype=bool)
    for group in order:
        if in_validation.sum() >= target:
            break
        candidate = in_validation | (groups == group)
        if _both_classes(windows.labels[~candidate]):
            in_validation = candidate

    train, validation = windows.subset(np.flatnonzero(~in_validation)), windows.subset(np.flatnonzero(in_validation))
    for side, name in ((train, "training"), (validation, "validation")):
        if not _both_classes(side.labels):
            raise ValueError(
                f"the {name} windows have {side.count(0)} ok and {side.count(1)} defect windows; both classes are "
                "needed on both sides, so add windows from more series or images, or change --validation-fraction"
            )
    log.info("validation split", held_out="series" if groups is windows.series else "images",
             train=len(train), validation=len(validation))
    return train, validation


def balanced_draws(windows: Windows, count: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `count` window indices: half per class, and within a class an even share from every series."""
    draws = []
    for label in (0, 1):
        of_class = np.flatnonzero(windows.labels == label)
        by_series = [of_class[windows.series[of_class] == series] for series in np.unique(windows.series[of_class])]
        chosen_series = rng.integers(0, len(by_series), size=count // 2)
        draws.append(np.asarray([rng.choice(by_series[index]) for index in chosen_series], dtype=np.int64))
    order = np.concatenate(draws)
    rng.shuffle(order)
    return order


def _both_classes(labels: np.ndarray) -> bool:
    return bool(np.any(labels == 0) and np.any(labels == 1))


def load_type_images(types_dir: Path) -> TypeImages:
    """Read the whole radiographs of every type folder in `types_dir` (at least two types)."""
    if not types_dir.is_dir():
        raise ValueError(
            f"type dataset {types_dir} is not a folder; pass a folder with one subfolder of radiographs per "
            "casting type (edge-export gdxray writes one)"
        )
    folders = sorted(path for path in types_dir.iterdir() if path.is_dir() and _has_images(path))
    if {folder.name for folder in folders} == {OK_FOLDER, DEFECT_FOLDER}:
        raise ValueError(
            f"type dataset {types_dir} has the {OK_FOLDER}/ and {DEFECT_FOLDER}/ folders of a defect dataset; pass "
            "the folder with one subfolder per casting type as --types (edge-export gdxray writes OUT/types)"
        )
    if len(folders) < 2:
        raise ValueError(
            f"type dataset {types_dir} has {len(folders)} type folder(s) with images; stage 1 needs at least two, "
            "such as wheel/ and knuckle/"
        )
    images, labels = [], []
    for index, folder in enumerate(folders):
        for path in list_images(folder):
            images.append(read_grey(path))
            labels.append(index)
    type_names = [folder.name for folder in folders]
    counts = {name: labels.count(index) for index, name in enumerate(type_names)}
    log.info("type images loaded", folder=str(types_dir), types=counts)
    return TypeImages(images, np.asarray(labels, dtype=np.int64), type_names)


def split_types(types: TypeImages, validation_fraction: float, seed: int) -> tuple[TypeImages, TypeImages]:
    """Hold out a seeded share of each type's images for stage 1's early stopping."""
    rng = np.random.default_rng(seed)
    validation_indices = []
    for label in range(len(types.type_names)):
        indices = np.flatnonzero(types.labels == label)
        count = max(1, int(round(len(indices) * validation_fraction)))
        if count >= len(indices):
            raise ValueError(
                f"type {types.type_names[label]} has {len(indices)} image(s), too few to hold some out for validation; "
                "add radiographs of that type"
            )
        validation_indices.append(rng.choice(indices, size=count, replace=False))
    held_out = set(np.concatenate(validation_indices).tolist())

    def part(keep: bool) -> TypeImages:
        chosen = [index for index in range(len(types.images)) if (index in held_out) != keep]
        return TypeImages([types.images[index] for index in chosen], types.labels[chosen], types.type_names)

    return part(True), part(False)


def random_type_windows(
    types: TypeImages, count: int, window_px: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cut `count` random windows, types drawn in equal shares; returns uint8 [count, h, w] and type labels.

    A radiograph smaller than the window is first enlarged to cover it.
    """
    height, width = window_px
    labels = np.resize(np.arange(len(types.type_names)), count)
    rng.shuffle(labels)
    by_type = [np.flatnonzero(types.labels == label) for label in range(len(types.type_names))]
    windows = np.empty((count, height, width), dtype=np.uint8)
    for index, label in enumerate(labels):
        image = types.images[int(rng.choice(by_type[label]))]
        image = _covering(image, height, width)
        top = int(rng.integers(0, image.shape[0] - height + 1))
        left = int(rng.integers(0, image.shape[1] - width + 1))
        windows[index] = image[top : top + height, left : left + width]
    return windows, labels


def read_grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"cannot decode image {path}; remove it or replace it with a readable PNG")
    return image


def _covering(image: np.ndarray, height: int, width: int) -> np.ndarray:
    scale = max(height / image.shape[0], width / image.shape[1])
    if scale <= 1.0:
        return image
    size = (max(width, int(np.ceil(image.shape[1] * scale))), max(height, int(np.ceil(image.shape[0] * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def _has_images(folder: Path) -> bool:
    return any(path.suffix.lower() in IMAGE_SUFFIXES for path in folder.rglob("*") if path.is_file())
