"""The station's line I/O built from the `line_io` config: light, PLC, reject output and trigger.

`LineIO` owns every serial device of the station and the reject scheduler. The pipeline checks
with it that the light is confirmed before admitting a part, registers every part for the
ejector with it, and in trigger modes waits on it for the next part.
"""

from __future__ import annotations

import sys
import threading
import time

import structlog

from edge.config import LineIOConfig, LightConfig, PlcConfig, SerialPortConfig
from edge.lineio.base import LineIOError, PlcInput, RejectOutput, TriggerEvent
from edge.lineio.reject_timing import EncoderClock, RejectScheduler
from edge.lineio.serial_link import SerialLink, SerialSettings
from edge.parts import Part

log = structlog.get_logger(__name__)

# While the light is not confirmed, the recipe is retried this often.
_LIGHT_RETRY_S = 0.5
_MODBUS_COUNTER_MODULUS = 65536
# CPython lets a waiting thread take the interpreter lock only every `sys.getswitchinterval()`
# (5 ms by default), so the reject thread could start a pulse up to that late while the stage
# threads run Python code. With a reject output the interval is shortened to this.
REJECT_SWITCH_INTERVAL_S = 0.0005


def serial_link(config: SerialPortConfig, device_name: str) -> SerialLink:
    settings = SerialSettings(
        port=config.port,
        baudrate=config.baudrate,
        bytesize=config.bytesize,
        parity=config.parity,
        stopbits=config.stopbits,
        write_timeout_ms=config.write_timeout_ms,
        reopen_backoff_s=tuple(config.reopen_backoff_s),
    )
    return SerialLink(settings, device_name)


def build_light(config: LightConfig):
    """Return the LightController and the LightRecipe to apply, from the light config."""
    from edge.lineio.light import (
        CcsProtocol,
        ChannelSetting,
        GardasoftProtocol,
        LightController,
        LightRecipe,
        TemplateProtocol,
    )

    if config.protocol == "gardasoft":
        protocol = GardasoftProtocol()
    elif config.protocol == "ccs":
        protocol = CcsProtocol()
    else:
        template = config.template
        protocol = TemplateProtocol(
            commands=dict(template.commands),
            terminator=template.terminator,
            checksum=template.checksum,
            reply_terminator=template.reply_terminator,
            ack_pattern=template.ack_pattern,
            error_pattern=template.error_pattern,
        )
    channels = tuple(
        ChannelSetting(
            channel=channel.channel,
            mode=channel.mode,
            percent=channel.percent,
            pulse_width_ms=channel.pulse_width_ms,
            pulse_delay_ms=channel.pulse_delay_ms,
        )
        for channel in config.recipes[config.recipe]
    )
    recipe = LightRecipe(name=config.recipe, channels=channels)
    protocol.check_recipe(recipe)
    controller = LightController(
        serial_link(config.serial, "light controller"),
        protocol,
        reply_timeout_ms=config.serial.reply_timeout_ms,
        retries=config.serial.retries,
    )
    return controller, recipe


def build_plc(config: PlcConfig, need_input: bool) -> tuple[PlcInput | None, RejectOutput]:
    """Return the PLC input (None when nothing is read from the PLC) and the PLC reject output."""
    link = serial_link(config.serial, "PLC")
    if config.protocol == "ascii":
        from edge.lineio.ascii_plc import AsciiPlc

        ascii_config = config.ascii
        plc = AsciiPlc(
            link,
            reject_template=ascii_config.reject_template,
            ack_pattern=ascii_config.ack_pattern,
            error_pattern=ascii_config.error_pattern,
            trigger_pattern=ascii_config.trigger_pattern,
            encoder_pattern=ascii_config.encoder_pattern,
            line_end=ascii_config.line_end,
            reply_timeout_ms=config.serial.reply_timeout_ms,
            retries=config.serial.retries,
        )
        return plc, plc.reject_output()

    from edge.lineio.modbus_rtu import ModbusCoilOutput, ModbusPlcInput, ModbusRegisterOutput, ModbusRtuClient

    modbus = config.modbus
    client = ModbusRtuClient(
        link,
        modbus.unit_id,
        reply_timeout_ms=config.serial.reply_timeout_ms,
        retries=config.serial.retries,
        min_gap_ms=modbus.min_gap_ms,
    )
    if modbus.reject_kind == "coil":
        output: RejectOutput = ModbusCoilOutput(client, modbus.reject_address)
    else:
        output = ModbusRegisterOutput(client, modbus.reject_address, on_value=modbus.on_value, off_value=modbus.off_value)
    plc_input = None
    if need_input:
        plc_input = ModbusPlcInput(
            client,
            encoder_address=modbus.encoder_address,
            part_counter_address=modbus.part_counter_address,
            latch_address=modbus.latch_address,
            poll_interval_ms=modbus.poll_interval_ms,
        )
    return plc_input, output


