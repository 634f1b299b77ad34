"""Serial-port plumbing shared by the USB/Bluetooth meters (pyserial, blocking, one thread).

:class:`SerialMeter` opens the port in ``_device_open``, drops stale input, closes it in
``_device_close`` and cancels a blocking read on close. OS and pyserial errors become
:class:`MeterError` with a hint a user can act on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from typing import TYPE_CHECKING, Any

from hw._meter import MeterConfig, PowerMeter
from hw._types import FrameError, MeterError

if TYPE_CHECKING:
    import serial

__all__ = ["SerialMeter", "open_port", "read_exact"]


def _import_serial() -> Any:
    try:
        import serial
    except ImportError as err:  # pragma: no cover - pyserial is a core dependency
        raise MeterError("serial meters need pyserial: pip install pyserial") from err
    return serial


def open_port(path: str, *, baudrate: int, timeout_s: float) -> serial.Serial:
    """Open ``path`` raw 8N1 at ``baudrate``; map failures onto MeterError with a hint."""
    serial_mod = _import_serial()
    if not os.path.exists(path):
        raise MeterError(
            f"serial port {path} does not exist (unplugged? for a Bluetooth meter bind it "
            f"first, e.g. `sudo rfcomm bind 0 AA:BB:CC:DD:EE:FF`)"
        )
    try:
        port = serial_mod.Serial(path, baudrate=baudrate, timeout=timeout_s,
                                 write_timeout=timeout_s)
    except serial_mod.SerialException as err:
        cause = err.__context__ if isinstance(err.__context__, OSError) else None
        code = getattr(err, "errno", None) or getattr(cause, "errno", None)
        if code in (errno.EACCES, errno.EPERM):
            raise MeterError(
                f"no permission to open {path}: add yourself to its group "
                f"(`sudo usermod -aG dialout $USER`, then log in again)"
            ) from err
        raise MeterError(f"cannot open {path}: {err}") from err
    port.reset_input_buffer()
    return port


def read_exact(port: serial.Serial, n: int, deadline_s: float) -> bytes:
    """Read exactly ``n`` bytes before monotonic ``deadline_s`` or raise FrameError."""
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline_s - time.monotonic()
        if remaining <= 0:
            raise FrameError(f"timed out after {len(buf)} of {n} bytes")
        port.timeout = remaining
        chunk = port.read(n - len(buf))
        if not chunk and time.monotonic() < deadline_s:
            # pyserial returns early only when cancel_read() was called: we are closing.
            raise FrameError("read cancelled")
        buf += chunk
    return bytes(buf)


class SerialMeter(PowerMeter):
    """A meter on a serial port (``/dev/ttyUSB0``, ``/dev/rfcomm0``, a pty in tests)."""

    baudrate: int = 9600

    def __init__(self, *, port: str, config: MeterConfig | None = None,
                 baudrate: int | None = None) -> None:
        super().__init__(config=config)
        self.port_path = port
        if baudrate is not None:
            self.baudrate = baudrate
        self._port: serial.Serial | None = None

    def describe(self) -> str:
        return self.port_path

    def _device_open(self) -> None:
        self._port = open_port(self.port_path, baudrate=self.baudrate,
                               timeout_s=self.config.timeout_s)

    def _device_close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(OSError):
                port.close()

    def _device_interrupt(self) -> None:
        port = self._port
        if port is not None and hasattr(port, "cancel_read"):
            with contextlib.suppress(OSError):
                port.cancel_read()

    @property
    def port(self) -> serial.Serial:
        if self._port is None:
            raise MeterError(f"{self.port_path} is not open")
        return self._port

    def _flush_input(self) -> None:
        """Drop whatever is buffered after a bad frame, so the next request starts clean."""
        try:
            self.port.reset_input_buffer()
        except OSError as err:
            raise MeterError(f"{self.port_path}: {err}") from err
