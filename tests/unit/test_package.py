import json

import numpy as np
import pytest

from edge.inference.package import PackageError, load_package
from edge.inspector import Inspector
from edge.parts import Verdict


def test_package_loads_with_identity(brightness_package):
    package = load_package(brightness_package)
    assert package.kind == "padim"
    assert package.identity()["version"] == "test-1"
    assert len(package.identity()["sha256"]) == 64
    assert package.thresholds.image == 0.5


def test_changed_onnx_is_rejected(brightness_package):
    with (brightness_package / "model.onnx").open("ab") as stream:
        stream.write(b"\0")
    with pytest.raises(PackageError, match="has sha256 .* copy the whole package again"):
        load_package(brightness_package)


def test_unknown_schema_version_is_rejected(brightness_package):
    path = brightness_package / "model.json"
    description = json.loads(path.read_text())
    description["schema_version"] = 99
    path.write_text(json.dumps(description))
    with pytest.raises(PackageError, match="schema_version 99 is not supported"):
        load_package(brightness_package)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(PackageError, match="not found"):
        load_package(tmp_path / "absent")
    with pytest.raises(PackageError, match="must contain model.json and model.onnx"):
        load_package(tmp_path)


def reseal(package_dir, change):
    """Change the description as a newer exporter would, keeping its checksum valid."""
    from export.package_writer import write_description

    description = json.loads((package_dir / "model.json").read_text())
    change(description)
    write_description(package_dir, description)


def test_unknown_kind_is_rejected(brightness_package):
    reseal(brightness_package, lambda description: description.update(kind="mystery"))
    with pytest.raises(PackageError, match="model kind 'mystery' is not supported"):
        Inspector.from_path(brightness_package)


def test_edited_description_is_rejected(brightness_package):
    path = brightness_package / "model.json"
    description = json.loads(path.read_text())
    description["thresholds"]["image"]["value"] = 1e9
    path.write_text(json.dumps(description))
    with pytest.raises(PackageError, match="was changed after export"):
        load_package(brightness_package)


def test_input_size_mismatch_is_rejected(brightness_package):
    reseal(brightness_package, lambda description: description["preprocess"].update(input_size=[64, 64]))
    with pytest.raises(PackageError, match="does not match the input size"):
        Inspector.from_path(brightness_package)


def test_package_files_follow_umask(brightness_package):
    import os

    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.json", "model.onnx"):
        assert (brightness_package / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_inspector_passes_dark_and_fails_bright(brightness_package):
    inspector = Inspector.from_path(brightness_package)
    frame = np.zeros((64, 64, 3), np.uint8)
    assert inspector.inspect(frame).verdict is Verdict.PASS

    frame[8:24, 32:48] = 255
    inspection = inspector.inspect(frame)
    assert inspection.verdict is Verdict.FAIL
    assert len(inspection.regions) == 1
    x, y, width, height = inspection.regions[0].bbox_xywh
    assert abs(x - 32) <= 2
    assert abs(y - 8) <= 2
    assert abs(width - 16) <= 3
    assert abs(height - 16) <= 3


def test_threshold_override_applies(brightness_package):
    inspector = Inspector.from_path(brightness_package, image_threshold=2.0)
    frame = np.full((32, 32, 3), 255, np.uint8)
    assert inspector.inspect(frame).verdict is Verdict.PASS
    assert inspector.thresholds.image == 2.0


def test_cuda_request_fails_without_cuda(brightness_package):
    import onnxruntime as ort

    from edge.config import InferenceConfig
    from edge.inference.session import SessionError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA; the CPU-only failure path cannot be shown here")
    with pytest.raises(SessionError, match="CUDAExecutionProvider was requested"):
        Inspector.from_path(brightness_package, inference=InferenceConfig(providers=["CUDAExecutionProvider"]))
