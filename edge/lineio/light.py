"""Light controllers: recipe types, the serial protocols of common vendors, and the controller.

A product recipe sets every light channel (continuous, strobed or off). The controller sends each
channel's commands, waits for every acknowledgement, retries what fails and reports whether the
light is known to match the recipe (`confirmed`), so that the daemon can refuse to pass
parts inspected under the wrong light.
"""

from __future__ import annotations

import math
import re
import string
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import structlog

from edge.lineio.base import DeviceReplyError, LineIOError
from edge.lineio.checksums import lrc_modbus, sum8, xor8
from edge.lineio.serial_link import SerialLink

log = structlog.get_logger(__name__)

LightMode = Literal["continuous", "pulse", "off"]
LIGHT_MODES = ("continuous", "pulse", "off")


# Recipes


@dataclass(frozen=True)
class ChannelSetting:
    """Drive settings of one light channel.

    `percent` is the intensity in percent of full scale. `pulse_width_ms` and `pulse_delay_ms`
    (strobe length and delay after the trigger) apply only to mode `pulse`, which needs a width.
    """

    channel: int
    mode: LightMode
    percent: float
    pulse_width_ms: float | None = None
    pulse_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.channel, bool) or not isinstance(self.channel, int) or self.channel < 0:
            raise ValueError(f"light channel must be an integer >= 0, got {self.channel!r}")
        if self.mode not in LIGHT_MODES:
            raise ValueError(f"channel {self.channel}: mode {self.mode!r} is invalid; use one of {', '.join(LIGHT_MODES)}")
        if not _is_number(self.percent) or not 0 <= self.percent <= 100:
            raise ValueError(f"channel {self.channel}: percent must be a number from 0 to 100, got {self.percent!r}")

        if self.mode == "pulse":
            if self.pulse_width_ms is None:
                raise ValueError(f"channel {self.channel}: mode pulse needs pulse_width_ms (the strobe length in ms)")
            if not _is_number(self.pulse_width_ms) or self.pulse_width_ms <= 0:
                raise ValueError(f"channel {self.channel}: pulse_width_ms must be a positive number, got {self.pulse_width_ms!r}")
            if not _is_number(self.pulse_delay_ms) or self.pulse_delay_ms < 0:
                raise ValueError(f"channel {self.channel}: pulse_delay_ms must be a number >= 0, got {self.pulse_delay_ms!r}")
        elif self.pulse_width_ms is not None or self.pulse_delay_ms != 0:
            raise ValueError(
                f"channel {self.channel}: pulse_width_ms and pulse_delay_ms apply only to mode pulse; "
                f"remove them or set mode pulse (mode is {self.mode})"
            )


@dataclass(frozen=True)
class LightRecipe:
    """The light settings of one product: one ChannelSetting per channel, sent in this order."""

    name: str
    channels: tuple[ChannelSetting, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"light recipe name must be a non-empty string, got {self.name!r}")
        # A list is accepted for convenience and stored as a tuple, so the recipe stays immutable.
        object.__setattr__(self, "channels", tuple(self.channels))
        if not self.channels:
            raise ValueError(f"light recipe {self.name!r} has no channels; add at least one ChannelSetting")

        seen: set[int] = set()
        for setting in self.channels:
            if not isinstance(setting, ChannelSetting):
                raise ValueError(f"light recipe {self.name!r}: {setting!r} is not a ChannelSetting")
            if setting.channel in seen:
                raise ValueError(f"light recipe {self.name!r} sets channel {setting.channel} twice; keep one setting per channel")
            seen.add(setting.channel)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Protocols


