"""Tests of source creation from a SourceConfig and from the --source argument."""

from __future__ import annotations

import importlib.util

import pytest

from edge.acquisition.base import SourceError
from edge.acquisition.camera import CameraSource
from edge.acquisition.factory import create_source, parse_source_argument
from edge.acquisition.image_folder import ImageFolderSource
from edge.acquisition.video_file import VideoFileSource
from edge.config import SourceConfig


@pytest.mark.parametrize(("text", "device"), [("0", 0), ("12", 12), (" 3 ", 3)])
def test_parse_digits_camera_index(text, device):
    config = parse_source_argument(text)

    assert config.kind == "camera"
    assert config.device == device
    assert config.uri is None


@pytest.mark.parametrize(
    "text",
    [
        "rtsp://user:pass@10.0.0.5:554/stream1",
        "http://127.0.0.1:8080/video.mjpg",
        "v4l2src device=/dev/video0 ! videoconvert ! appsink max-buffers=1 drop=true",
    ],
)
def test_parse_uri_camera(text):
    config = parse_source_argument(text)

    assert config.kind == "camera"
    assert config.uri == text
    assert config.device is None


def test_parse_synthetic():
    config = parse_source_argument("synthetic", rate_fps=5.0)

    assert config.kind == "synthetic"
    assert config.rate_fps == 5.0


def test_parse_existing_folder(tmp_path):
    config = parse_source_argument(str(tmp_path), rate_fps=2.0)

    assert config.kind == "folder"
    assert config.path == tmp_path
    assert config.rate_fps == 2.0


def test_parse_existing_file(tmp_path):
    video = tmp_path / "line.mp4"
    video.write_bytes(b"")

    config = parse_source_argument(str(video))

    assert config.kind == "video"
    assert config.path == video
    assert config.rate_fps is None


@pytest.mark.parametrize("text", ["", "no/such/file.mp4", "camera0"])
def test_parse_unknown_form(text):
    with pytest.raises(SourceError) as raised:
        parse_source_argument(text)

    message = str(raised.value)
    assert repr(text) in message
    assert "rtsp://" in message
    assert "synthetic" in message
    assert "folder" in message


def test_parse_invalid_rate(tmp_path):
    with pytest.raises(SourceError, match="invalid"):
        parse_source_argument(str(tmp_path), rate_fps=0.0)


def test_create_camera():
    source = create_source(SourceConfig(kind="camera", device=0))

    assert isinstance(source, CameraSource)
    assert source.live


def test_create_video(tmp_path):
    source = create_source(SourceConfig(kind="video", path=tmp_path / "clip.avi", rate_fps=10.0))

    assert isinstance(source, VideoFileSource)
    assert source.live


def test_create_folder(tmp_path):
    source = create_source(SourceConfig(kind="folder", path=tmp_path))

    assert isinstance(source, ImageFolderSource)
    assert not source.live


def test_create_synthetic():
    config = SourceConfig(kind="synthetic")

    if importlib.util.find_spec("edge.acquisition.synthetic") is None:
        with pytest.raises(SourceError, match="synthetic"):
            create_source(config)
    else:
        assert type(create_source(config)).__name__ == "SyntheticSource"


def test_rate_rejected_for_camera():
    with pytest.raises(SourceError, match="does not apply to the camera"):
        parse_source_argument("0", rate_fps=5)


def test_infinite_rate_rejected():
    with pytest.raises(SourceError, match="invalid"):
        parse_source_argument("synthetic", rate_fps=float("inf"))
