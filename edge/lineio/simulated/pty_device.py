"""A simulated serial device on a pseudo-terminal pair.

The station opens the pty's slave end exactly like a USB serial adapter, and the simulated device
reads and writes the master end in its own thread. `alias` is a symlink that plays the part of a
`/dev/serial/by-id/` name. `replug` closes the pty, so the station sees the port fail as when a
USB adapter is pulled, and recreates it under a new device name with the alias moved to it.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

_POLL_S = 0.05


class PtyDevice:
    """Base of the simulated devices: owns the pty pair and a reader thread.

    Subclasses implement `handle(data)`, which receives every chunk of bytes the station wrote
    and replies with `send`. `received` keeps (monotonic_ns, bytes) for every chunk, so tests can
    assert the exact bytes on the wire.
    """

    def __init__(self, name: str, alias: Path | str | None = None) -> None:
        self.name = name
        self.alias = Path(alias) if alias is not None else None
        self.received: list[tuple[int, bytes]] = []
        self.silent = threading.Event()  # set: the device stops replying, as when it is switched off
        # SCHED_FIFO priority of the reader thread, where allowed. A real device runs on its own
        # hardware; the priority keeps the timestamps in `received` from waiting on other load.
        self.realtime_priority: int | None = None
        self._lock = threading.Lock()
        self._master_fd: int | None = None
        self._slave_fd: int | None = None
        self._slave_path: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> str:
        """The path the station opens: the alias when there is one, else the pty's own name."""
        if self.alias is not None:
            return str(self.alias)
        if self._slave_path is None:
            raise RuntimeError(f"simulated {self.name} is not started; call start() first")
        return self._slave_path

    @property
    def device_path(self) -> str | None:
        """The pty's current device name, such as /dev/pts/7."""
        return self._slave_path

    def start(self) -> PtyDevice:
        self._create_pty()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=f"sim-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self._close_pty()
        if self.alias is not None and self.alias.is_symlink():
            self.alias.unlink()

    def replug(self, downtime_s: float = 0.0) -> str:
        """Close the pty, wait `downtime_s`, then recreate it under a new name; return that name."""
        with self._lock:
            old_fds = (self._master_fd, self._slave_fd)
            self._master_fd = self._slave_fd = None
            for fd in old_fds:
                if fd is not None:
                    os.close(fd)
        if self.alias is not None and self.alias.is_symlink():
            self.alias.unlink()
        time.sleep(downtime_s)
        old_path = self._slave_path
        # The kernel may hand out the freed pty number again. Such ptys are kept open until a new
        # one has another name, as a re-plugged USB adapter often does.
        held: list[tuple[int, int]] = []
        try:
            while True:
                master_fd, slave_fd = os.openpty()
                if os.ttyname(slave_fd) != old_path:
                    break
                held.append((master_fd, slave_fd))
        finally:
            for pair in held:
                os.close(pair[0])
                os.close(pair[1])
        self._install_pty(master_fd, slave_fd)
        log.info("simulated device replugged", device=self.name, port=self._slave_path)
        return self._slave_path

    def send(self, data: bytes) -> None:
        """Write bytes to the station; dropped while the device is silent or unplugged."""
        if self.silent.is_set():
            return
        with self._lock:
            if self._master_fd is None:
                return
            try:
                os.write(self._master_fd, data)
            except OSError:
                pass

    def handle(self, data: bytes) -> None:
        """Process bytes from the station; the base device only records them."""

    def __enter__(self) -> PtyDevice:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _create_pty(self) -> None:
        self._install_pty(*os.openpty())

    def _install_pty(self, master_fd: int, slave_fd: int) -> None:
        # Raw and without echo from the start: bytes sent before the station configures the port
        # must arrive unchanged and must not bounce back to the device.
        tty.setraw(slave_fd)
        with self._lock:
            self._master_fd, self._slave_fd = master_fd, slave_fd
            self._slave_path = os.ttyname(slave_fd)
        if self.alias is not None:
            staging = self.alias.with_name(self.alias.name + ".new")
            if staging.is_symlink() or staging.exists():
                staging.unlink()
            staging.symlink_to(self._slave_path)
            os.replace(staging, self.alias)

    def _close_pty(self) -> None:
        with self._lock:
            for fd in (self._master_fd, self._slave_fd):
                if fd is not None:
                    os.close(fd)
            self._master_fd = self._slave_fd = None

    def _serve(self) -> None:
        if self.realtime_priority is not None and hasattr(os, "sched_setscheduler"):
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.realtime_priority))
            except OSError:
                log.debug("simulated device runs at normal priority", device=self.name)
        while not self._stop.is_set():
            master_fd = self._master_fd
            if master_fd is None:
                time.sleep(_POLL_S / 5)
                continue
            try:
                ready, _, _ = select.select([master_fd], [], [], _POLL_S)
                if not ready:
                    continue
                data = os.read(master_fd, 4096)
            except (OSError, ValueError):
                # The pty was closed by replug or stop between the select and the read.
                time.sleep(_POLL_S / 5)
                continue
            if not data:
                continue
            self.received.append((time.monotonic_ns(), data))
            if not self.silent.is_set():
                try:
                    self.handle(data)
                except Exception as error:  # a broken simulation must not kill its reader thread
                    log.error("simulated device failed to handle bytes", device=self.name, error=repr(error))

    def received_bytes(self) -> bytes:
        """Everything the station has written so far, concatenated."""
        return b"".join(chunk for _, chunk in self.received)