class LightProtocol(ABC):
    """The command bytes and reply rules of one vendor's serial protocol.

    Each method that builds a command returns the exact bytes of one request, terminator and
    checksum included. `commands_for` lists the requests that set one channel, each of which the
    device acknowledges on its own.
    """

    name: str = "light protocol"

    @abstractmethod
    def continuous(self, channel: int, percent: float) -> bytes:
        """Build the command that lights the channel continuously at `percent`."""

    @abstractmethod
    def pulse(self, channel: int, width_ms: float, delay_ms: float, percent: float) -> bytes:
        """Build the command that strobes the channel for `width_ms`, `delay_ms` after each trigger."""

    @abstractmethod
    def off(self, channel: int) -> bytes:
        """Build the command that switches the channel off."""

    @abstractmethod
    def trigger(self, channel: int) -> bytes:
        """Build the software trigger command of the channel."""

    @abstractmethod
    def reply_end(self, buffer: bytes) -> int | None:
        """Return the length of a complete reply at the start of `buffer`, or None while it is incomplete."""

    @abstractmethod
    def check_reply(self, request: bytes, reply: bytes) -> None:
        """Raise DeviceReplyError naming the request and the reply unless the reply acknowledges the request."""

    def commands_for(self, setting: ChannelSetting) -> list[bytes]:
        """Build the requests that set one channel, in the order they must be sent."""
        if setting.mode == "continuous":
            return [self.continuous(setting.channel, setting.percent)]
        if setting.mode == "pulse":
            assert setting.pulse_width_ms is not None  # ChannelSetting requires a width in mode pulse
            return [self.pulse(setting.channel, setting.pulse_width_ms, setting.pulse_delay_ms, setting.percent)]
        return [self.off(setting.channel)]

    def check_recipe(self, recipe: LightRecipe) -> None:
        """Raise LineIOError when this protocol cannot set a channel of the recipe, before anything is sent."""
        for setting in recipe.channels:
            try:
                self.commands_for(setting)
            except LineIOError as error:
                raise LineIOError(f"light recipe {recipe.name!r}, channel {setting.channel}: {error}") from error


class GardasoftProtocol(LightProtocol):
    """Gardasoft-style ASCII commands: `RS` continuous, `RT` pulse, `TR` trigger, each ended by CR.

    The controller ends every reply with the prompt `>`, and a reply containing `Err n` reports
    an error. Channels are numbered from 1.
    """

    name = "gardasoft"

    def continuous(self, channel: int, percent: float) -> bytes:
        return self._command(f"RS{self._channel(channel)},{percent:g}")

    def pulse(self, channel: int, width_ms: float, delay_ms: float, percent: float) -> bytes:
        return self._command(f"RT{self._channel(channel)},{width_ms:g},{delay_ms:g},{percent:g}")

    def off(self, channel: int) -> bytes:
        return self._command(f"RS{self._channel(channel)},0")

    def trigger(self, channel: int) -> bytes:
        return self._command(f"TR{self._channel(channel)}")

    def reply_end(self, buffer: bytes) -> int | None:
        index = buffer.find(b">")
        return None if index < 0 else index + 1

    def check_reply(self, request: bytes, reply: bytes) -> None:
        error = re.search(rb"Err\s*(\d+)", reply)
        if error is not None:
            raise DeviceReplyError(
                f"light controller rejected {request!r} with error {int(error.group(1))} (reply {reply!r}); "
                "check the channel number and the value ranges in the controller manual"
            )
        if not reply.endswith(b">"):
            raise DeviceReplyError(f"light controller sent {reply!r} to {request!r}, which does not end with the prompt '>'")

    @staticmethod
    def _channel(channel: int) -> int:
        if channel < 1:
            raise LineIOError(f"Gardasoft channels are numbered from 1, got channel {channel}; renumber the recipe")
        return channel

    @staticmethod
    def _command(text: str) -> bytes:
        return text.encode("ascii") + b"\r"


