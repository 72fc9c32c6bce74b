"""Prepare GDXray casting radiographs as a part-type image set and a defect-window set.

Input is the GDXray "Castings" layout: DATA/<series>/ contains `<series>_NNNN.png` (8-bit grey),
`ground_truth.txt` (one row per box: `image_number x1 x2 y1 y2`, 1-based inclusive pixels, x is
the column) and `<series>_readme.txt`, whose `set:` line names the part type. Output under OUT:

    types/<type>/<series>_NNNN.png                               byte copies of every training-series image
    defects/<split>/{ok,defect}/<series>_NNNN__x<col>_y<row>.png  grey windows at native resolution
    defects/<split>/boxes.json                                   boxes touching each defect window
    split.json, summary.json

Images without a ground-truth row may be defect-free or simply unannotated (GDXray does not
record which), so they feed the type set only, never the defect windows. The split is by series,
so no series appears in both training and test.

NOTE: ok windows come from annotated images and assume that their boxes mark every defect. An
unmarked flaw in such an image ends up in an ok window.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import structlog

log = structlog.get_logger(__name__)

# Three wheel series and one knuckle series, so the test split has both part types.
DEFAULT_TEST_SERIES = ("C0030", "C0035", "C0041", "C0057")

# Series whose images are crops of another series' images, mapped to that parent series. A linked
# series always lands in its parent's split, because its defects are the parent's defects.
LINKED_SERIES = {"C0002": "C0001"}

MIN_WINDOW_PX = 32
SPLITS = ("train", "test")
OK_LABEL = "ok"
DEFECT_LABEL = "defect"
BOX_FORMAT = "x0 y0 x1 y1 in window pixels, 0-based, half-open"
GROUND_TRUTH_NAME = "ground_truth.txt"

# Entries a rerun removes from an earlier OUT before writing. Other files there are left alone.
OUTPUT_ENTRIES = ("types", "defects", "split.json", "summary.json")

_SET_LINE = re.compile(r"^\s*set:[^\n<]*<([^<>\n]*)>", re.MULTILINE)


@dataclass(frozen=True)
class GdxrayOptions:
    data_dir: Path
    out_dir: Path
    window_px: int = 128
    stride_px: int = 64
    # None selects DEFAULT_TEST_SERIES.
    test_series: tuple[str, ...] | None = None
    # Maximum number of ok windows kept per image, chosen at random with `seed`; 0 keeps all.
    ok_per_image: int = 16
    seed: int = 0
    # Show a tqdm progress bar when tqdm is installed.
    progress: bool = True


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixels, 0-based and half-open: columns x0..x1-1, rows y0..y1-1."""

    x0: int
    y0: int
    x1: int
    y1: int

    def is_empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0

    def is_inside(self, other: Box) -> bool:
        return other.x0 <= self.x0 and other.y0 <= self.y0 and self.x1 <= other.x1 and self.y1 <= other.y1

    def overlaps(self, other: Box) -> bool:
        """Return True when the boxes share at least one pixel."""
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def clip(self, other: Box) -> Box:
        """Return the part of this box inside `other`; it is empty when they do not overlap."""
        return Box(max(self.x0, other.x0), max(self.y0, other.y0), min(self.x1, other.x1), min(self.y1, other.y1))

    def shift(self, dx: int, dy: int) -> Box:
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def to_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass(frozen=True)
class Series:
    """One GDXray series folder: its part type, its images by number and its boxes by image number."""

    name: str
    part_type: str
    images: dict[int, Path]
    boxes: dict[int, list[Box]]


@dataclass(frozen=True)
class Window:
    """A window kept for the defect set; `boxes` are the boxes touching it, in window pixels."""

    x: int
    y: int
    label: str
    boxes: tuple[Box, ...]

    def file_name(self, image_stem: str) -> str:
        return f"{image_stem}__x{self.x:04d}_y{self.y:04d}.png"


@dataclass
class ImagePlan:
    """The windows one annotated image contributes to the defect set of its split."""

    path: Path
    split: str
    windows: list[Window]

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass
class SplitCounts:
    images: int = 0
    ok: int = 0
    defect: int = 0
    # Windows that touch a box without containing any, so neither class fits them.
    dropped_touching: int = 0
    # Ok windows beyond the per-image cap.
    ok_not_kept: int = 0
    boxes: int = 0
    # Boxes no window contains: larger than the window, or missed by the grid.
    boxes_in_no_window: int = 0
    by_type: dict[str, Counter] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "ok": self.ok,
            "defect": self.defect,
            "dropped_touching": self.dropped_touching,
            "ok_not_kept": self.ok_not_kept,
            "boxes": self.boxes,
            "boxes_in_no_window": self.boxes_in_no_window,
            "by_type": {name: {OK_LABEL: counts[OK_LABEL], DEFECT_LABEL: counts[DEFECT_LABEL]}
                        for name, counts in sorted(self.by_type.items())},
        }


