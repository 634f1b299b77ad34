"""``ina219-serial:PORT``: an INA219 read by a Pico running ``hw/firmware/main.py``.

The device streams lines (``hw/firmware/ina219.py`` defines them):

========================================== ==================================================
line                                       meaning
========================================== ==================================================
``t_us,bus_V,current_mA,power_mW*CCCC``    one sample; CCCC = CRC-16/MODBUS of the text
``# ...``                                  information (banner, settings, recalibration)
``! ...``                                  a device-side fault (``! ovf``), no sample
========================================== ==================================================

Timestamps: the device's microsecond clock is mapped onto ``time.monotonic()`` by
:class:`ClockMapper` (offset = the smallest ``host_receive - device_time`` over a sliding
window: the line that waited least in USB buffers), so samples that arrive in one USB packet
keep their own times. A device clock that jumps back (the Pico rebooted) restarts the map.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from hw._meter import MeterConfig
from hw._serial import SerialMeter
from hw._types import FrameError, PowerSample
from hw.firmware import ina219

__all__ = ["ClockMapper", "Ina219SerialMeter", "decode_line"]

_LOG = logging.getLogger("hw")

CLOCK_WINDOW = 256  # lines in the offset estimator's window (5 s at 50 Hz)
CLOCK_JUMP_S = 10.0  # s; a device clock jumping more than this (or back) restarts the map


def decode_line(line: bytes) -> tuple[float, float, float, float] | None:
    """``(device_s, power_w, voltage_v, current_a)`` from one line, None for ``#`` lines.

    Raises FrameError for a malformed line, a bad checksum or a ``!`` fault line.
    """
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError as err:
        raise FrameError("non-ASCII bytes in line") from err
    if not text or text.startswith("#"):
        return None
    if text.startswith("!"):
        raise FrameError(f"device reports: {text[1:].strip()}")
    try:
        t_us, bus_v, current_ma, power_mw = ina219.parse_line(text)
    except ValueError as err:
        raise FrameError(f"bad line {text[:40]!r}: {err}") from err
    return t_us * 1e-6, power_mw * 1e-3, bus_v, current_ma * 1e-3


class ClockMapper:
    """Maps a device clock (seconds) onto the host's monotonic clock. Pure: time is passed in."""

    def __init__(self, window: int = CLOCK_WINDOW) -> None:
        self._offsets: deque[float] = deque(maxlen=window)
        self._last_device_s: float | None = None

    def reset(self) -> None:
        self._offsets.clear()
        self._last_device_s = None

    def map(self, device_s: float, received_s: float) -> float:
        """Host time of a device timestamp received at ``received_s`` (never after it)."""
        last = self._last_device_s
        if last is not None and not (last <= device_s <= last + CLOCK_JUMP_S):
            self.reset()
        self._last_device_s = device_s
        self._offsets.append(received_s - device_s)
        return min(device_s + min(self._offsets), received_s)


class Ina219SerialMeter(SerialMeter):
    """``ina219-serial:PORT``: parse the Pico bridge's stream.

    On every (re)connect the driver sends ``rate`` (``rate_hz``, default ``poll_hz``) and,
    if given, ``shunt``, so the device streams what the host expects.
    """

    kind = "ina219-serial"
    streaming = True
    baudrate = 115200  # ignored by USB CDC, kept for USB-UART bridges

    def __init__(self, *, port: str, config: MeterConfig | None = None,
                 rate_hz: float | None = None, shunt_ohm: float | None = None,
                 max_current_a: float | None = None, baudrate: int | None = None) -> None:
        super().__init__(port=port, config=config, baudrate=baudrate)
        if (shunt_ohm is None) != (max_current_a is None):
            raise ValueError("give shunt_ohm and max_a together")
        self.rate_hz = rate_hz if rate_hz is not None else self.config.poll_hz
        self.shunt = (shunt_ohm, max_current_a) if shunt_ohm is not None else None
        self._clock = ClockMapper()
        self._buf = bytearray()

    def _device_open(self) -> None:
        super()._device_open()
        self._clock.reset()
        self._buf.clear()
        commands = []
        if self.shunt is not None:
            commands.append(f"shunt {self.shunt[0]:g} {self.shunt[1]:g}\n")
        # Always set the rate, so the gap threshold (from poll_hz) matches the stream.
        commands.append(f"rate {self.rate_hz:g}\n")
        for c in commands:
            self.port.write(c.encode())

    def _device_read(self) -> list[PowerSample]:
        port = self.port
        deadline_s = time.monotonic() + self.config.timeout_s
        samples: list[PowerSample] = []
        error: FrameError | None = None
        skipped = 0  # bad lines among good ones: counted here, not raised
        while not samples:
            remaining = deadline_s - time.monotonic()
            if remaining <= 0:
                self.bad_frames += max(0, skipped - 1)  # the raised one is counted by the base
                raise error or FrameError(f"no sample line in {self.config.timeout_s:g} s")
            port.timeout = remaining
            chunk = port.read(max(1, port.in_waiting))
            received_s = time.monotonic()
            if not chunk:
                if received_s < deadline_s:
                    raise FrameError("read cancelled")
                continue
            self._buf += chunk
            while (nl := self._buf.find(b"\n")) >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                try:
                    decoded = decode_line(line)
                except FrameError as err:
                    error, skipped = err, skipped + 1
                    _LOG.debug("ina219-serial: skipped a line: %s", err)
                    continue
                if decoded is None:
                    continue
                device_s, power_w, voltage_v, current_a = decoded
                t_s = self._clock.map(device_s, received_s)
                samples.append(PowerSample(t_s=t_s, power_w=power_w, voltage_v=voltage_v,
                                           current_a=current_a))
            if len(self._buf) > ina219.MAX_LINE_BYTES:  # garbage without a newline
                self._buf.clear()
                error, skipped = FrameError("line too long: garbage on the port"), skipped + 1
        self.bad_frames += skipped
        return samples