class CcsProtocol(LightProtocol):
    """CCS-style framed commands: `@`, channel digits, command, data, sum checksum, CRLF.

    The checksum is the low byte of the ASCII sum of everything before it, as two uppercase hex
    digits. A good reply is `@{ch}O`, with or without a checksum, and `@{ch}N` reports an error.
    Channels are switched on and off here, so pulse and trigger commands are not available.
    """

    name = "ccs"

    def __init__(self, unit_digits: int = 2) -> None:
        if isinstance(unit_digits, bool) or not isinstance(unit_digits, int) or unit_digits < 1:
            raise ValueError(f"unit_digits must be a positive integer (2 for most CCS controllers), got {unit_digits!r}")
        self.unit_digits = unit_digits
        self._ok_reply = re.compile(rb"@(\d{%d})O([0-9A-Fa-f]{2})?\r\n" % unit_digits)
        self._error_reply = re.compile(rb"@(\d{%d})N" % unit_digits)

    def frame(self, body: bytes) -> bytes:
        """Append the checksum and CRLF to a command body such as `b"@00L100"`."""
        return body + f"{sum8(body):02X}".encode("ascii") + b"\r\n"

    def intensity(self, channel: int, percent: float) -> bytes:
        """Build the frame that sets the intensity, scaled from percent to 0-255."""
        value = round(percent * 255 / 100)
        return self.frame(f"@{self._channel(channel)}F{value:03d}".encode("ascii"))

    def switch_on(self, channel: int) -> bytes:
        # Command L, data 1 (on), then the two reserved digits 00.
        return self.frame(f"@{self._channel(channel)}L100".encode("ascii"))

    def continuous(self, channel: int, percent: float) -> bytes:
        """Build the intensity frame followed by the on frame. `commands_for` lists them as two requests."""
        return self.intensity(channel, percent) + self.switch_on(channel)

    def pulse(self, channel: int, width_ms: float, delay_ms: float, percent: float) -> bytes:
        raise LineIOError(
            "pulse mode is not available: CCS-style controllers are switched on/off here; use mode continuous "
            "or off, and strobe through the controller's external trigger input"
        )

    def off(self, channel: int) -> bytes:
        return self.frame(f"@{self._channel(channel)}L000".encode("ascii"))

    def trigger(self, channel: int) -> bytes:
        raise LineIOError(
            "a software trigger is not available: CCS-style controllers are switched on/off here; use mode continuous "
            "or off, and strobe through the controller's external trigger input"
        )

    def commands_for(self, setting: ChannelSetting) -> list[bytes]:
        if setting.mode == "continuous":
            return [self.intensity(setting.channel, setting.percent), self.switch_on(setting.channel)]
        return super().commands_for(setting)

    def reply_end(self, buffer: bytes) -> int | None:
        index = buffer.find(b"\r\n")
        return None if index < 0 else index + 2

    def check_reply(self, request: bytes, reply: bytes) -> None:
        if self._error_reply.match(reply):
            raise DeviceReplyError(
                f"light controller rejected {request!r} (reply {reply!r}); check the channel number and the checksum"
            )
        match = self._ok_reply.fullmatch(reply)
        if match is None:
            raise DeviceReplyError(f"light controller sent {reply!r} to {request!r}, which is not an acknowledgement")

        channel_digits = request[1 : 1 + self.unit_digits]
        if match.group(1) != channel_digits:
            raise DeviceReplyError(
                f"light controller acknowledged channel {match.group(1).decode()} instead of "
                f"{channel_digits.decode()} (request {request!r}, reply {reply!r}); it may be a late reply"
            )
        checksum = match.group(2)
        if checksum is not None and checksum.upper() != f"{sum8(reply[: match.start(2)]):02X}".encode("ascii"):
            raise DeviceReplyError(f"light controller reply {reply!r} to {request!r} has a wrong checksum")

    def _channel(self, channel: int) -> str:
        limit = 10**self.unit_digits
        if not 0 <= channel < limit:
            raise LineIOError(f"CCS channel numbers run from 0 to {limit - 1}, got channel {channel}; renumber the recipe")
        return f"{channel:0{self.unit_digits}d}"


TEMPLATE_COMMANDS = ("continuous", "pulse", "off", "trigger")
TEMPLATE_FIELDS = ("channel", "percent", "percent_255", "width_ms", "delay_ms")
TEMPLATE_CHECKSUMS = ("none", "sum8_hex", "xor8_hex", "lrc_hex")


