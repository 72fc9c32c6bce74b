from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.acquisition.base import SourceError, SourceState, SourceTimeout
from edge.acquisition.synthetic import DEFECT_KINDS, SyntheticSource, render_part, write_synthetic_dataset
from edge.config import SourceConfig

SIZE_PX = 128
REF_PATTERN = re.compile(r"^synthetic/(\d{6})_(good|scratch|pit|chip|stain)$")


def render(seed: int, defect: str | None, size_px: int = SIZE_PX) -> tuple[np.ndarray, np.ndarray]:
    return render_part(np.random.default_rng(seed), defect, size_px)


def read_all(source: SyntheticSource, limit: int = 1000) -> list:
    frames = []
    for _ in range(limit):
        frame = source.read(timeout_s=1.0)
        if frame is None:
            break
        frames.append(frame)
    return frames


@pytest.mark.parametrize("defect", [None, *DEFECT_KINDS])
@pytest.mark.parametrize("size_px", [64, 256])
def test_render_part_shapes(defect: str | None, size_px: int) -> None:
    image, mask = render(1, defect, size_px)
    assert image.shape == (size_px, size_px, 3)
    assert image.dtype == np.uint8
    assert mask.shape == (size_px, size_px)
    assert mask.dtype == np.bool_


@pytest.mark.parametrize("defect", [None, *DEFECT_KINDS])
def test_render_part_repeats_for_seed(defect: str | None) -> None:
    image_a, mask_a = render(7, defect)
    image_b, mask_b = render(7, defect)
    image_c, _ = render(8, defect)
    assert np.array_equal(image_a, image_b)
    assert np.array_equal(mask_a, mask_b)
    assert not np.array_equal(image_a, image_c)


def test_good_part_mask_empty() -> None:
    for seed in range(10):
        _, mask = render(seed, None)
        assert not mask.any()


@pytest.mark.parametrize("defect", DEFECT_KINDS)
def test_defect_mask_on_part(defect: str) -> None:
    centre = (SIZE_PX - 1) / 2.0
    rows, columns = np.mgrid[0:SIZE_PX, 0:SIZE_PX]
    distance = np.hypot(rows - centre, columns - centre)
    for seed in range(20):
        _, mask = render(seed, defect)
        assert mask.any(), f"seed {seed}: empty mask"
        assert not mask[0, :].any()
        assert not mask[-1, :].any()
        assert not mask[:, 0].any()
        assert not mask[:, -1].any()
        # The part's outer radius is 0.40 of the side, and its centre moves by at most 0.016 of the side.
        assert distance[mask].max() <= 0.43 * SIZE_PX, f"seed {seed}: mask outside the part"
        assert mask.sum() < 0.05 * SIZE_PX * SIZE_PX, f"seed {seed}: defect is not local"


@pytest.mark.parametrize("defect", DEFECT_KINDS)
def test_defect_changes_only_its_surroundings(defect: str) -> None:
    for seed in range(10):
        good, _ = render(seed, None)
        defective, mask = render(seed, defect)
        difference = np.abs(good.astype(np.int16) - defective.astype(np.int16)).max(axis=2)

        assert difference[mask].mean() > 25, f"seed {seed}: defect hardly visible"
        surroundings = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert difference[~surroundings].max() == 0, f"seed {seed}: pixels changed far from the mask"


def test_good_parts_vary() -> None:
    images = [render(seed, None)[0].astype(np.int16) for seed in range(5)]
    for other in images[1:]:
        assert np.abs(images[0] - other).mean() > 1.0


def test_render_part_unknown_kind() -> None:
    with pytest.raises(ValueError, match="dent"):
        render(0, "dent")


def test_render_part_size_too_small() -> None:
    with pytest.raises(ValueError, match="size_px=16"):
        render(0, None, size_px=16)