class LineIO:
    """Light controller, PLC input, reject output and reject scheduler of one station."""

    def __init__(self, config: LineIOConfig) -> None:
        self.config = config
        self.light = None
        self.light_recipe = None
        self.plc_input: PlcInput | None = None
        self.reject_output: RejectOutput | None = None
        self.scheduler: RejectScheduler | None = None
        self._encoder: EncoderClock | None = None
        self._stop = threading.Event()
        self._light_thread: threading.Thread | None = None
        self._last_sequence: int | None = None
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(("triggers", "missed_triggers", "triggers_without_frame", "light_faults"), 0)

        if config.light is not None:
            self.light, self.light_recipe = build_light(config.light)
        need_plc_input = config.trigger.mode == "plc" or (config.reject is not None and config.reject.timing == "encoder")
        if config.plc is not None:
            plc_input, plc_output = build_plc(config.plc, need_plc_input)
            self.plc_input = plc_input
            if config.reject is not None and config.reject.output == "plc":
                self.reject_output = plc_output
        if config.reject is not None and config.reject.output == "relay":
            from edge.lineio.usb_relay import UsbRelayOutput

            self.reject_output = UsbRelayOutput(serial_link(config.relay.serial, "relay board"), channel=config.relay.channel)

    @staticmethod
    def configured(config: LineIOConfig) -> bool:
        return any(device is not None for device in (config.light, config.plc, config.relay, config.reject)) or (
            config.trigger.mode != "free_run"
        )

    @property
    def trigger_mode(self) -> str:
        return self.config.trigger.mode

    def open(self, settle) -> None:
        """Open the PLC and reject output (raise LineIOError if they cannot be), apply the light recipe.

        A light that does not confirm the recipe does not stop the start: parts are rejected
        with reason `light_fault` until a retry succeeds.
        """
        try:
            if self.plc_input is not None:
                self.plc_input.open()
            if self.reject_output is not None:
                self.reject_output.open()
        except LineIOError:
            self._close_devices()
            raise

        if self.plc_input is not None and self.config.reject is not None and self.config.reject.timing == "encoder":
            self._encoder = EncoderClock(self.plc_input)
            self._wait_for_encoder(timeout_s=2.0)
        if self.reject_output is not None:
            if sys.getswitchinterval() > REJECT_SWITCH_INTERVAL_S:
                log.info("interpreter switch interval shortened for reject timing",
                         previous_s=sys.getswitchinterval(), switch_interval_s=REJECT_SWITCH_INTERVAL_S)
                sys.setswitchinterval(REJECT_SWITCH_INTERVAL_S)
            self.scheduler = RejectScheduler(self.config.reject, self.reject_output, settle, encoder=self._encoder)
            self.scheduler.start()

        if self.light is not None:
            self._apply_light()
            self._stop.clear()
            self._light_thread = threading.Thread(target=self._watch_light, name="light", daemon=True)
            self._light_thread.start()

    def close(self, transit_timeout_s: float) -> None:
        """Serve the parts in transit (up to `transit_timeout_s`), then release every device."""
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.stop(timeout_s=transit_timeout_s)
        if self._light_thread is not None:
            self._light_thread.join(timeout=2.0)
            self._light_thread = None
        self._close_devices()

    def light_ok(self) -> bool:
        return self.light is None or self.light.confirmed

    def count_light_fault(self) -> None:
        with self._lock:
            self._counters["light_faults"] += 1

    def register(self, part: Part, reference_ns: int, reference_counts: int | None = None) -> None:
        """Put a part on its way to the ejector; a station without a reject output ignores it.

        `reference_counts` is the encoder position the PLC latched for the part, when it sent one.
        """
        if self.scheduler is not None:
            self.scheduler.register(part, reference_ns, reference_counts)

    def next_trigger(self, timeout_s: float) -> tuple[TriggerEvent | None, int]:
        """Wait for the PLC's next part-present message; return it and how many triggers were missed before it."""
        event = self.plc_input.next_trigger(timeout_s)
        if event is None:
            return None, 0
        missed = 0
        if event.sequence is not None:
            if self._last_sequence is not None:
                if self.config.plc.protocol == "modbus_rtu":
                    missed = (event.sequence - self._last_sequence - 1) % _MODBUS_COUNTER_MODULUS
                elif event.sequence > self._last_sequence:
                    missed = event.sequence - self._last_sequence - 1
                else:
                    log.warning("the PLC's part counter went back; counting starts again",
                                previous=self._last_sequence, sequence=event.sequence)
            self._last_sequence = event.sequence
        with self._lock:
            self._counters["triggers"] += 1
            self._counters["missed_triggers"] += missed
        if missed:
            log.warning("triggers missed", missed=missed, sequence=event.sequence)
        return event, missed

    def count_trigger_without_frame(self) -> None:
        with self._lock:
            self._counters["triggers_without_frame"] += 1

    def software_trigger(self) -> None:
        """Fire the light's strobe for a software trigger; raise LineIOError if it is not confirmed."""
        channel = self.config.light.trigger_channel if self.config.light is not None else None
        if self.light is not None and channel is not None:
            self.light.trigger(channel)
        with self._lock:
            self._counters["triggers"] += 1

    def describe(self, drain_recent: bool = False) -> dict:
        with self._lock:
            status: dict = {"trigger_mode": self.trigger_mode, "counters": dict(self._counters)}
        if self.light is not None:
            status["light"] = self.light.describe()
        if self.plc_input is not None:
            status["plc"] = self.plc_input.describe()
        if self.scheduler is not None:
            status["reject"] = self.scheduler.describe(drain_recent=drain_recent)
        return status

    # Light supervision

    def _apply_light(self) -> bool:
        try:
            self.light.apply(self.light_recipe)
            log.info("light recipe applied", recipe=self.light_recipe.name)
            return True
        except LineIOError as error:
            log.error("light recipe not confirmed; parts are rejected until it is", recipe=self.light_recipe.name, error=str(error))
            return False

    def _watch_light(self) -> None:
        interval_s = self.config.light.check_interval_s
        while not self._stop.wait(interval_s if self.light.confirmed else _LIGHT_RETRY_S):
            was_confirmed = self.light.confirmed
            try:
                confirmed = self.light.check()
            except LineIOError as error:
                confirmed = False
                if was_confirmed:
                    log.error("light controller lost; parts are rejected until the recipe is confirmed again", error=str(error))
            if confirmed and not was_confirmed:
                log.info("light recipe confirmed again", recipe=self.light_recipe.name)

    def _wait_for_encoder(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.plc_input.encoder_counts() is None:
            if time.monotonic() > deadline:
                log.warning("no encoder reading from the PLC yet; parts are rejected at once until one arrives")
                return
            time.sleep(0.01)

    def _close_devices(self) -> None:
        for device in (self.plc_input, self.reject_output, self.light):
            if device is None:
                continue
            try:
                device.close()
            except Exception as error:  # one failed close must not keep the other ports open
                log.warning("closing a line device failed", device=type(device).__name__, error=repr(error))