class TemplateProtocol(LightProtocol):
    """A protocol described by text templates, for controllers without a protocol class of their own.

    `commands` maps `continuous`, `pulse`, `off` and `trigger` to Python format templates over
    `{channel}` (int), `{percent}` (float, 0-100), `{percent_255}` (int, 0-255), `{width_ms}` and
    `{delay_ms}` (floats), such as `"SET{channel},{percent:.0f}"`. A missing key marks the command
    as unsupported. The checksum is two uppercase hex digits over the formatted text, placed
    before `terminator`. A reply ends with `reply_terminator` and is good when `ack_pattern` is
    found in it (`re.search`, so anchor it with ^ and $ to match the whole reply), unless
    `error_pattern` is found first.
    """

    def __init__(
        self,
        commands: dict[str, str],
        *,
        ack_pattern: str,
        terminator: str = "\r\n",
        checksum: Literal["none", "sum8_hex", "xor8_hex", "lrc_hex"] = "none",
        reply_terminator: str = "\r\n",
        error_pattern: str | None = None,
        name: str = "template",
    ) -> None:
        unknown = sorted(set(commands) - set(TEMPLATE_COMMANDS))
        if unknown:
            raise ValueError(f"unknown light command(s) {', '.join(unknown)}; the templates are named {', '.join(TEMPLATE_COMMANDS)}")
        if not commands:
            raise ValueError(f"no light command templates given; set at least one of {', '.join(TEMPLATE_COMMANDS)}")
        for command, template in commands.items():
            _check_template(command, template)
        if checksum not in TEMPLATE_CHECKSUMS:
            raise ValueError(f"checksum {checksum!r} is invalid; use one of {', '.join(TEMPLATE_CHECKSUMS)}")
        if not reply_terminator:
            raise ValueError("reply_terminator is empty; set the characters that end every reply, such as '\\r\\n'")

        self.name = name
        self.commands = dict(commands)
        self.checksum = checksum
        self._terminator = _ascii(terminator, "terminator")
        self._reply_terminator = _ascii(reply_terminator, "reply_terminator")
        self._ack = _compile(ack_pattern, "ack_pattern")
        self._error = _compile(error_pattern, "error_pattern") if error_pattern is not None else None

    def continuous(self, channel: int, percent: float) -> bytes:
        return self._render("continuous", channel=channel, percent=percent)

    def pulse(self, channel: int, width_ms: float, delay_ms: float, percent: float) -> bytes:
        return self._render("pulse", channel=channel, percent=percent, width_ms=width_ms, delay_ms=delay_ms)

    def off(self, channel: int) -> bytes:
        return self._render("off", channel=channel, percent=0.0)

    def trigger(self, channel: int) -> bytes:
        return self._render("trigger", channel=channel, percent=0.0)

    def reply_end(self, buffer: bytes) -> int | None:
        index = buffer.find(self._reply_terminator)
        return None if index < 0 else index + len(self._reply_terminator)

    def check_reply(self, request: bytes, reply: bytes) -> None:
        text = reply.removesuffix(self._reply_terminator).decode("ascii", errors="replace")
        if self._error is not None and self._error.search(text):
            raise DeviceReplyError(f"light controller rejected {request!r} (reply {reply!r} matches the error pattern)")
        if not self._ack.search(text):
            raise DeviceReplyError(
                f"light controller sent {reply!r} to {request!r}, which does not match the ack pattern {self._ack.pattern!r}"
            )

    def _render(self, command: str, *, channel: int, percent: float, width_ms: float = 0.0, delay_ms: float = 0.0) -> bytes:
        template = self.commands.get(command)
        if template is None:
            raise LineIOError(
                f"the {self.name} light protocol has no {command!r} command; add a {command!r} template or use another mode"
            )
        text = template.format(
            channel=channel, percent=percent, percent_255=round(percent * 255 / 100), width_ms=width_ms, delay_ms=delay_ms
        )
        body = _ascii(text, f"command {command!r}")
        return body + self._checksum(body) + self._terminator

    def _checksum(self, body: bytes) -> bytes:
        if self.checksum == "sum8_hex":
            value = sum8(body)
        elif self.checksum == "xor8_hex":
            value = xor8(body)
        elif self.checksum == "lrc_hex":
            value = lrc_modbus(body)
        else:
            return b""
        return f"{value:02X}".encode("ascii")


