"""Model package: a folder with `model.onnx` and its description `model.json`.

The description carries everything the daemon needs to run the model as it was exported: the
preprocessing, the calibrated thresholds and how they were set, and the sha256 of the ONNX file.
A package whose checksum or schema version does not match is rejected before it can score a part.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.preprocess.transform import PreprocessSpec

PACKAGE_SCHEMA_VERSION = 1
SUPPORTED_PACKAGE_SCHEMA_VERSIONS = (1,)
MODEL_FILE = "model.onnx"
DESCRIPTION_FILE = "model.json"


class PackageError(ValueError):
    """A model package that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds in anomaly-score units: image score and anomaly-map pixel."""

    image: float
    pixel: float


@dataclass(frozen=True)
class ModelPackage:
    """A loaded, verified model package."""

    path: Path
    description: dict[str, Any]
    preprocess: PreprocessSpec
    thresholds: Thresholds

    @property
    def kind(self) -> str:
        return self.description["kind"]

    @property
    def name(self) -> str:
        return self.description["name"]

    @property
    def version(self) -> str:
        return self.description["version"]

    @property
    def sha256(self) -> str:
        return self.description["onnx"]["sha256"]

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    def identity(self) -> dict[str, str]:
        """Return the fields that every published verdict carries to name its model."""
        return {"name": self.name, "version": self.version, "kind": self.kind, "sha256": self.sha256}


def description_sha256(description: dict[str, Any]) -> str:
    """Hash a description in canonical JSON form, leaving out its own `description_sha256` field."""
    content = {key: value for key, value in description.items() if key != "description_sha256"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_package(path: Path | str, verify_checksum: bool = True) -> ModelPackage:
    """Read `model.json`, check schema version and sha256 of `model.onnx`, and return the package."""
    path = Path(path)
    description_path = path / DESCRIPTION_FILE
    onnx_path = path / MODEL_FILE

    if not path.exists():
        raise PackageError(f"model package {path} not found; pass the folder written by edge-export")
    if not path.is_dir():
        raise PackageError(f"model package {path} is not a folder; pass the folder written by edge-export")
    if not description_path.is_file() or not onnx_path.is_file():
        raise PackageError(
            f"model package {path} must contain {DESCRIPTION_FILE} and {MODEL_FILE}; export it again with edge-export"
        )

    try:
        description = json.loads(description_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PackageError(f"{description_path} cannot be read as JSON ({error}); export the model again") from error

    version = description.get("schema_version")
    if version not in SUPPORTED_PACKAGE_SCHEMA_VERSIONS:
        raise PackageError(
            f"{description_path}: schema_version {version!r} is not supported by this daemon "
            f"(supported: {', '.join(map(str, SUPPORTED_PACKAGE_SCHEMA_VERSIONS))}); "
            "export the model with a matching edge-export or update the daemon"
        )

    if verify_checksum and description.get("description_sha256") != description_sha256(description):
        raise PackageError(
            f"{description_path} was changed after export (its description_sha256 does not match); "
            "export the model again, and override thresholds in the daemon config (model.image_threshold, "
            "model.pixel_threshold) instead of editing the package"
        )

    try:
        expected_sha256 = description["onnx"]["sha256"]
        preprocess = PreprocessSpec.from_dict(description["preprocess"])
        thresholds = Thresholds(
            image=float(description["thresholds"]["image"]["value"]),
            pixel=float(description["thresholds"]["pixel"]["value"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise PackageError(f"{description_path} is incomplete or invalid ({error!r}); export the model again") from error
    missing = [key for key in ("kind", "name", "version") if not isinstance(description.get(key), str)]
    if missing:
        raise PackageError(f"{description_path} lacks {', '.join(missing)}; export the model again")
    if not (math.isfinite(thresholds.image) and math.isfinite(thresholds.pixel)):
        raise PackageError(f"{description_path} has non-finite thresholds {thresholds}; export the model again")

    if verify_checksum:
        actual_sha256 = sha256_of_file(onnx_path)
        if actual_sha256 != expected_sha256:
            raise PackageError(
                f"{onnx_path} has sha256 {actual_sha256}, but {DESCRIPTION_FILE} expects {expected_sha256}; "
                "the model file was changed or damaged, copy the whole package again"
            )

    return ModelPackage(path=path, description=description, preprocess=preprocess, thresholds=thresholds)
