from pathlib import Path

import pytest

from edge.config import ConfigError, load_config, validate_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "station.yaml"
    path.write_text(text)
    return path


def test_example_configs_are_valid():
    for name in ("camera_line.yaml", "folder_replay.yaml"):
        config = load_config(REPO / "configs" / name)
        assert config.model.path.is_absolute()


def test_relative_paths_follow_file(tmp_path):
    config = load_config(write(tmp_path, "model:\n  path: models/bottle\nsource:\n  kind: folder\n  path: images\n"))
    assert config.model.path == tmp_path / "models" / "bottle"
    assert config.source.path == tmp_path / "images"


def test_unknown_key_names_line_and_fix(tmp_path):
    path = write(tmp_path, "model:\n  path: m\npublish:\n  endpont: tcp://127.0.0.1:1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert f"{path}:4" in message
    assert "publish.endpont" in message
    assert "remove it or check its spelling" in message


def test_bad_value_names_key_and_value(tmp_path):
    path = write(tmp_path, "model:\n  path: m\npipeline:\n  queue_size: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "pipeline.queue_size" in str(error.value)
    assert "= 0" in str(error.value)
    assert f"{path}:4" in str(error.value)


def test_missing_model_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="missing key `model`"):
        load_config(write(tmp_path, "station:\n  line: a\n"))


def test_camera_needs_device_or_uri():
    with pytest.raises(ConfigError, match="exactly one of `device`"):
        validate_config({"model": {"path": "m"}, "source": {"kind": "camera"}})


def test_endpoint_transport_checked():
    with pytest.raises(ConfigError, match="tcp://"):
        validate_config({"model": {"path": "m"}, "publish": {"endpoint": "127.0.0.1:5556"}})


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"station.yaml:\d+: invalid YAML"):
        load_config(write(tmp_path, "model:\n  path: [unclosed\n"))


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.yaml")


def test_non_finite_threshold_rejected():
    with pytest.raises(ConfigError, match="model.image_threshold"):
        validate_config({"model": {"path": "m", "image_threshold": float("inf")}})


def test_drain_timeout_capped():
    with pytest.raises(ConfigError, match="pipeline.drain_timeout_s"):
        validate_config({"model": {"path": "m"}, "pipeline": {"drain_timeout_s": 10}})


def test_binary_file_is_reported(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(path)