def _check_template(command: str, template: str) -> None:
    """Raise ValueError unless the template formats with the known fields only."""
    if not isinstance(template, str) or not template:
        raise ValueError(f"light command {command!r}: the template must be a non-empty string, got {template!r}")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise ValueError(f"light command {command!r}: template {template!r} is invalid ({error}); write literal braces as {{{{ and }}}}") from error
    for field in fields:
        if field not in TEMPLATE_FIELDS:
            raise ValueError(
                f"light command {command!r}: template {template!r} uses unknown field {{{field}}}; "
                f"use only {', '.join('{' + name + '}' for name in TEMPLATE_FIELDS)}"
            )

    # Format specs are checked by formatting sample values, so `{channel:.2q}` fails here and not on the line.
    try:
        text = template.format(channel=1, percent=50.0, percent_255=128, width_ms=1.0, delay_ms=0.0)
    except (ValueError, TypeError) as error:
        raise ValueError(f"light command {command!r}: template {template!r} cannot be formatted ({error}); fix the format spec") from error
    if not text.isascii():
        raise ValueError(f"light command {command!r}: template {template!r} contains non-ASCII characters; serial commands are ASCII")


def _compile(pattern: str, option: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, TypeError) as error:
        raise ValueError(f"{option} {pattern!r} is not a valid regular expression ({error}); fix or escape it") from error


def _ascii(text: str, option: str) -> bytes:
    try:
        return text.encode("ascii")
    except (UnicodeEncodeError, AttributeError) as error:
        raise ValueError(f"{option} {text!r} must be an ASCII string") from error


# Controller


@dataclass
class _LightCounters:
    commands: int = 0  # commands acknowledged
    retries: int = 0
    failures: int = 0  # commands still unacknowledged after all retries