@dataclass
class Skipped:
    """Images and boxes left out of the output, with the reason."""

    smaller_than_window: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    # Ground-truth rows whose image number has no PNG in the series.
    boxes_without_image: list[str] = field(default_factory=list)
    # Boxes reaching past the image border and clipped to it.
    boxes_clipped_to_image: int = 0
    boxes_outside_image: int = 0

    def to_dict(self) -> dict:
        return {
            "images": {"smaller_than_window": self.smaller_than_window, "unreadable": self.unreadable},
            "boxes_without_image": self.boxes_without_image,
            "boxes_clipped_to_image": self.boxes_clipped_to_image,
            "boxes_outside_image": self.boxes_outside_image,
        }


def read_boxes(path: Path) -> dict[int, list[Box]]:
    """Read a GDXray ground_truth.txt into 0-based half-open boxes by image number.

    Each row is `image_number x1 x2 y1 y2` with 1-based inclusive pixels, so the box is columns
    [x1 - 1, x2) and rows [y1 - 1, y2). Extra columns are ignored and blank lines skipped. A box
    may reach past the image border; callers clip it once they know the image size.
    """
    boxes: dict[int, list[Box]] = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue

        where = f"{path}:{line_number}"
        if len(fields) < 5:
            raise ValueError(
                f"{where}: expected 5 numbers 'image_number x1 x2 y1 y2', got {line.strip()!r}; fix or remove the row"
            )
        number, x1, x2, y1, y2 = (_whole_number(text, where) for text in fields[:5])

        if number < 1:
            raise ValueError(f"{where}: image number {number} is invalid; GDXray numbers images from 1")
        if x2 < x1 or y2 < y1:
            raise ValueError(f"{where}: box x1={x1} x2={x2} y1={y1} y2={y2} is inverted; swap the bounds")
        boxes.setdefault(number, []).append(Box(x1 - 1, y1 - 1, x2, y2))
    return boxes


