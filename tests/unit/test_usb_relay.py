"""USB relay board frames and the relay reject output against a simulated board on a pty."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.lineio.base import LineIOError
from edge.lineio.serial_link import SerialLink, SerialSettings
from edge.lineio.simulated.relay_board import SimulatedRelayBoard
from edge.lineio.usb_relay import UsbRelayOutput, relay_frame
from tests.waiting import wait_until


@pytest.fixture
def board() -> Iterator[SimulatedRelayBoard]:
    with SimulatedRelayBoard() as simulated:
        yield simulated


@pytest.fixture
def make_link() -> Iterator[Callable[[str], SerialLink]]:
    links: list[SerialLink] = []

    def make(port: str) -> SerialLink:
        link = SerialLink(SerialSettings(port, reopen_backoff_s=(0.05,)), "relay board")
        links.append(link)
        return link

    yield make
    for link in links:
        link.close()


def test_frame_published_bytes() -> None:
    assert relay_frame(1, True) == bytes.fromhex("A00101A2")
    assert relay_frame(1, False) == bytes.fromhex("A00100A1")


def test_frame_sum_wraps() -> None:
    frame = relay_frame(8, True)

    assert frame == bytes.fromhex("A00801A9")
    assert frame[3] == sum(frame[:3]) & 0xFF


@pytest.mark.parametrize("channel", [0, 9, -1])
def test_frame_rejects_channel(channel: int) -> None:
    with pytest.raises(ValueError, match=f"channel {channel} is invalid"):
        relay_frame(channel, True)


def test_output_rejects_channel(make_link: Callable[[str], SerialLink]) -> None:
    with pytest.raises(ValueError, match="channel 9 is invalid; use 1 to 8"):
        UsbRelayOutput(make_link("/dev/null"), channel=9)


def test_pulse_bytes(board: SimulatedRelayBoard, make_link: Callable[[str], SerialLink]) -> None:
    output = UsbRelayOutput(make_link(board.port), channel=1)
    output.open()

    output.pulse_start(part_id=3)
    assert wait_until(lambda: board.state(1))
    output.pulse_end(part_id=3)
    assert wait_until(lambda: len(board.switches) == 3)

    # open() switches the relay off first.
    assert board.received_bytes() == bytes.fromhex("A00100A1 A00101A2 A00100A1")
    assert [(channel, on) for _, channel, on in board.switches] == [(1, False), (1, True), (1, False)]
    assert not board.state(1)
    assert board.invalid_frames == 0
    assert output.describe()["pulses"] == 1
    assert output.describe()["writes"] == 3


def test_pulse_other_channel(board: SimulatedRelayBoard, make_link: Callable[[str], SerialLink]) -> None:
    output = UsbRelayOutput(make_link(board.port), channel=4)
    output.open()

    output.pulse_start(part_id=1)

    assert wait_until(lambda: board.state(4))
    assert not board.state(1)
    assert board.received_bytes().endswith(bytes.fromhex("A00401A5"))


def test_close_switches_off(board: SimulatedRelayBoard, make_link: Callable[[str], SerialLink]) -> None:
    output = UsbRelayOutput(make_link(board.port), channel=2)
    output.open()
    output.pulse_start(part_id=1)

    output.close()
    output.close()

    assert wait_until(lambda: len(board.switches) == 3)
    assert not board.state(2)
    assert not output.link.is_open


def test_board_ignores_invalid_frames(board: SimulatedRelayBoard, make_link: Callable[[str], SerialLink]) -> None:
    link = make_link(board.port)
    link.open()

    link.write(bytes.fromhex("A0010100"))  # wrong sum
    link.write(bytes.fromhex("5555"))  # no frame start
    link.write(bytes.fromhex("A00901AA"))  # channel 9 on an 8-channel board
    link.write(relay_frame(3, True))

    assert wait_until(lambda: board.state(3))
    assert board.invalid_frames == 3
    assert [(channel, on) for _, channel, on in board.switches] == [(3, True)]
    assert not board.state(1)


def test_open_fails_without_port(tmp_path: Path, make_link: Callable[[str], SerialLink]) -> None:
    output = UsbRelayOutput(make_link(str(tmp_path / "missing")))

    with pytest.raises(LineIOError, match="cannot open serial port"):
        output.open()


def test_write_recovers_after_unplug(tmp_path: Path, make_link: Callable[[str], SerialLink]) -> None:
    with SimulatedRelayBoard(alias=tmp_path / "relay") as board:
        output = UsbRelayOutput(make_link(board.port), channel=1)
        output.open()
        board.replug(downtime_s=0.0)

        # Writes to the unplugged pty fail until the link reopens the alias after its backoff.
        assert wait_until(lambda: _pulse_succeeds(output))
        assert wait_until(lambda: board.state(1))

    assert output.describe()["failures"] >= 1
    assert output.describe()["link"]["opens"] == 2
    assert [(channel, on) for _, channel, on in board.switches][-1] == (1, True)


def _pulse_succeeds(output: UsbRelayOutput) -> bool:
    try:
        output.pulse_start(part_id=2)
    except LineIOError:
        return False
    return True
