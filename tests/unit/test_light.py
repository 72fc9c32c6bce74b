"""Light controller protocols and controller against simulated controllers on real pseudo-terminals."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.lineio.base import DeviceReplyError, LineIOError
from edge.lineio.light import (
    CcsProtocol,
    ChannelSetting,
    GardasoftProtocol,
    LightController,
    LightProtocol,
    LightRecipe,
    TemplateProtocol,
)
from edge.lineio.serial_link import SerialLink, SerialSettings
from edge.lineio.simulated.light import SimulatedLightController
from tests.waiting import wait_until

REPLY_TIMEOUT_MS = 100
# Bound for waits on another thread. The tests assert the outcome, not the speed.
WAIT_S = 3.0

GARDASOFT_RECIPE = LightRecipe(
    "bracket",
    (
        ChannelSetting(1, "continuous", 80),
        ChannelSetting(2, "pulse", 100, pulse_width_ms=5, pulse_delay_ms=0.5),
    ),
)
CCS_RECIPE = LightRecipe("housing", (ChannelSetting(0, "continuous", 80), ChannelSetting(1, "off", 0)))


@pytest.fixture
def gardasoft() -> Iterator[SimulatedLightController]:
    with SimulatedLightController("gardasoft") as sim:
        yield sim


@pytest.fixture
def ccs() -> Iterator[SimulatedLightController]:
    with SimulatedLightController("ccs") as sim:
        yield sim


@pytest.fixture
def controllers() -> Iterator[list[LightController]]:
    """Controllers made by `make_controller`, closed at the end of the test."""
    opened: list[LightController] = []
    yield opened
    for controller in opened:
        controller.close()


def make_controller(
    sim: SimulatedLightController,
    protocol: LightProtocol,
    opened: list[LightController],
    retries: int = 2,
) -> LightController:
    settings = SerialSettings(port=sim.port, reopen_backoff_s=(0.05,))
    controller = LightController(SerialLink(settings, "light"), protocol, reply_timeout_ms=REPLY_TIMEOUT_MS, retries=retries)
    opened.append(controller)
    return controller


# Recipes


def test_channel_setting_accepts_modes() -> None:
    assert ChannelSetting(1, "continuous", 0).percent == 0
    assert ChannelSetting(1, "pulse", 100, pulse_width_ms=0.2).pulse_delay_ms == 0.0
    assert ChannelSetting(0, "off", 0).mode == "off"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"channel": -1, "mode": "continuous", "percent": 50}, "integer >= 0"),
        ({"channel": True, "mode": "continuous", "percent": 50}, "integer >= 0"),
        ({"channel": 1, "mode": "flash", "percent": 50}, "mode 'flash' is invalid"),
        ({"channel": 1, "mode": "continuous", "percent": 100.5}, "from 0 to 100"),
        ({"channel": 1, "mode": "continuous", "percent": float("nan")}, "from 0 to 100"),
        ({"channel": 1, "mode": "continuous", "percent": "80"}, "from 0 to 100"),
        ({"channel": 1, "mode": "pulse", "percent": 50}, "needs pulse_width_ms"),
        ({"channel": 1, "mode": "pulse", "percent": 50, "pulse_width_ms": 0}, "positive"),
        ({"channel": 1, "mode": "pulse", "percent": 50, "pulse_width_ms": 1, "pulse_delay_ms": -1}, ">= 0"),
        ({"channel": 1, "mode": "continuous", "percent": 50, "pulse_width_ms": 1}, "only to mode pulse"),
    ],
)
def test_channel_setting_rejects(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChannelSetting(**fields)


def test_recipe_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="sets channel 1 twice"):
        LightRecipe("dup", (ChannelSetting(1, "continuous", 10), ChannelSetting(1, "off", 0)))


def test_recipe_rejects_empty() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        LightRecipe(" ", (ChannelSetting(1, "off", 0),))
    with pytest.raises(ValueError, match="no channels"):
        LightRecipe("empty", ())
    with pytest.raises(ValueError, match="not a ChannelSetting"):
        LightRecipe("wrong", ({"channel": 1},))


def test_recipe_stores_list_as_tuple() -> None:
    recipe = LightRecipe("listed", [ChannelSetting(1, "off", 0)])
    assert recipe.channels == (ChannelSetting(1, "off", 0),)


# Protocol bytes


def test_gardasoft_command_bytes() -> None:
    protocol = GardasoftProtocol()
    assert protocol.continuous(1, 80) == b"RS1,80\r"
    assert protocol.continuous(3, 12.5) == b"RS3,12.5\r"
    assert protocol.pulse(2, 5, 0.5, 100) == b"RT2,5,0.5,100\r"
    assert protocol.off(4) == b"RS4,0\r"
    assert protocol.trigger(1) == b"TR1\r"


def test_gardasoft_reply_rules() -> None:
    protocol = GardasoftProtocol()
    assert protocol.reply_end(b"") is None
    assert protocol.reply_end(b"Err 1\r\n") is None
    assert protocol.reply_end(b">>") == 1
    protocol.check_reply(b"RS1,80\r", b">")
    with pytest.raises(DeviceReplyError, match=r"RS1,80.*with error 7"):
        protocol.check_reply(b"RS1,80\r", b"Err 7\r\n>")


def test_gardasoft_rejects_channel_zero() -> None:
    with pytest.raises(LineIOError, match="numbered from 1"):
        GardasoftProtocol().check_recipe(LightRecipe("zero", (ChannelSetting(0, "continuous", 5),)))


def test_ccs_known_vector() -> None:
    assert CcsProtocol().frame(b"@00L100") == b"@00L1007D\r\n"


def test_ccs_command_bytes() -> None:
    protocol = CcsProtocol()
    assert protocol.off(1) == b"@01L0007D\r\n"
    assert protocol.intensity(0, 80) == b"@00F2047C\r\n"
    assert protocol.intensity(2, 100).startswith(b"@02F255")
    assert protocol.intensity(2, 0).startswith(b"@02F000")
    assert protocol.continuous(0, 80) == b"@00F2047C\r\n@00L1007D\r\n"
    assert protocol.commands_for(ChannelSetting(0, "continuous", 80)) == [b"@00F2047C\r\n", b"@00L1007D\r\n"]


def test_ccs_unit_digits() -> None:
    protocol = CcsProtocol(unit_digits=1)
    assert protocol.off(3) == protocol.frame(b"@3L000")
    with pytest.raises(LineIOError, match="from 0 to 9"):
        protocol.off(10)
    with pytest.raises(ValueError, match="unit_digits"):
        CcsProtocol(unit_digits=0)


def test_ccs_reply_rules() -> None:
    protocol = CcsProtocol()
    request = protocol.off(1)
    protocol.check_reply(request, b"@01OF0\r\n")
    protocol.check_reply(protocol.off(0), b"@00O\r\n")
    with pytest.raises(DeviceReplyError, match="rejected"):
        protocol.check_reply(request, b"@01NEF\r\n")
    with pytest.raises(DeviceReplyError, match="wrong checksum"):
        protocol.check_reply(request, b"@01O00\r\n")
    with pytest.raises(DeviceReplyError, match="instead of 01"):
        protocol.check_reply(request, b"@00O\r\n")
    with pytest.raises(DeviceReplyError, match="not an acknowledgement"):
        protocol.check_reply(request, b"hello\r\n")


def test_ccs_refuses_pulse_and_trigger() -> None:
    protocol = CcsProtocol()
    with pytest.raises(LineIOError, match="use mode continuous"):
        protocol.trigger(0)
    with pytest.raises(LineIOError, match="use mode continuous"):
        protocol.pulse(0, 5, 0, 100)
    recipe = LightRecipe("strobe", (ChannelSetting(0, "pulse", 100, pulse_width_ms=5),))
    with pytest.raises(LineIOError, match="'strobe', channel 0: .*use mode continuous"):
        protocol.check_recipe(recipe)


# Template protocol


TEMPLATE_COMMANDS = {
    "continuous": "RS{channel},{percent:g}",
    "pulse": "RT{channel},{width_ms:g},{delay_ms:g},{percent:g}",
    "off": "RS{channel},0",
    "trigger": "TR{channel}",
}


@pytest.mark.parametrize(
    ("checksum", "expected"),
    [
        # "RS1,80" sums to 362 = 0x16A; its XOR is 0x14; the LRC is (-362) & 0xFF = 0x96.
        ("none", b"RS1,80\r\n"),
        ("sum8_hex", b"RS1,806A\r\n"),
        ("xor8_hex", b"RS1,8014\r\n"),
        ("lrc_hex", b"RS1,8096\r\n"),
    ],
)
def test_template_checksums(checksum: str, expected: bytes) -> None:
    protocol = TemplateProtocol(TEMPLATE_COMMANDS, checksum=checksum, ack_pattern="^OK$")
    assert protocol.continuous(1, 80) == expected


def test_template_fields() -> None:
    protocol = TemplateProtocol(
        {"continuous": "L{channel:02d}={percent_255:03d}", "pulse": "P{channel} {width_ms:.1f} {delay_ms:.2f} {percent:.0f}"},
        terminator=";",
        ack_pattern="ok",
    )
    assert protocol.continuous(3, 50) == b"L03=128;"
    assert protocol.pulse(1, 2, 0.25, 75) == b"P1 2.0 0.25 75;"


def test_template_reply_rules() -> None:
    protocol = TemplateProtocol(TEMPLATE_COMMANDS, reply_terminator="\n", ack_pattern="^OK", error_pattern="^ERR")
    assert protocol.reply_end(b"OK") is None
    assert protocol.reply_end(b"OK\nOK\n") == 3
    protocol.check_reply(b"RS1,80\r\n", b"OK 1\n")
    with pytest.raises(DeviceReplyError, match="error pattern"):
        protocol.check_reply(b"RS1,80\r\n", b"ERR 3\n")
    with pytest.raises(DeviceReplyError, match="ack pattern"):
        protocol.check_reply(b"RS1,80\r\n", b"BUSY\n")


def test_template_missing_command() -> None:
    protocol = TemplateProtocol({"continuous": "RS{channel},{percent:g}"}, ack_pattern="OK")
    with pytest.raises(LineIOError, match="no 'trigger' command"):
        protocol.trigger(1)
    with pytest.raises(LineIOError, match="no 'off' command"):
        protocol.check_recipe(LightRecipe("dark", (ChannelSetting(1, "off", 0),)))


@pytest.mark.parametrize(
    ("commands", "options", "message"),
    [
        ({"continuous": "RS{channel},{level}"}, {}, r"unknown field \{level\}"),
        ({"continuous": "RS{},{percent}"}, {}, r"unknown field \{\}"),
        ({"continuous": "RS{channel"}, {}, "literal braces"),
        ({"continuous": "RS{channel:q}"}, {}, "fix the format spec"),
        ({"strobe": "ST{channel}"}, {}, "unknown light command"),
        ({}, {}, "at least one"),
        ({"off": "RS{channel},0"}, {"checksum": "crc"}, "checksum 'crc' is invalid"),
        ({"off": "RS{channel},0"}, {"ack_pattern": "(OK"}, "ack_pattern '\\(OK' is not a valid regular expression"),
        ({"off": "RS{channel},0"}, {"error_pattern": "[E"}, "error_pattern .* is not a valid regular expression"),
        ({"off": "RS{channel},0"}, {"reply_terminator": ""}, "reply_terminator is empty"),
        ({"off": "RS{channel},0°"}, {}, "non-ASCII"),
    ],
)
def test_template_rejects(commands: dict, options: dict, message: str) -> None:
    options = {"ack_pattern": "OK", **options}
    with pytest.raises(ValueError, match=message):
        TemplateProtocol(commands, **options)


def test_template_against_ccs_device(ccs: SimulatedLightController, controllers: list) -> None:
    protocol = TemplateProtocol(
        {"continuous": "@{channel:02d}F{percent_255:03d}", "off": "@{channel:02d}L000"},
        checksum="sum8_hex",
        ack_pattern=r"^@\d\dO",
        error_pattern=r"^@\d\dN",
    )
    controller = make_controller(ccs, protocol, controllers)
    controller.apply(LightRecipe("template", (ChannelSetting(2, "continuous", 100), ChannelSetting(3, "off", 0))))
    assert ccs.commands == [b"@02F25584\r\n", b"@03L0007F\r\n"]
    assert ccs.state(2)["value"] == 255
    assert controller.confirmed


# Controller against the simulated devices


def test_gardasoft_wire_bytes(gardasoft: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(gardasoft, GardasoftProtocol(), controllers)
    controller.apply(GARDASOFT_RECIPE)
    controller.trigger(2)
    assert gardasoft.commands == [b"RS1,80\r", b"RT2,5,0.5,100\r", b"TR2\r"]
    assert gardasoft.received_bytes() == b"RS1,80\rRT2,5,0.5,100\rTR2\r"
    assert gardasoft.triggers(2) == 1
    assert gardasoft.triggers(1) == 0


def test_ccs_wire_bytes(ccs: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(ccs, CcsProtocol(), controllers)
    controller.apply(CCS_RECIPE)
    assert ccs.commands == [b"@00F2047C\r\n", b"@00L1007D\r\n", b"@01L0007D\r\n"]
    assert ccs.received_bytes() == b"@00F2047C\r\n@00L1007D\r\n@01L0007D\r\n"
    assert controller.confirmed


def test_ccs_trigger_raises(ccs: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(ccs, CcsProtocol(), controllers)
    with pytest.raises(LineIOError, match="use mode continuous"):
        controller.trigger(0)
    assert ccs.commands == []


def test_unsupported_recipe_sends_nothing(ccs: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(ccs, CcsProtocol(), controllers)
    controller.apply(CCS_RECIPE)
    strobe = LightRecipe("strobe", (ChannelSetting(0, "pulse", 100, pulse_width_ms=5),))
    with pytest.raises(LineIOError, match="use mode continuous"):
        controller.apply(strobe)
    assert len(ccs.commands) == 3
    assert controller.recipe == CCS_RECIPE


def test_gardasoft_err_then_retry(gardasoft: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(gardasoft, GardasoftProtocol(), controllers)
    gardasoft.fail_commands(1)
    controller.apply(GARDASOFT_RECIPE)
    assert gardasoft.commands == [b"RS1,80\r", b"RS1,80\r", b"RT2,5,0.5,100\r"]
    assert controller.confirmed
    counters = controller.describe()["counters"]
    assert counters == {"commands": 2, "retries": 1, "failures": 0}
    assert "error 9" in controller.describe()["last_error"]


def test_gardasoft_err_exhausts_retries(gardasoft: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(gardasoft, GardasoftProtocol(), controllers, retries=1)
    gardasoft.fail_commands(2)
    with pytest.raises(LineIOError, match=r"after 2 attempt\(s\).*error 9"):
        controller.apply(GARDASOFT_RECIPE)
    assert not controller.confirmed
    assert gardasoft.commands == [b"RS1,80\r", b"RS1,80\r"]


def test_simulator_rejects_bad_gardasoft(gardasoft: SimulatedLightController, controllers: list) -> None:
    link = SerialLink(SerialSettings(port=gardasoft.port), "light")
    try:
        assert link.transact(b"XX1\r", GardasoftProtocol().reply_end, 1.0) == b"Err 1\r\n>"
        assert link.transact(b"RS9,50\r", GardasoftProtocol().reply_end, 1.0) == b"Err 2\r\n>"
        assert link.transact(b"RS1,101\r", GardasoftProtocol().reply_end, 1.0) == b"Err 2\r\n>"
        assert link.transact(b"\r", GardasoftProtocol().reply_end, 1.0) == b">"
    finally:
        link.close()
    assert gardasoft.intensity_percent(1) == 0.0


def test_simulator_rejects_bad_ccs(ccs: SimulatedLightController) -> None:
    link = SerialLink(SerialSettings(port=ccs.port), "light")
    protocol = CcsProtocol()
    error_reply = b"@00NEE\r\n"
    try:
        assert link.transact(b"@00L10000\r\n", protocol.reply_end, 1.0) == error_reply  # bad checksum
        assert link.transact(protocol.frame(b"@00X100"), protocol.reply_end, 1.0) == error_reply
        assert link.transact(protocol.frame(b"@00F256"), protocol.reply_end, 1.0) == error_reply
        assert link.transact(protocol.frame(b"@09L100"), protocol.reply_end, 1.0).startswith(b"@09N")
    finally:
        link.close()
    assert ccs.state(0)["on"] is False


def test_silent_device_then_recovery(gardasoft: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(gardasoft, GardasoftProtocol(), controllers)
    controller.apply(GARDASOFT_RECIPE)
    assert controller.confirmed

    gardasoft.silent.set()
    assert controller.check() is False
    assert not controller.confirmed
    with pytest.raises(LineIOError, match="not acknowledged after 3 attempt"):
        controller.apply(GARDASOFT_RECIPE)
    described = controller.describe()
    assert described["counters"]["failures"] == 2
    assert described["counters"]["retries"] == 4
    assert "no complete reply" in described["last_error"]

    gardasoft.silent.clear()
    assert controller.check() is True
    assert controller.confirmed
    assert gardasoft.intensity_percent(1) == 80


def test_confirmed_starts_false(gardasoft: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(gardasoft, GardasoftProtocol(), controllers)
    assert not controller.confirmed
    assert controller.recipe is None
    assert controller.check() is False
    assert gardasoft.commands == []


def test_failed_trigger_clears_confirmed(gardasoft: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(gardasoft, GardasoftProtocol(), controllers, retries=0)
    controller.apply(GARDASOFT_RECIPE)
    gardasoft.fail_commands(1)
    with pytest.raises(LineIOError, match="error 9"):
        controller.trigger(1)
    assert not controller.confirmed
    assert gardasoft.triggers(1) == 0


def test_replug_via_alias(tmp_path: Path, controllers: list) -> None:
    alias = tmp_path / "usb-light"
    with SimulatedLightController("gardasoft", alias=alias) as sim:
        controller = make_controller(sim, GardasoftProtocol(), controllers)
        controller.apply(GARDASOFT_RECIPE)
        first_path = sim.device_path

        sim.replug()
        assert sim.device_path != first_path
        # NOTE: SerialLink.write catches OSError and SerialException but not the termios.error that
        # flush() (tcdrain) raises while the kernel is still hanging up the old pty, so a write in
        # that window escapes as termios.error. The pause lets the hangup finish first.
        time.sleep(0.05)
        assert wait_until(controller.check)

        assert controller.confirmed
        port = controller.describe()["port"]
        assert port["opens"] == 2
        assert port["open_path"] == str(alias)
        assert sim.commands[-2:] == [b"RS1,80\r", b"RT2,5,0.5,100\r"]
        controller.close()


@pytest.mark.parametrize("protocol_name", ["gardasoft", "ccs"])
def test_intensity_follows_recipe(protocol_name: str, controllers: list) -> None:
    first, second = (1, 2) if protocol_name == "gardasoft" else (0, 1)
    protocol = GardasoftProtocol() if protocol_name == "gardasoft" else CcsProtocol()
    bright = LightRecipe("bright", (ChannelSetting(first, "continuous", 75), ChannelSetting(second, "continuous", 30)))
    dim = LightRecipe("dim", (ChannelSetting(first, "continuous", 10), ChannelSetting(second, "off", 0)))

    with SimulatedLightController(protocol_name) as sim:
        controller = make_controller(sim, protocol, controllers)
        controller.apply(bright)
        # CCS scales percent to 0-255, so the simulated percent is within half a step.
        assert sim.intensity_percent(first) == pytest.approx(75, abs=0.2)
        assert sim.intensity_percent(second) == pytest.approx(30, abs=0.2)
        assert sim.state(first)["mode"] == "continuous"

        controller.apply(dim)
        assert sim.intensity_percent(first) == pytest.approx(10, abs=0.2)
        assert sim.intensity_percent(second) == 0.0
        assert controller.recipe == dim
        assert controller.describe()["recipe"] == "dim"
        controller.close()


def test_pulse_state(gardasoft: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(gardasoft, GardasoftProtocol(), controllers)
    controller.apply(GARDASOFT_RECIPE)
    state = gardasoft.state(2)
    assert state["mode"] == "pulse"
    assert state["pulse_width_ms"] == 5
    assert state["pulse_delay_ms"] == 0.5
    assert gardasoft.intensity_percent(2) == 100
    with pytest.raises(ValueError, match="channels 1 to 4"):
        gardasoft.state(0)


def test_describe_fields(gardasoft: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(gardasoft, GardasoftProtocol(), controllers)
    controller.apply(GARDASOFT_RECIPE)
    described = controller.describe()
    assert described["protocol"] == "gardasoft"
    assert described["recipe"] == "bracket"
    assert described["confirmed"] is True
    assert described["counters"] == {"commands": 2, "retries": 0, "failures": 0}
    assert described["last_error"] is None
    assert described["port"]["port"] == gardasoft.port
    assert described["port"]["connected"] is True


def test_check_and_trigger_threads(gardasoft: SimulatedLightController, controllers: list) -> None:
    controller = make_controller(gardasoft, GardasoftProtocol(), controllers)
    controller.apply(GARDASOFT_RECIPE)
    errors: list[BaseException] = []
    rounds = 20

    def trigger_loop() -> None:
        try:
            for _ in range(rounds):
                controller.trigger(2)
        except LineIOError as error:
            errors.append(error)

    thread = threading.Thread(target=trigger_loop)
    thread.start()
    results = [controller.check() for _ in range(rounds)]
    thread.join(timeout=WAIT_S * 2)

    assert errors == []
    assert all(results)
    assert gardasoft.triggers(2) == rounds
    counters = controller.describe()["counters"]
    assert counters["commands"] == 2 + 2 * rounds + rounds
    assert counters["retries"] == 0