def _whole_number(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number; fix or remove the row") from None
    if not value.is_integer():
        raise ValueError(f"{where}: {text!r} is not a whole number of pixels; fix or remove the row")
    return int(value)


def series_type(readme: Path) -> str:
    """Return the part type a series readme names: the last word of its `set: X005 <...>` line, lower-cased."""
    if not readme.is_file():
        raise ValueError(f"series readme {readme} is missing; add it with a line like 'set: X005 <Aluminum casting, wheel>'")
    match = _SET_LINE.search(readme.read_text(encoding="utf-8", errors="replace"))
    words = re.findall(r"\w+", match.group(1)) if match else []
    if not words:
        raise ValueError(
            f"{readme} names no part type; add a line like 'set: X005 <Aluminum casting, wheel>' "
            "whose last word inside <...> is the type"
        )
    return words[-1].lower()


def axis_origins(length_px: int, window_px: int, stride_px: int) -> list[int]:
    """Return window origins along one axis: every stride from 0, plus one aligned with the far edge.

    The list is empty when the axis is shorter than the window.
    """
    if length_px < window_px:
        return []
    origins = list(range(0, length_px - window_px + 1, stride_px))
    if origins[-1] != length_px - window_px:
        origins.append(length_px - window_px)
    return origins


def window_origins(height_px: int, width_px: int, window_px: int, stride_px: int) -> list[tuple[int, int]]:
    """Return the (x, y) origins of the window grid over an image, row by row."""
    columns = axis_origins(width_px, window_px, stride_px)
    return [(x, y) for y in axis_origins(height_px, window_px, stride_px) for x in columns]


def label_window(window: Box, boxes: Iterable[Box]) -> tuple[str | None, tuple[Box, ...]]:
    """Label a window from the image's boxes and return the boxes touching it, in window pixels.

    The label is `defect` when the window contains a whole box, `ok` when it touches none, and None
    (drop the window) when it touches boxes but contains none of them.
    """
    touching = [box for box in boxes if box.overlaps(window)]
    clipped = tuple(box.clip(window).shift(-window.x0, -window.y0) for box in touching)
    if not touching:
        return OK_LABEL, clipped
    if any(box.is_inside(window) for box in touching):
        return DEFECT_LABEL, clipped
    return None, clipped


def split_series(names: Iterable[str], test_series: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split series names into (train, test); linked series follow their parent.

    Raises ValueError for a test series that is not among `names`, or for a linked series named
    without its parent.
    """
    names = sorted(set(names))
    requested = list(dict.fromkeys(test_series))

    unknown = [name for name in requested if name not in names]
    if unknown:
        raise ValueError(
            f"test series {', '.join(unknown)} not found; available series: {', '.join(names)}"
        )

    for child in requested:
        parent = LINKED_SERIES.get(child)
        if parent in names and parent not in requested:
            raise ValueError(
                f"series {child} contains crops of {parent} and always shares its split; name {parent} as a test series instead"
            )

    test = set(requested)
    test.update(child for child, parent in LINKED_SERIES.items() if parent in test and child in names)
    train = [name for name in names if name not in test]
    return train, sorted(test)


def find_series(data_dir: Path) -> list[Series]:
    """Read every series folder under `data_dir`, that is every subfolder with `<folder>_NNNN.png` images."""
    if not data_dir.exists():
        raise ValueError(f"GDXray folder {data_dir} does not exist; pass the folder that contains the series folders (C0001, ...)")
    if not data_dir.is_dir():
        raise ValueError(f"GDXray path {data_dir} is not a folder; pass the folder that contains the series folders (C0001, ...)")

    series = []
    for folder in sorted(path for path in data_dir.iterdir() if path.is_dir() and not path.name.startswith(".")):
        images = _series_images(folder)
        if not images:
            continue
        ground_truth = folder / GROUND_TRUTH_NAME
        boxes = read_boxes(ground_truth) if ground_truth.is_file() else {}
        part_type = series_type(folder / f"{folder.name}_readme.txt")
        series.append(Series(folder.name, part_type, images, boxes))

    if not series:
        raise ValueError(
            f"no series found under {data_dir}; expected subfolders like C0001/ with C0001_0001.png, ..."
        )
    return series


def _series_images(folder: Path) -> dict[int, Path]:
    pattern = re.compile(rf"{re.escape(folder.name)}_(\d+)\.png")
    images = {}
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            images[int(match.group(1))] = path
    return images


def prepare_gdxray(options: GdxrayOptions) -> dict:
    """Write the type set, the defect-window set, split.json and summary.json under options.out_dir.

    Everything is checked and planned before OUT is touched, so an invalid input leaves it as it
    was. Returns the summary, which is also written as OUT/summary.json.
    """
    started_s = time.perf_counter()
    _check_options(options)
    test_names = DEFAULT_TEST_SERIES if options.test_series is None else tuple(options.test_series)
    out_dir = Path(options.out_dir)
    _check_out_dir(out_dir)

    all_series = find_series(Path(options.data_dir))
    train_names, test_names = split_series([series.name for series in all_series], test_names)
    split_of = {name: "train" for name in train_names} | {name: "test" for name in test_names}
    log.info("gdxray preparation started", data_dir=str(options.data_dir), out_dir=str(out_dir),
             series=len(all_series), train=train_names, test=test_names, window_px=options.window_px,
             stride_px=options.stride_px)

    skipped = Skipped()
    counts = {split: SplitCounts() for split in SPLITS}
    plans, type_images = _plan(all_series, split_of, options, skipped, counts)
    _check_defect_windows(counts, train_names, test_names, options, skipped)

    _clear_out_dir(out_dir)
    type_counts = _copy_type_images(type_images, out_dir / "types")
    _write_windows(plans, out_dir / "defects", options.window_px, options.progress)

    present = {series.name for series in all_series}
    split = {
        "train": train_names,
        "test": test_names,
        "types": {series.name: series.part_type for series in all_series},
        "linked": {child: parent for child, parent in LINKED_SERIES.items() if child in present and parent in present},
    }
    _write_json(out_dir / "split.json", split)

    summary = {
        "data_dir": str(options.data_dir),
        "out_dir": str(out_dir),
        "options": {
            "window_px": options.window_px,
            "stride_px": options.stride_px,
            "test_series": list(test_names),
            "ok_per_image": options.ok_per_image,
            "seed": options.seed,
        },
        "split": {"train": train_names, "test": test_names},
        "types": dict(sorted(type_counts.items())),
        "defects": {name: counts[name].to_dict() for name in SPLITS},
        "skipped": skipped.to_dict(),
        "total_s": round(time.perf_counter() - started_s, 2),
    }
    _write_json(out_dir / "summary.json", summary)

    _log_skipped(skipped)
    for name in SPLITS:
        split_counts = counts[name]
        log.info("gdxray split written", split=name, images=split_counts.images, ok=split_counts.ok,
                 defect=split_counts.defect, dropped_touching=split_counts.dropped_touching,
                 boxes_in_no_window=split_counts.boxes_in_no_window)
    log.info("gdxray preparation finished", out_dir=str(out_dir), type_images=sum(type_counts.values()),
             total_s=summary["total_s"])
    return summary


def _check_options(options: GdxrayOptions) -> None:
    window_px, stride_px = options.window_px, options.stride_px
    if not _is_int(window_px) or window_px < MIN_WINDOW_PX:
        raise ValueError(f"window_px={window_px!r} is invalid; use a whole number of pixels >= {MIN_WINDOW_PX}, for example 128")
    if not _is_int(stride_px) or not 1 <= stride_px <= window_px:
        raise ValueError(
            f"stride_px={stride_px!r} is invalid; use a whole number from 1 to window_px={window_px}, for example {window_px // 2}"
        )
    if not _is_int(options.ok_per_image) or options.ok_per_image < 0:
        raise ValueError(f"ok_per_image={options.ok_per_image!r} is invalid; use 0 (keep all) or a positive whole number")
    if not _is_int(options.seed) or options.seed < 0:
        raise ValueError(f"seed={options.seed!r} is invalid; use a whole number >= 0")
    if isinstance(options.test_series, str):
        raise ValueError(f"test_series={options.test_series!r} must be a tuple of series names, for example ('C0030',)")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_out_dir(out_dir: Path) -> None:
    """Raise unless OUT is absent, empty, or an earlier output of prepare_gdxray (it has split.json)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} is a file; pass a new or empty folder")
    if any(out_dir.iterdir()) and not (out_dir / "split.json").is_file():
        raise ValueError(
            f"output folder {out_dir} is not empty and contains no split.json from an earlier run; "
            "pass a new or empty folder so that no files are overwritten"
        )


def _clear_out_dir(out_dir: Path) -> None:
    for name in OUTPUT_ENTRIES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _plan(
    all_series: list[Series], split_of: dict[str, str], options: GdxrayOptions, skipped: Skipped,
    counts: dict[str, SplitCounts],
) -> tuple[list[ImagePlan], list[tuple[str, Path]]]:
    """Decode the images the output uses, label the windows of annotated images and list the type-set images.

    Unannotated images of test series are neither decoded nor used.
    """
    plans: list[ImagePlan] = []
    type_images: list[tuple[str, Path]] = []
    total = sum(len(series.images) for series in all_series)

    with _progress(total, "scanning", options.progress) as bar:
        for series in all_series:
            split = split_of[series.name]
            for number in sorted(series.boxes):
                if number not in series.images:
                    skipped.boxes_without_image.append(f"{series.name}_{number:04d}")

            for number, path in sorted(series.images.items()):
                bar.update(1)
                annotated = number in series.boxes
                if split == "test" and not annotated:
                    continue

                image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
                if image is None:
                    skipped.unreadable.append(path.name)
                    continue
                if split == "train":
                    type_images.append((series.part_type, path))
                if not annotated:
                    continue

                height_px, width_px = image.shape
                if height_px < options.window_px or width_px < options.window_px:
                    skipped.smaller_than_window.append(path.name)
                    continue
                boxes = _clip_to_image(series.boxes[number], width_px, height_px, skipped)
                windows = _image_windows(boxes, height_px, width_px, path.stem, options, counts[split])
                plans.append(ImagePlan(path, split, windows))
                _count_windows(windows, series.part_type, counts[split])
    return plans, type_images


def _clip_to_image(boxes: list[Box], width_px: int, height_px: int, skipped: Skipped) -> list[Box]:
    image = Box(0, 0, width_px, height_px)
    inside = []
    for box in boxes:
        clipped = box.clip(image)
        if clipped.is_empty():
            skipped.boxes_outside_image += 1
            continue
        if clipped != box:
            skipped.boxes_clipped_to_image += 1
        inside.append(clipped)
    return inside


def _image_windows(
    boxes: list[Box], height_px: int, width_px: int, image_stem: str, options: GdxrayOptions, counts: SplitCounts
) -> list[Window]:
    """Label the window grid of one image and keep the defect windows and up to ok_per_image ok windows."""
    defects: list[Window] = []
    oks: list[Window] = []
    contained = [False] * len(boxes)

    for x, y in window_origins(height_px, width_px, options.window_px, options.stride_px):
        area = Box(x, y, x + options.window_px, y + options.window_px)
        label, touching = label_window(area, boxes)
        if label is None:
            counts.dropped_touching += 1
        elif label == OK_LABEL:
            oks.append(Window(x, y, label, touching))
        else:
            defects.append(Window(x, y, label, touching))
            contained = [done or box.is_inside(area) for done, box in zip(contained, boxes)]

    if options.ok_per_image and len(oks) > options.ok_per_image:
        # Seeded by the image name, so the choice does not depend on which images come before it.
        rng = np.random.default_rng([options.seed, zlib.crc32(image_stem.encode("utf-8"))])
        chosen = sorted(rng.choice(len(oks), size=options.ok_per_image, replace=False))
        counts.ok_not_kept += len(oks) - len(chosen)
        oks = [oks[index] for index in chosen]

    counts.boxes += len(boxes)
    counts.boxes_in_no_window += contained.count(False)
    return defects + oks


def _count_windows(windows: list[Window], part_type: str, counts: SplitCounts) -> None:
    counts.images += 1
    by_type = counts.by_type.setdefault(part_type, Counter())
    for window in windows:
        by_type[window.label] += 1
        if window.label == OK_LABEL:
            counts.ok += 1
        else:
            counts.defect += 1


def _check_defect_windows(
    counts: dict[str, SplitCounts],
    train_names: list[str],
    test_names: list[str],
    options: GdxrayOptions,
    skipped: Skipped,
) -> None:
    for split, names in (("train", train_names), ("test", test_names)):
        if counts[split].defect:
            continue
        listed = ", ".join(names) or "none"
        too_small = [name for name in skipped.smaller_than_window if name.split("_")[0] in names]
        if counts[split].images == 0 and too_small:
            raise ValueError(
                f"the {split} split (series: {listed}) has no annotated image as large as the {options.window_px} px "
                "window, so it has no windows at all; use a smaller --window"
            )
        raise ValueError(
            f"the {split} split (series: {listed}) has no defect windows with window_px={options.window_px} "
            f"stride_px={options.stride_px}; choose test series with annotated boxes smaller than the window, "
            "or a larger window"
        )


def _copy_type_images(type_images: list[tuple[str, Path]], types_dir: Path) -> Counter:
    counts: Counter = Counter()
    for part_type, path in type_images:
        folder = types_dir / part_type
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / path.name)
        counts[part_type] += 1
    return counts


