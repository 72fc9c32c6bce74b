"""Tests of the replay sources: image folders and video files read with real OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.acquisition.base import SourceError, SourceState, SourceTimeout
from edge.acquisition.image_folder import ImageFolderSource
from edge.acquisition.video_file import VideoFileSource
from edge.config import SourceConfig

IMAGE_SHAPE = (40, 56, 3)


def write_image(path: Path, brightness: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(IMAGE_SHAPE, brightness, np.uint8))
    return path


def write_video(path: Path, frame_count: int) -> Path:
    """Write an MJPG AVI of at most 32 frames: frame i is filled with brightness 8 * i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (IMAGE_SHAPE[1], IMAGE_SHAPE[0]))
    assert writer.isOpened()
    for index in range(frame_count):
        writer.write(np.full(IMAGE_SHAPE, 8 * index, np.uint8))
    writer.release()
    return path


def read_all(source, limit: int = 1000) -> list:
    frames = []
    for _ in range(limit):
        frame = source.read(timeout_s=5.0)
        if frame is None:
            return frames
        frames.append(frame)
    pytest.fail(f"source did not end within {limit} frames")


def folder_source(path: Path, **overrides: object) -> ImageFolderSource:
    return ImageFolderSource(SourceConfig(kind="folder", path=path, **overrides))


def video_source(path: Path, **overrides: object) -> VideoFileSource:
    return VideoFileSource(SourceConfig(kind="video", path=path, **overrides))


@pytest.fixture
def three_images(tmp_path) -> Path:
    for name, brightness in (("a.png", 10), ("b.png", 20), ("c.png", 30)):
        write_image(tmp_path / "images" / name, brightness)
    return tmp_path / "images"


def test_folder_order_across_subfolders(tmp_path):
    write_image(tmp_path / "b" / "2.png", 10)
    write_image(tmp_path / "a" / "sub" / "0.PNG", 20)
    write_image(tmp_path / "a" / "1.jpg", 30)
    write_image(tmp_path / "c.BMP", 40)
    write_image(tmp_path / "d" / "3.tiff", 50)
    (tmp_path / "notes.txt").write_text("not an image")

    source = folder_source(tmp_path)
    with source:
        frames = read_all(source)
        info = source.describe()

    assert [frame.source_ref for frame in frames] == ["a/1.jpg", "a/sub/0.PNG", "b/2.png", "c.BMP", "d/3.tiff"]
    for frame in frames:
        assert frame.image.shape == IMAGE_SHAPE
        assert frame.image.dtype == np.uint8
        assert frame.error is None
    assert info["state"] == SourceState.FINISHED.value
    assert info["images"] == 5
    assert info["frames_read"] == 5
    assert not source.live


def test_folder_bad_image_error_frame(tmp_path):
    write_image(tmp_path / "a.png", 10)
    (tmp_path / "b.png").write_bytes(b"this is not a PNG file")
    write_image(tmp_path / "c.png", 30)

    source = folder_source(tmp_path)
    with source:
        frames = read_all(source)

    assert [frame.source_ref for frame in frames] == ["a.png", "b.png", "c.png"]
    bad = frames[1]
    assert bad.image is None
    assert "cannot decode b.png" in bad.error
    assert frames[2].image is not None
    assert source.describe()["bad_images"] == 1


