"""The `line_io` config section: devices that must go together, and errors that name the fix."""

from __future__ import annotations

import pytest

from edge.config import ConfigError, validate_config
from edge.lineio.line_io import LineIO

PLC = {"serial": {"port": "/dev/serial/by-id/plc"}, "modbus": {"encoder_address": 100, "part_counter_address": 102}}
LIGHT = {"serial": {"port": "/dev/ttyUSB0"}, "recipe": "a", "recipes": {"a": [{"channel": 1, "percent": 50}]}}


def config(line_io: dict):
    return validate_config({"model": {"path": "m"}, "line_io": line_io})


def test_defaults_have_no_line_io():
    line_io = config({}).line_io
    assert not LineIO.configured(line_io)
    assert line_io.trigger.mode == "free_run"


def test_full_line_builds_devices():
    line_io = config({
        "light": LIGHT,
        "plc": PLC,
        "reject": {"timing": "encoder", "distance_counts": 4000},
        "trigger": {"mode": "plc"},
    }).line_io
    assert LineIO.configured(line_io)
    line = LineIO(line_io)
    assert line.reject_output is not None
    assert line.plc_input is not None
    assert line.light is not None


@pytest.mark.parametrize(
    ("line_io", "message"),
    [
        ({"reject": {}}, "reject.output plc needs a `plc` section"),
        ({"reject": {"output": "relay"}}, "needs a `relay` section"),
        ({"plc": {"serial": {"port": "p"}}, "reject": {"timing": "encoder", "distance_counts": 10}}, "reports the encoder"),
        ({"plc": PLC, "reject": {"timing": "encoder"}}, "needs `distance_counts`"),
        ({"trigger": {"mode": "plc"}}, "part-present triggers"),
        ({"trigger": {"mode": "software"}}, "needs `period_ms`"),
        ({"light": {**LIGHT, "recipe": "b"}}, "recipe 'b' is not among the recipes"),
        ({"light": {**LIGHT, "recipes": {"a": [{"channel": 1, "mode": "pulse"}]}}}, "needs `pulse_width_ms`"),
        ({"light": {**LIGHT, "protocol": "template"}}, "needs a `template` section"),
        ({"plc": {"serial": {"port": "p", "baudrate": 12345}}}, "standard baud rate"),
        ({"plc": {"serial": {"port": "p", "reopen_backoff_s": [0]}}}, "above 0"),
        ({"plc": {"serial": {"port": "p"}, "modbus": {"unit_id": 0}}}, "unit_id"),
    ],
)
def test_invalid_line_io_names_the_fix(line_io, message):
    with pytest.raises(ConfigError, match="line_io") as raised:
        config(line_io)
    assert message in str(raised.value)


def test_bad_ascii_template_is_refused_when_building():
    line_io = config({"plc": {"serial": {"port": "p"}, "protocol": "ascii", "ascii": {"reject_template": "REJ {serial}\n"}},
                      "reject": {}}).line_io
    with pytest.raises(ValueError, match="serial"):
        LineIO(line_io)


def test_section_check_omits_section_content():
    with pytest.raises(ConfigError) as raised:
        config({"trigger": {"mode": "plc"}})
    assert "{" not in str(raised.value)


def test_ambiguous_port_glob_is_refused(tmp_path):
    from edge.lineio.base import LineIOError
    from edge.lineio.serial_link import SerialLink, SerialSettings

    (tmp_path / "usb-FTDI_A").touch()
    (tmp_path / "usb-FTDI_B").touch()
    link = SerialLink(SerialSettings(port=str(tmp_path / "usb-FTDI_*")), "light controller")
    with pytest.raises(LineIOError, match="2 devices match"):
        link.open()