def _write_windows(plans: list[ImagePlan], defects_dir: Path, window_px: int, progress: bool) -> None:
    boxes_by_split: dict[str, dict[str, list[list[int]]]] = {split: {} for split in SPLITS}
    for split in SPLITS:
        for label in (OK_LABEL, DEFECT_LABEL):
            (defects_dir / split / label).mkdir(parents=True, exist_ok=True)

    with _progress(len(plans), "writing windows", progress) as bar:
        for plan in plans:
            bar.update(1)
            image = cv2.imread(str(plan.path), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise ValueError(f"decoding image {plan.path} failed on the second read; check the disk and rerun")

            for window in plan.windows:
                name = f"{window.label}/{window.file_name(plan.stem)}"
                crop = image[window.y : window.y + window_px, window.x : window.x + window_px]
                if not cv2.imwrite(str(defects_dir / plan.split / name), crop):
                    raise ValueError(f"writing {defects_dir / plan.split / name} failed; check free disk space and permissions")
                if window.label == DEFECT_LABEL:
                    boxes_by_split[plan.split][name] = [box.to_list() for box in window.boxes]

    for split in SPLITS:
        _write_json(defects_dir / split / "boxes.json", {"format": BOX_FORMAT, "windows": boxes_by_split[split]})


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def _log_skipped(skipped: Skipped) -> None:
    for reason, names in (("smaller than the window", skipped.smaller_than_window),
                          ("unreadable", skipped.unreadable)):
        if names:
            log.warning("gdxray images skipped", reason=reason, count=len(names), first=names[:5])
    if skipped.boxes_without_image:
        log.warning("ground-truth boxes name missing images", count=len(skipped.boxes_without_image),
                    first=skipped.boxes_without_image[:5])
    if skipped.boxes_clipped_to_image or skipped.boxes_outside_image:
        log.warning("ground-truth boxes reach past the image border", clipped=skipped.boxes_clipped_to_image,
                    outside=skipped.boxes_outside_image)


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, count: int) -> None:
        return None


def _progress(total: int, label: str, enabled: bool) -> Any:
    """Return a tqdm bar when enabled and tqdm is installed, else an object with the same update()."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoProgress()
        return tqdm(total=total, desc=label, unit="img")
    return _NoProgress()
