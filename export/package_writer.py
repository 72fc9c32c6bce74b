"""Write a model package: `model.onnx` and its `model.json` description."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import edge
from edge.inference.package import (
    DESCRIPTION_FILE,
    MODEL_FILE,
    PACKAGE_SCHEMA_VERSION,
    description_sha256,
    sha256_of_file,
)
from edge.preprocess.transform import PreprocessSpec


def file_list_sha256(paths: Iterable[Path], root: Path) -> str:
    """Hash the sorted relative paths of the training images, so a package names its exact data."""
    names = sorted(str(Path(path).relative_to(root)) for path in paths)
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def utc_timestamp() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_package(
    out_dir: Path,
    onnx_bytes: bytes,
    *,
    kind: str,
    name: str,
    version: str | None,
    preprocess: PreprocessSpec,
    thresholds: dict[str, dict[str, Any]],
    onnx_info: dict[str, Any],
    sections: dict[str, Any],
) -> Path:
    """Write the package so that a daemon never loads a half-written model (each file is replaced atomically).

    `thresholds` contains `image` and `pixel`, each a dict with at least `value` and `method`.
    `sections` adds kind-specific blocks (backbone, training, the kind's own parameters).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    created = utc_timestamp()

    onnx_path = out_dir / MODEL_FILE
    _write_atomic(onnx_path, onnx_bytes)

    description: dict[str, Any] = {
        "schema_version": PACKAGE_SCHEMA_VERSION,
        "kind": kind,
        "name": name,
        "version": version or created.replace("-", "").replace(":", ""),
        "created_utc": created,
        "export_tool": {"name": "edge-export", "version": edge.__version__, **_framework_versions()},
        "onnx": {"file": MODEL_FILE, "sha256": sha256_of_file(onnx_path), **onnx_info},
        "preprocess": preprocess.to_dict(),
        "thresholds": thresholds,
        **sections,
    }
    write_description(out_dir, description)
    return out_dir


def write_description(out_dir: Path, description: dict[str, Any]) -> None:
    """Seal the description with its own checksum and write it as `model.json`."""
    sealed = {**description, "description_sha256": description_sha256(description)}
    _write_atomic(out_dir / DESCRIPTION_FILE, (json.dumps(sealed, indent=2, allow_nan=False) + "\n").encode("utf-8"))


def _framework_versions() -> dict[str, str]:
    versions = {}
    for module_name in ("torch", "onnx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        versions[module_name] = str(module.__version__)
    return versions


def _write_atomic(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        # mkstemp creates the file readable by its owner only. A package must be readable by
        # the daemon's service user, so the usual mode under the current umask is applied.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