def test_folder_missing_error(tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(SourceError, match="nowhere") as raised:
        folder_source(missing).open()
    assert ".png" in str(raised.value)
    assert ".tiff" in str(raised.value)


def test_folder_empty_error(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "readme.txt").write_text("no images here")
    source = folder_source(tmp_path)

    with pytest.raises(SourceError, match="contains no images") as raised:
        source.open()
    assert str(tmp_path) in str(raised.value)
    assert ".jpg" in str(raised.value)


def test_folder_path_is_file(tmp_path):
    image = write_image(tmp_path / "a.png", 10)

    with pytest.raises(SourceError, match="not a folder"):
        folder_source(image).open()


def test_folder_rate_pacing(three_images):
    source = folder_source(three_images, rate_fps=20.0, loop=True, max_frames=6)
    with source:
        frames = read_all(source)

    assert source.live
    assert len(frames) == 6
    span_s = (frames[-1].capture_monotonic_ns - frames[0].capture_monotonic_ns) / 1e9
    # Five periods of 50 ms; only the lower bound is checked.
    assert span_s >= 0.2


def test_folder_unpaced_is_not_live(three_images):
    assert not folder_source(three_images).live


def test_folder_paced_read_timeout(three_images):
    source = folder_source(three_images, rate_fps=1.0)
    with source:
        first = source.read(timeout_s=5.0)
        with pytest.raises(SourceTimeout, match="not due"):
            source.read(timeout_s=0.05)
        second = source.read(timeout_s=5.0)

    assert first.source_ref == "a.png"
    assert second.source_ref == "b.png"


def test_folder_loop_and_max_frames(three_images):
    source = folder_source(three_images, loop=True, max_frames=7)
    with source:
        frames = read_all(source)
        info = source.describe()

    assert [frame.source_ref for frame in frames] == ["a.png", "b.png", "c.png"] * 2 + ["a.png"]
    assert info["loops"] == 2
    assert info["state"] == SourceState.FINISHED.value


def test_folder_max_frames_without_loop(three_images):
    source = folder_source(three_images, max_frames=2)
    with source:
        frames = read_all(source)

    assert [frame.source_ref for frame in frames] == ["a.png", "b.png"]


def test_folder_read_after_end(three_images):
    source = folder_source(three_images)
    with source:
        read_all(source)
        assert source.read(timeout_s=0.1) is None


def test_folder_read_before_open(three_images):
    with pytest.raises(SourceError, match="not open"):
        folder_source(three_images).read(timeout_s=0.1)


def test_video_plays_to_end(tmp_path):
    video = write_video(tmp_path / "clip.avi", frame_count=6)

    source = video_source(video)
    with source:
        frames = read_all(source)
        info = source.describe()
        after_end = source.read(timeout_s=0.1)

    assert [frame.source_ref for frame in frames] == [f"clip.avi#{index}" for index in range(6)]
    for index, frame in enumerate(frames):
        assert frame.image.shape == IMAGE_SHAPE
        assert abs(float(frame.image.mean()) - 8 * index) < 3
    assert after_end is None
    assert info["state"] == SourceState.FINISHED.value
    assert info["frames_read"] == 6
    assert not source.live
    assert source.state is SourceState.CLOSED


def test_video_loop_and_max_frames(tmp_path):
    video = write_video(tmp_path / "clip.avi", frame_count=4)

    source = video_source(video, loop=True, max_frames=10)
    with source:
        frames = read_all(source)
        info = source.describe()

    expected = [f"clip.avi#{index}" for index in (0, 1, 2, 3, 0, 1, 2, 3, 0, 1)]
    assert [frame.source_ref for frame in frames] == expected
    assert info["loops"] == 2


def test_video_max_frames_without_loop(tmp_path):
    video = write_video(tmp_path / "clip.avi", frame_count=6)

    source = video_source(video, max_frames=3)
    with source:
        frames = read_all(source)

    assert len(frames) == 3


def test_video_rate_pacing(tmp_path):
    video = write_video(tmp_path / "clip.avi", frame_count=5)

    source = video_source(video, rate_fps=25.0)
    with source:
        frames = read_all(source)

    assert source.live
    assert len(frames) == 5
    stamps = [frame.capture_monotonic_ns for frame in frames]
    assert stamps == sorted(stamps)
    # Four periods of 40 ms; only the lower bound is checked.
    assert (stamps[-1] - stamps[0]) / 1e9 >= 0.12


def test_video_missing_file_error(tmp_path):
    missing = tmp_path / "missing.mp4"

    with pytest.raises(SourceError, match="missing.mp4") as raised:
        video_source(missing).open()
    assert "not found" in str(raised.value)


def test_video_unreadable_file_error(tmp_path):
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"plain text, not a video container" * 10)
    source = video_source(broken)

    with pytest.raises(SourceError, match="broken.avi"):
        source.open()
    assert source.state is SourceState.FAILED


def test_video_path_is_folder(tmp_path):
    with pytest.raises(SourceError, match="not a file"):
        video_source(tmp_path).open()