def test_source_max_frames() -> None:
    source = SyntheticSource(SourceConfig(kind="synthetic", max_frames=5), size_px=SIZE_PX)
    with source:
        frames = [source.read(timeout_s=1.0) for _ in range(5)]
        assert all(frame is not None for frame in frames)
        assert source.read(timeout_s=1.0) is None
        assert source.state == SourceState.FINISHED
        assert source.read(timeout_s=1.0) is None
        assert source.describe()["frames_read"] == 5
    assert source.state == SourceState.CLOSED


def test_source_frames_are_bgr_images() -> None:
    with SyntheticSource(SourceConfig(kind="synthetic", max_frames=2), size_px=SIZE_PX) as source:
        frame = source.read(timeout_s=1.0)
    assert frame.image.shape == (SIZE_PX, SIZE_PX, 3)
    assert frame.image.dtype == np.uint8
    assert frame.error is None
    assert frame.capture_time_ns > 0


def test_source_refs_name_kind() -> None:
    config = SourceConfig(kind="synthetic", max_frames=40, synthetic_defect_rate=0.5, synthetic_seed=3)
    with SyntheticSource(config, size_px=SIZE_PX) as source:
        refs = [frame.source_ref for frame in read_all(source)]

    matches = [REF_PATTERN.match(ref) for ref in refs]
    assert all(matches), refs
    assert [int(match.group(1)) for match in matches] == list(range(40))
    assert {match.group(2) for match in matches} == {"good", *DEFECT_KINDS}


def test_source_defect_share() -> None:
    config = SourceConfig(kind="synthetic", max_frames=200, synthetic_defect_rate=0.3, synthetic_seed=11)
    with SyntheticSource(config, size_px=SIZE_PX) as source:
        refs = [frame.source_ref for frame in read_all(source)]
        defective_frames = source.describe()["defective_frames"]

    assert len(refs) == 200
    defective = [ref for ref in refs if not ref.endswith("_good")]
    assert 40 <= len(defective) <= 80
    assert defective_frames == len(defective)
    for kind in DEFECT_KINDS:
        count = sum(ref.endswith(f"_{kind}") for ref in defective)
        assert abs(count - len(defective) / len(DEFECT_KINDS)) <= 1


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_source_defect_rate_bounds(rate: float) -> None:
    config = SourceConfig(kind="synthetic", max_frames=12, synthetic_defect_rate=rate)
    with SyntheticSource(config, size_px=SIZE_PX) as source:
        refs = [frame.source_ref for frame in read_all(source)]
    good = [ref for ref in refs if ref.endswith("_good")]
    assert len(good) == (12 if rate == 0.0 else 0)


def test_source_repeats_for_seed() -> None:
    config = SourceConfig(kind="synthetic", max_frames=8, synthetic_seed=5, synthetic_defect_rate=0.5)
    with SyntheticSource(config, size_px=SIZE_PX) as first:
        frames_a = read_all(first)
    with SyntheticSource(config, size_px=SIZE_PX) as second:
        frames_b = read_all(second)

    assert [frame.source_ref for frame in frames_a] == [frame.source_ref for frame in frames_b]
    for frame_a, frame_b in zip(frames_a, frames_b):
        assert np.array_equal(frame_a.image, frame_b.image)


def test_source_seed_changes_frames() -> None:
    frames = []
    for seed in (1, 2):
        with SyntheticSource(SourceConfig(kind="synthetic", max_frames=1, synthetic_seed=seed), size_px=SIZE_PX) as source:
            frames.append(source.read(timeout_s=1.0))
    assert not np.array_equal(frames[0].image, frames[1].image)


def test_source_reopen_restarts() -> None:
    source = SyntheticSource(SourceConfig(kind="synthetic", max_frames=3, synthetic_seed=9), size_px=SIZE_PX)
    source.open()
    first_run = [frame.source_ref for frame in read_all(source)]
    source.close()
    source.close()
    source.open()
    second_run = [frame.source_ref for frame in read_all(source)]
    source.close()
    assert first_run == second_run
    assert len(first_run) == 3


