"""How `edge-inspect run` merges its options with a config file."""

import pytest

from edge.cli import _build_parser, build_run_config
from edge.config import ConfigError


def parse(*argv):
    return build_run_config(_build_parser().parse_args(["run", *argv]))


def test_source_option_keeps_file_settings(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    config_file = tmp_path / "station.yaml"
    config_file.write_text("model:\n  path: m\nsource:\n  kind: synthetic\n  rate_fps: 200\n  loop: true\n  read_timeout_ms: 900\n")
    config = parse("--config", str(config_file), "--source", str(images))
    assert config.source.kind == "folder"
    assert config.source.path == images
    assert config.source.rate_fps == 200
    assert config.source.loop is True
    assert config.source.read_timeout_ms == 900


def test_rate_option_overrides_file(tmp_path):
    config_file = tmp_path / "station.yaml"
    config_file.write_text("model:\n  path: m\nsource:\n  kind: synthetic\n  rate_fps: 200\n")
    assert parse("--config", str(config_file), "--rate", "7").source.rate_fps == 7


def test_errors_name_the_option(tmp_path):
    with pytest.raises(ConfigError, match=r"--line \(station.line\)"):
        parse("--model", str(tmp_path), "--source", "synthetic", "--line", "line 1")


def test_out_of_range_option_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse("--model", str(tmp_path), "--source", "synthetic", "--max-parts", "0")
    assert "--max-parts: 0 is out of range; use 1 or more" in capsys.readouterr().err


def test_source_without_model_needs_config():
    with pytest.raises(ConfigError, match="--model MODEL_DIR"):
        parse("--source", "synthetic")
