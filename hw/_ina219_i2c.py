"""``ina219-i2c:BUS:ADDR``: an INA219 on the host's own I2C bus (a Pi's GPIO 2/3), via smbus2.

The sampling logic is the firmware's :class:`hw.firmware.main.Bridge`, unchanged: this module
only adapts an smbus2 ``SMBus`` to the MicroPython ``readfrom_mem``/``writeto_mem`` calls the
firmware makes, and feeds it ``time.monotonic`` microseconds. So the calibration, the
conversion-ready and overflow handling and the periodic re-calibration are the same code on
the Pico and on the Pi. INA219 registers are big-endian, hence block reads, not
``read_word_data`` (which is little-endian).

``smbus2`` is an optional dependency (``pip install coinfer[i2c]``), imported on open.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from hw._ina219_serial import decode_line
from hw._meter import MeterConfig, PowerMeter
from hw._types import FrameError, MeterError, PowerSample
from hw.firmware import main as firmware

__all__ = ["Ina219I2cMeter", "SMBusAdapter"]

POLL_SLEEP_S = 0.0005  # s between conversion-ready polls


class SMBusAdapter:
    """MicroPython ``machine.I2C`` memory calls on top of an smbus2-style bus."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus

    def readfrom_mem(self, addr: int, reg: int, n: int) -> bytes:
        return bytes(self.bus.read_i2c_block_data(addr, reg, n))

    def writeto_mem(self, addr: int, reg: int, buf: bytes) -> None:
        self.bus.write_i2c_block_data(addr, reg, list(buf))


def _open_smbus(bus_number: int) -> Any:
    try:
        import smbus2
    except ImportError as err:
        raise MeterError(
            "the ina219-i2c meter needs smbus2: pip install smbus2 (or coinfer[i2c])"
        ) from err
    try:
        return smbus2.SMBus(bus_number)
    except FileNotFoundError as err:
        raise MeterError(
            f"/dev/i2c-{bus_number} does not exist: enable I2C (raspi-config > Interface "
            f"Options > I2C, or dtparam=i2c_arm=on in config.txt)"
        ) from err
    except PermissionError as err:
        raise MeterError(
            f"no permission for /dev/i2c-{bus_number}: `sudo usermod -aG i2c $USER`"
        ) from err


def _ticks_us() -> int:
    return int(time.monotonic() * 1e6)


def _ticks_diff(a: int, b: int) -> int:
    return a - b


class Ina219I2cMeter(PowerMeter):
    """INA219 over smbus2; ``bus`` (an smbus2-like object) may be given instead of a number."""

    kind = "ina219-i2c"
    streaming = True

    def __init__(self, *, bus_number: int = 1, addr: int = firmware.ADDR,
                 shunt_ohm: float = firmware.SHUNT_OHM,
                 max_current_a: float = firmware.MAX_CURRENT_A,
                 config: MeterConfig | None = None, bus: Any = None) -> None:
        super().__init__(config=config)
        self.bus_number = bus_number
        self.addr = addr
        self.shunt_ohm = shunt_ohm
        self.max_current_a = max_current_a
        self._given_bus = bus
        self._bus: Any = None
        self._bridge: firmware.Bridge | None = None

    def describe(self) -> str:
        return f"i2c-{self.bus_number}@0x{self.addr:02x}"

    def _device_probe(self) -> None:
        if self._given_bus is None:
            _open_smbus(self.bus_number).close()

    def _device_open(self) -> None:
        self._bus = self._given_bus if self._given_bus is not None else _open_smbus(
            self.bus_number)
        try:
            self._bridge = firmware.Bridge(
                SMBusAdapter(self._bus), _ticks_us, _ticks_diff, addr=self.addr,
                shunt_ohm=self.shunt_ohm, max_current_a=self.max_current_a,
                rate_hz=self.config.poll_hz)
        except OSError as err:
            raise MeterError(f"no INA219 answers at {self.describe()}: {err}") from err

    def _device_read(self) -> list[PowerSample]:
        bridge = self._bridge
        if bridge is None:
            raise MeterError("INA219 not open")
        deadline_s = time.monotonic() + self.config.timeout_s
        offset_s = bridge.origin_ticks * 1e-6  # the bridge's clock is monotonic, shifted
        while time.monotonic() < deadline_s:
            line = bridge.step()
            if line is None:
                time.sleep(POLL_SLEEP_S)
                continue
            decoded = decode_line(line.encode())  # raises FrameError for "! ovf"
            if decoded is None:  # "# recalibrated": logged by the base as nothing
                continue
            device_s, power_w, voltage_v, current_a = decoded
            return [PowerSample(t_s=device_s + offset_s, power_w=power_w, voltage_v=voltage_v,
                                current_a=current_a)]
        raise FrameError(f"no conversion ready in {self.config.timeout_s:g} s")

    def _device_close(self) -> None:
        bus, self._bus = self._bus, None
        self._bridge = None
        if bus is not None and bus is not self._given_bus:
            with contextlib.suppress(OSError):
                bus.close()