def test_source_read_before_open() -> None:
    source = SyntheticSource(SourceConfig(kind="synthetic"), size_px=SIZE_PX)
    with pytest.raises(SourceError, match="open"):
        source.read(timeout_s=0.1)


def test_source_unbounded_without_max_frames() -> None:
    with SyntheticSource(SourceConfig(kind="synthetic"), size_px=SIZE_PX) as source:
        frames = [source.read(timeout_s=1.0) for _ in range(30)]
        assert all(frame is not None for frame in frames)
        assert source.state == SourceState.RUNNING


def test_source_live_flag() -> None:
    assert SyntheticSource(SourceConfig(kind="synthetic", rate_fps=10.0)).live
    assert not SyntheticSource(SourceConfig(kind="synthetic")).live


def test_source_live_paced() -> None:
    rate_fps = 50.0
    config = SourceConfig(kind="synthetic", rate_fps=rate_fps, max_frames=6)
    with SyntheticSource(config, size_px=SIZE_PX) as source:
        frames = read_all(source)
    assert len(frames) == 6
    # Sleeping can only make frames later, so the spacing has a lower bound on any machine.
    elapsed_s = (frames[-1].capture_monotonic_ns - frames[0].capture_monotonic_ns) / 1e9
    assert elapsed_s >= 0.9 * 5 / rate_fps


def test_source_live_timeout_keeps_frame() -> None:
    config = SourceConfig(kind="synthetic", rate_fps=4.0, synthetic_seed=4)
    with SyntheticSource(config, size_px=SIZE_PX) as source:
        first = source.read(timeout_s=1.0)
        assert first.source_ref.startswith("synthetic/000000_")
        with pytest.raises(SourceTimeout):
            source.read(timeout_s=0.001)
        # The frame that was not yet due is handed out next, not skipped.
        second = source.read(timeout_s=1.0)
    assert second.source_ref.startswith("synthetic/000001_")


def test_dataset_layout(tmp_path: Path) -> None:
    out_dir = tmp_path / "parts"
    returned = write_synthetic_dataset(out_dir, good_train=4, good_test=2, defective_per_kind=3, size_px=96, seed=1)
    assert returned == out_dir

    assert sorted(path.name for path in (out_dir / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png", "003.png"]
    assert len(list((out_dir / "test" / "good").glob("*.png"))) == 2
    assert sorted(path.name for path in (out_dir / "test").iterdir()) == sorted(["good", *DEFECT_KINDS])
    assert sorted(path.name for path in (out_dir / "ground_truth").iterdir()) == sorted(DEFECT_KINDS)

    for kind in DEFECT_KINDS:
        images = sorted((out_dir / "test" / kind).glob("*.png"))
        assert [path.name for path in images] == ["000.png", "001.png", "002.png"]
        for image_path in images:
            image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(out_dir / "ground_truth" / kind / f"{image_path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
            assert image.shape == (96, 96, 3)
            assert mask.shape == (96, 96)
            assert set(np.unique(mask)) == {0, 255}


def test_dataset_repeats_for_seed(tmp_path: Path) -> None:
    first = write_synthetic_dataset(tmp_path / "a", good_train=2, good_test=1, defective_per_kind=1, size_px=96, seed=3)
    second = write_synthetic_dataset(tmp_path / "b", good_train=2, good_test=1, defective_per_kind=1, size_px=96, seed=3)
    for path in sorted(first.rglob("*.png")):
        twin = second / path.relative_to(first)
        assert np.array_equal(cv2.imread(str(path)), cv2.imread(str(twin))), path


def test_dataset_refuses_non_empty_folder(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, good_train=2, good_test=1, defective_per_kind=1, size_px=64)
    with pytest.raises(FileExistsError, match="is not empty"):
        write_synthetic_dataset(tmp_path, good_train=1, good_test=1, defective_per_kind=1, size_px=64)
    assert len(list((tmp_path / "train" / "good").glob("*.png"))) == 2


def test_dataset_negative_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="good_test=-1"):
        write_synthetic_dataset(tmp_path, good_test=-1)
