"""The INA219 at register level, and a Pico running the real firmware on it into a pty."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from typing import ClassVar

from hw_emulators import DeviceThread, PtyPort, Trace, junk

# -- INA219 chip ---------------------------------------------------------------------------------


class Ina219Chip:
    """The INA219 at register level (datasheet SBOS448), driven by a trace.

    Conversions complete every ``conversion_time`` after the configuration was written; each
    sets the shunt and bus registers from the trace at the conversion's middle and, when the
    calibration is non-zero, current and power exactly as the chip computes them. Reading the
    power register clears CNVR. ``reset()`` is a brown-out: all registers to power-on values.
    ``overload_until_s`` forces a shunt overflow (OVF) until that monotonic time.
    """

    # ADC code -> conversion time in us (datasheet table 5)
    CONV_US: ClassVar[dict[int, int]] = {
        0x8: 532, 0x9: 1060, 0xA: 2130, 0xB: 4260, 0xC: 8510, 0xD: 17020, 0xE: 34050,
        0xF: 68100, 0: 84, 1: 148, 2: 276, 3: 532}

    def __init__(self, trace: Trace, shunt_ohm: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.trace = trace
        self.shunt_ohm = shunt_ohm
        self.clock = clock
        self.lock = threading.Lock()
        self.overload_until_s = 0.0
        self.reads = 0
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.regs = {0: 0x399F, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0}
            self._conv_start = self.clock()
            self._conversions = 0

    def _conv_s(self) -> float:
        cfg = self.regs[0]
        return (self.CONV_US[(cfg >> 7) & 0xF] + self.CONV_US[(cfg >> 3) & 0xF]) * 1e-6

    def _update(self) -> None:
        now = self.clock()
        conv = self._conv_s()
        k = int((now - self._conv_start) / conv)
        if k <= self._conversions:
            return
        self._conversions = k
        t_mid = self._conv_start + (k - 0.5) * conv
        cfg = self.regs[0]
        pga_v = 0.04 * (1 << ((cfg >> 11) & 0x3))
        shunt_v = self.trace.current_a(t_mid) * self.shunt_ohm
        overflow = abs(shunt_v) > pga_v or t_mid < self.overload_until_s
        shunt = max(-32768, min(32767, round(shunt_v / 10e-6)))
        bus = round(self.trace.voltage_v / 4e-3)
        cal = self.regs[5]
        current = int(shunt * cal / 4096)
        power = int(abs(current) * bus / 5000)
        if current > 32767 or current < -32768 or power > 0xFFFF:
            overflow = True
        self.regs[1] = shunt & 0xFFFF
        self.regs[2] = (bus << 3) | 0x2 | (1 if overflow else 0)
        self.regs[4] = max(-32768, min(32767, current)) & 0xFFFF
        self.regs[3] = min(power, 0xFFFF)

    def read_reg(self, reg: int) -> int:
        with self.lock:
            self.reads += 1
            self._update()
            value = self.regs[reg]
            if reg == 3:
                self.regs[2] &= ~0x2  # reading power clears CNVR
            return value

    def write_reg(self, reg: int, value: int) -> None:
        with self.lock:
            if reg == 0:
                if value & 0x8000:
                    self.regs = {0: 0x399F, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0}
                else:
                    self.regs[0] = value
                self._conv_start, self._conversions = self.clock(), 0
                self.regs[2] &= ~0x2
            elif reg == 5:
                self.regs[5] = value & 0xFFFE  # bit 0 is void
            else:
                raise OSError(5, "write to a read-only INA219 register")

    # MicroPython machine.I2C memory calls (what the firmware uses)
    def readfrom_mem(self, addr: int, reg: int, n: int) -> bytes:
        assert addr == 0x40 and n == 2
        return struct.pack(">H", self.read_reg(reg))

    def writeto_mem(self, addr: int, reg: int, buf: bytes) -> None:
        assert addr == 0x40 and len(buf) == 2
        self.write_reg(reg, struct.unpack(">H", buf)[0])

    # smbus2 block calls (what ina219-i2c uses)
    def read_i2c_block_data(self, addr: int, reg: int, n: int) -> list[int]:
        return list(self.readfrom_mem(addr, reg, n))

    def write_i2c_block_data(self, addr: int, reg: int, data: list[int]) -> None:
        self.writeto_mem(addr, reg, bytes(data))


class PicoBridgeDevice(DeviceThread):
    """The real firmware's Bridge on an emulated chip, streaming into a pty like a Pico.

    ``inject`` maps a 0-based line number to a fault written *instead of* going on normally
    at that point: ``garbage``, ``short`` (a truncated line), ``badcrc``, ``unplug``,
    ``brownout`` (chip reset: the firmware must notice and recalibrate), ``overload`` (OVF
    for 60 ms).
    """

    def __init__(self, port: PtyPort, chip: Ina219Chip, *, rate_hz: float = 50.0,
                 inject: dict[int, str] | None = None, unplug_s: float = 0.4) -> None:
        super().__init__(port, "pico")
        from hw.firmware import main as firmware

        self.chip = chip
        self.bridge = firmware.Bridge(chip, lambda: int(time.monotonic() * 1e6),
                                      lambda a, b: a - b, rate_hz=rate_hz,
                                      shunt_ohm=chip.shunt_ohm)
        self.inject = dict(inject or {})
        self.unplug_s = unplug_s
        self.lines = 0
        self.sent: list[str] = []
        self.commands: list[str] = []
        self.unplugged_at: tuple[float, float] | None = None
        self._cmd = b""
        self.port.write(self.bridge.banner().encode())

    def step(self) -> None:
        if self.port.plugged and self.wait_readable(0.0):
            self._cmd += self.port.read()
            while b"\n" in self._cmd:
                line, _, self._cmd = self._cmd.partition(b"\n")
                self.commands.append(line.decode())
                self.port.write(self.bridge.command(line.decode()).encode())
        fault = self.inject.pop(self.lines, None)
        if fault == "garbage":
            self.port.write(junk(40, seed=3))
        elif fault == "short":
            self.port.write(b"123456,5.1\n")
        elif fault == "badcrc":
            good = self._next_line()
            self.port.write(good.replace("*", "0*", 1).encode())
        elif fault == "unplug":
            self.port.unplug()
            t_un = time.monotonic()
            self._stop.wait(self.unplug_s)
            self.port.plug()
            self.unplugged_at = (t_un, time.monotonic())
        elif fault == "brownout":
            self.chip.reset()
        elif fault == "overload":
            self.chip.overload_until_s = time.monotonic() + 0.06
        line = self.bridge.step()
        if line is None:
            time.sleep(0.0005)
            return
        if line[0].isdigit():
            self.lines += 1
        self.sent.append(line)
        self.port.write(line.encode())

    def _next_line(self) -> str:
        while True:
            line = self.bridge.step()
            if line is not None and line[0].isdigit():
                self.lines += 1
                return line
            time.sleep(0.0005)
