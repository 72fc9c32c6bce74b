"""Creation of the frame source that a SourceConfig or a --source argument names."""

from __future__ import annotations

import importlib
from pathlib import Path

from pydantic import ValidationError

from edge.acquisition.base import FrameSource, SourceError
from edge.config import SourceConfig

# Source kind -> (module, class). A module is imported only when its kind is created, so each
# backend loads only its own dependencies.
SOURCE_CLASSES: dict[str, tuple[str, str]] = {
    "camera": ("edge.acquisition.camera", "CameraSource"),
    "video": ("edge.acquisition.video_file", "VideoFileSource"),
    "folder": ("edge.acquisition.image_folder", "ImageFolderSource"),
    "synthetic": ("edge.acquisition.synthetic", "SyntheticSource"),
}

ACCEPTED_FORMS = (
    "a camera index such as 0 (/dev/video0), "
    "a stream URL such as rtsp://host/stream, "
    "a GStreamer pipeline such as 'v4l2src ! videoconvert ! appsink', "
    "an existing folder of images, an existing video file, or 'synthetic'"
)


def create_source(config: SourceConfig) -> FrameSource:
    """Create the unopened frame source for `config.kind`."""
    try:
        module_name, class_name = SOURCE_CLASSES[config.kind]
    except KeyError:
        raise SourceError(
            f"unknown source kind `{config.kind}`; use one of {', '.join(SOURCE_CLASSES)}"
        ) from None

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise SourceError(
            f"source kind `{config.kind}` is not available: module {module_name} is missing from this "
            "installation; reinstall the package or choose another source kind"
        ) from error

    source_class = getattr(module, class_name)
    return source_class(config)


def parse_source_argument(text: str, rate_fps: float | None = None) -> SourceConfig:
    """Turn the command line's `--source PATH_OR_URL_OR_INDEX` into a SourceConfig.

    All digits select a camera by device index, `synthetic` the synthetic source, text with
    "://" or " ! " a camera stream URL or GStreamer pipeline, an existing folder the image
    folder source and an existing file the video source. `rate_fps` applies to replay sources.
    """
    value = text.strip()
    is_camera = (value.isascii() and value.isdigit()) or "://" in value or " ! " in value
    if is_camera and rate_fps is not None:
        raise SourceError(
            f"--rate {rate_fps} does not apply to the camera {text!r}, which delivers frames at its own rate; "
            "drop --rate, or set the frame rate in the camera or its stream"
        )
    try:
        if value.isascii() and value.isdigit():
            return SourceConfig(kind="camera", device=int(value))
        if value.lower() == "synthetic":
            return SourceConfig(kind="synthetic", rate_fps=rate_fps)
        if "://" in value or " ! " in value:
            return SourceConfig(kind="camera", uri=value)

        path = Path(value).expanduser()
        if value and path.is_dir():
            return SourceConfig(kind="folder", path=path, rate_fps=rate_fps)
        if value and path.is_file():
            return SourceConfig(kind="video", path=path, rate_fps=rate_fps)
    except ValidationError as error:
        problems = "; ".join(item["msg"] for item in error.errors())
        raise SourceError(f"--source {text!r} with rate {rate_fps} fps is invalid: {problems}") from None

    raise SourceError(
        f"--source {text!r} is not a camera index, URL, pipeline, existing folder or existing file; "
        f"pass {ACCEPTED_FORMS}"
    )