class LightController:
    """Sets a light controller to a recipe over a serial link and tracks whether it is confirmed.

    Every command waits for its acknowledgement (`link.transact`). After a timeout, a bad reply
    or a port error it is sent again, up to `retries` times, and then the call raises LineIOError.
    `apply` and `check` run one at a time. `trigger` may run from another thread between their
    commands, because the link serialises each request with its reply.
    """

    def __init__(self, link: SerialLink, protocol: LightProtocol, *, reply_timeout_ms: int = 200, retries: int = 2) -> None:
        if reply_timeout_ms <= 0:
            raise ValueError(f"reply_timeout_ms must be positive, got {reply_timeout_ms}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.link = link
        self.protocol = protocol
        self.reply_timeout_ms = reply_timeout_ms
        self.retries = retries
        self._recipe: LightRecipe | None = None
        self._confirmed = False
        self._confirmed_recipe: LightRecipe | None = None
        self._counters = _LightCounters()
        self._last_error: str | None = None
        # Failures since the last acknowledged command, so an outage is logged once and not per check.
        self._failing_since_ok = 0
        self._apply_lock = threading.Lock()
        self._state_lock = threading.Lock()

    @property
    def recipe(self) -> LightRecipe | None:
        """The recipe that `apply` last started to send and `check` sends again, or None before the first."""
        return self._recipe

    @property
    def confirmed(self) -> bool:
        """True when the last `apply` or `check` got every command acknowledged and nothing failed since."""
        return self._confirmed

    def apply(self, recipe: LightRecipe) -> None:
        """Send every channel's commands of the recipe in order, each acknowledged before the next.

        Raises LineIOError before sending anything when the protocol cannot set a channel, and the
        previous recipe then stays in place. Raises LineIOError when a command is still not
        acknowledged after the retries. `confirmed` is then False, and `check` sends the new recipe.
        """
        self.protocol.check_recipe(recipe)
        with self._apply_lock:
            self._recipe = recipe
            self._send_recipe(recipe)
        log.info("light recipe applied", recipe=recipe.name, protocol=self.protocol.name, channels=len(recipe.channels))

    def check(self) -> bool:
        """Send the current recipe again and return `confirmed`, which is False without a recipe.

        Failures are counted and logged, not raised, so the daemon can call this periodically.
        """
        with self._apply_lock:
            recipe = self._recipe
            if recipe is None:
                return False
            try:
                self._send_recipe(recipe)
            except LineIOError:
                return False
            return True

    def trigger(self, channel: int) -> None:
        """Send the software trigger of `channel` and wait for its acknowledgement.

        Raises LineIOError when the protocol has no trigger command or when the device does not
        acknowledge it after the retries. The latter also clears `confirmed`.
        """
        request = self.protocol.trigger(channel)
        self._send(request)

    def close(self) -> None:
        """Release the serial port; the next command opens it again."""
        self.link.close()

    def describe(self) -> dict:
        with self._state_lock:
            counters = dict(self._counters.__dict__)
            last_error = self._last_error
        return {
            "protocol": self.protocol.name,
            "recipe": self._recipe.name if self._recipe is not None else None,
            "confirmed": self._confirmed,
            "counters": counters,
            "last_error": last_error,
            "port": self.link.describe(),
        }

    def _send_recipe(self, recipe: LightRecipe) -> None:
        # Sending the confirmed recipe again (a check) keeps `confirmed` until a command fails, so
        # parts captured during a check are not rejected. A new recipe is unconfirmed until sent.
        if recipe != self._confirmed_recipe:
            self._confirmed = False
        try:
            for setting in recipe.channels:
                for request in self.protocol.commands_for(setting):
                    self._send(request)
        except LineIOError:
            self._confirmed = False
            self._confirmed_recipe = None
            raise
        self._confirmed_recipe = recipe
        self._confirmed = True

    def _send(self, request: bytes) -> bytes:
        """Send one request until it is acknowledged, at most `retries` + 1 times."""
        timeout_s = self.reply_timeout_ms / 1000.0
        attempts = self.retries + 1
        attempt = 1
        while True:
            try:
                reply = self.link.transact(request, self.protocol.reply_end, timeout_s)
                self.protocol.check_reply(request, reply)
            except LineIOError as error:
                if attempt == attempts:
                    self._note_failure(request, attempts, error)
                    raise LineIOError(
                        f"light command {request!r} was not acknowledged after {attempts} attempt(s): {error}"
                    ) from error
                self._note_retry(request, attempt, error)
                attempt += 1
                continue

            self._note_success()
            return reply

    def _note_retry(self, request: bytes, attempt: int, error: LineIOError) -> None:
        with self._state_lock:
            self._counters.retries += 1
            self._last_error = str(error)
            quiet = self._failing_since_ok > 0
        if quiet:
            log.debug("light command retried", request=request, attempt=attempt, error=str(error))
        else:
            log.warning("light command retried", request=request, attempt=attempt, error=str(error))

    def _note_failure(self, request: bytes, attempts: int, error: LineIOError) -> None:
        with self._state_lock:
            self._counters.failures += 1
            self._last_error = str(error)
            self._failing_since_ok += 1
            first = self._failing_since_ok == 1
        self._confirmed = False
        if first:
            log.error("light command failed", request=request, attempts=attempts, error=str(error), port=self.link.settings.port)
        else:
            log.debug("light command failed", request=request, attempts=attempts, error=str(error))

    def _note_success(self) -> None:
        with self._state_lock:
            self._counters.commands += 1
            failures, self._failing_since_ok = self._failing_since_ok, 0
        if failures:
            log.info("light controller responds again", failures_during_outage=failures, port=self.link.settings.port)
