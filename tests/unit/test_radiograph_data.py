"""Training data of attention models: window folders, the split by series, type windows, augmentation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from export.radiograph_augment import augment_window, gamma_changed, rotated
from export.radiograph_data import (
    TypeImages,
    balanced_draws,
    load_defect_windows,
    load_type_images,
    random_type_windows,
    split_by_series,
    series_of,
    split_types,
)


def _write_windows(root: Path, sources: int = 10, per_source: int = 3, size_px: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for source in range(sources):
        for index in range(per_source):
            # Every source has ok windows; every other source also has one defect window.
            folder = "defect" if index == 0 and source % 2 == 0 else "ok"
            (root / folder).mkdir(parents=True, exist_ok=True)
            window = rng.integers(0, 255, (size_px, size_px), dtype=np.uint8)
            cv2.imwrite(str(root / folder / f"S{source:02d}_0001__x{index:04d}_y0000.png"), window)
    return root


def test_windows_load_with_labels_and_sources(tmp_path: Path) -> None:
    windows = load_defect_windows(_write_windows(tmp_path / "defects"))

    assert windows.images.shape == (30, 32, 32)
    assert windows.count(1) == 5
    assert windows.count(0) == 25
    assert windows.window_px == (32, 32)
    assert len(set(windows.sources.tolist())) == 10
    assert all(name.startswith(("ok/", "defect/")) for name in windows.names)


def test_series_is_the_name_before_the_image_number() -> None:
    assert series_of("C0001_0003") == "C0001"
    assert series_of("line_a_17") == "line_a"
    assert series_of("part17") == "part17"
    assert series_of("_5") == "_5"


def test_split_keeps_each_series_on_one_side(tmp_path: Path) -> None:
    windows = load_defect_windows(_write_windows(tmp_path / "defects", sources=20))
    train, validation = split_by_series(windows, 0.2, seed=0)

    assert len(train) + len(validation) == len(windows)
    assert not set(train.series.tolist()) & set(validation.series.tolist())
    assert len(validation) >= 0.2 * len(windows)
    for side in (train, validation):
        assert side.count(0) > 0
        assert side.count(1) > 0
    assert split_by_series(windows, 0.2, seed=0)[1].names == validation.names


def test_split_without_enough_sources_names_the_fix(tmp_path: Path) -> None:
    windows = load_defect_windows(_write_windows(tmp_path / "defects", sources=2))
    with pytest.raises(ValueError, match="both classes are needed"):
        split_by_series(windows, 0.2, seed=0)
    with pytest.raises(ValueError, match="--validation-fraction 1.5 is invalid"):
        split_by_series(windows, 1.5, seed=0)


def test_draws_are_even_by_class_and_series(tmp_path: Path) -> None:
    root = _write_windows(tmp_path / "defects", sources=4, per_source=2)
    # Series S00 gets many more ok windows than the others.
    for index in range(30):
        cv2.imwrite(str(root / "ok" / f"S00_0002__x{index:04d}_y0000.png"), np.zeros((32, 32), np.uint8))
    windows = load_defect_windows(root)

    draws = balanced_draws(windows, 4000, np.random.default_rng(0))

    assert abs(np.mean(windows.labels[draws]) - 0.5) < 1e-9
    ok_series = windows.series[draws[windows.labels[draws] == 0]]
    shares = np.bincount(ok_series) / ok_series.size
    assert np.all(np.abs(shares - 0.25) < 0.04)


def test_missing_class_folder_is_named(tmp_path: Path) -> None:
    root = _write_windows(tmp_path / "defects")
    for path in (root / "defect").iterdir():
        path.unlink()
    (root / "defect").rmdir()
    with pytest.raises(ValueError, match="has no defect/ folder"):
        load_defect_windows(root)
    with pytest.raises(ValueError, match="is not a folder"):
        load_defect_windows(tmp_path / "absent")


def test_parent_of_the_defect_dataset_is_named(tmp_path: Path) -> None:
    _write_windows(tmp_path / "defects" / "train")
    with pytest.raises(ValueError, match="pass --defects .*train"):
        load_defect_windows(tmp_path / "defects")


def test_defect_dataset_as_types_is_refused(tmp_path: Path) -> None:
    root = _write_windows(tmp_path / "defects")
    with pytest.raises(ValueError, match="folders of a defect dataset"):
        load_type_images(root)


def test_windows_of_two_sizes_are_refused(tmp_path: Path) -> None:
    root = _write_windows(tmp_path / "defects")
    cv2.imwrite(str(root / "ok" / "odd__x0000_y0000.png"), np.zeros((40, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="must have one size"):
        load_defect_windows(root)


def test_windows_too_small_are_refused(tmp_path: Path) -> None:
    root = _write_windows(tmp_path / "defects", size_px=24)
    with pytest.raises(ValueError, match="at least 32 px"):
        load_defect_windows(root)


def _type_images() -> TypeImages:
    images = [np.full((60, 80), 10 * index, dtype=np.uint8) for index in range(6)] + [np.full((20, 30), 200, np.uint8)]
    return TypeImages(images, np.asarray([0, 0, 0, 0, 1, 1, 1]), ["knuckle", "wheel"])


def test_type_windows_are_balanced_and_cover_small_images() -> None:
    windows, labels = random_type_windows(_type_images(), 40, (32, 32), np.random.default_rng(0))
    assert windows.shape == (40, 32, 32)
    assert windows.dtype == np.uint8
    assert np.bincount(labels).tolist() == [20, 20]


def test_type_split_holds_out_each_type() -> None:
    validation, train = split_types(_type_images(), 0.3, seed=0)
    assert sorted(set(validation.labels.tolist())) == [0, 1]
    assert len(validation.images) + len(train.images) == 7


def test_type_folders_need_two_types(tmp_path: Path) -> None:
    (tmp_path / "wheel").mkdir()
    cv2.imwrite(str(tmp_path / "wheel" / "a.png"), np.zeros((40, 40), np.uint8))
    with pytest.raises(ValueError, match="at least two"):
        load_type_images(tmp_path)


def test_augmentation_keeps_shape_and_repeats_with_seed() -> None:
    window = np.random.default_rng(1).integers(0, 255, (48, 48), dtype=np.uint8)
    first = augment_window(window, np.random.default_rng(5))
    second = augment_window(window, np.random.default_rng(5))
    assert first.shape == window.shape
    assert first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)


def test_gamma_and_rotation_are_label_preserving() -> None:
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    brighter = gamma_changed(ramp, 0.7)
    assert np.all(np.diff(brighter[0].astype(int)) >= 0)
    assert brighter[0, 0] == 0
    assert brighter[0, -1] >= ramp[0, -1]
    assert rotated(ramp, 0.0).tolist() == ramp.tolist()
