"""``jetson[:SYSFS_ROOT]``: the INA3221 power monitors on NVIDIA Jetson boards, via sysfs.

Two kernel interfaces, found under ``SYSFS_ROOT`` (default ``/sys``; tests point it at a tree):

=========== ===================================================== ==========================
JetPack     files per rail (n = channel)                          units
=========== ===================================================== ==========================
5, 6 hwmon  ``class/hwmon/hwmon*/`` (``name`` = ``ina3221``) or   ``in*_input`` mV,
            ``bus/i2c/drivers/ina3221/*/hwmon/hwmon*/``:          ``curr*_input`` mA
            ``in{n}_label``, ``in{n}_input``, ``curr{n}_input``
4 iio       ``bus/i2c/drivers/ina3221x/*/iio:device*/`` or        ``in_power*`` mW,
            ``bus/iio/devices/iio:device*/``: ``rail_name_{n}``,  ``in_voltage*`` mV,
            ``in_power{n}_input``, ``in_voltage{n}_input``,       ``in_current*`` mA
            ``in_current{n}_input``
=========== ===================================================== ==========================

Board power is the input rail when the board has one (``VDD_IN`` on Orin and Xavier,
``POM_5V_IN`` on the Nano), otherwise the sum of all rails (which then misses the losses of
the regulators in front of them).
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass

from hw._meter import MeterConfig, PowerMeter
from hw._types import FrameError, MeterError, PowerSample

__all__ = ["JetsonMeter", "Rail", "RailFiles", "combine_rails", "discover_rails"]

TOTAL_RAIL_NAMES = ("VDD_IN", "POM_5V_IN")  # whole-board input rails
HWMON_CHANNELS = range(1, 9)
IIO_CHANNELS = range(0, 8)


@dataclass(frozen=True, slots=True)
class RailFiles:
    """Where one rail's readings live. Exactly one of ``power_path`` (mW) or the pair
    ``voltage_path`` (mV) + ``current_path`` (mA) is enough; iio has all three."""

    name: str
    voltage_path: str | None
    current_path: str | None
    power_path: str | None = None


@dataclass(frozen=True, slots=True)
class Rail:
    name: str
    power_w: float
    voltage_v: float | None
    current_a: float | None


def _read_text(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def _read_int(path: str) -> int:
    return int(_read_text(path))


def _hwmon_dirs(root: str) -> list[str]:
    dirs = glob.glob(os.path.join(root, "bus/i2c/drivers/ina3221/*/hwmon/hwmon*"))
    for d in glob.glob(os.path.join(root, "class/hwmon/hwmon*")):
        try:
            if _read_text(os.path.join(d, "name")) == "ina3221":
                dirs.append(d)
        except OSError:
            continue
    return dirs


def _iio_dirs(root: str) -> list[str]:
    return glob.glob(os.path.join(root, "bus/i2c/drivers/ina3221x/*/iio:device*")) + glob.glob(
        os.path.join(root, "bus/iio/devices/iio:device*"))


def discover_rails(root: str) -> list[RailFiles]:
    """All INA3221 rails under a sysfs root, hwmon and iio, each device once."""
    rails: list[RailFiles] = []
    seen: set[str] = set()
    for d in _hwmon_dirs(root):
        real = os.path.realpath(d)
        if real in seen:
            continue
        seen.add(real)
        for n in HWMON_CHANNELS:
            label, volt, curr = (os.path.join(d, f) for f in
                                 (f"in{n}_label", f"in{n}_input", f"curr{n}_input"))
            if os.path.exists(label) and os.path.exists(volt) and os.path.exists(curr):
                name = _read_text(label)
                if not name.lower().startswith("sum of"):
                    rails.append(RailFiles(name, volt, curr))
    for d in _iio_dirs(root):
        real = os.path.realpath(d)
        if real in seen:
            continue
        seen.add(real)
        for n in IIO_CHANNELS:
            name_path = os.path.join(d, f"rail_name_{n}")
            power = os.path.join(d, f"in_power{n}_input")
            if not (os.path.exists(name_path) and os.path.exists(power)):
                continue
            volt = os.path.join(d, f"in_voltage{n}_input")
            curr = os.path.join(d, f"in_current{n}_input")
            rails.append(RailFiles(_read_text(name_path),
                                   volt if os.path.exists(volt) else None,
                                   curr if os.path.exists(curr) else None, power))
    return rails


def read_rail(files: RailFiles) -> Rail:
    """One reading of a rail (blocking file reads; raises OSError or ValueError)."""
    v = _read_int(files.voltage_path) * 1e-3 if files.voltage_path else None
    i = _read_int(files.current_path) * 1e-3 if files.current_path else None
    if files.power_path is not None:
        p = _read_int(files.power_path) * 1e-3
    elif v is not None and i is not None:
        p = v * i
    else:
        raise ValueError(f"rail {files.name} has neither power nor voltage and current")
    return Rail(files.name, p, v, i)


def combine_rails(rails: list[Rail], t_s: float) -> PowerSample:
    """Board power at ``t_s``: the input rail if present, otherwise the sum of the rails."""
    for name in TOTAL_RAIL_NAMES:
        for r in rails:
            if r.name == name:
                return PowerSample(t_s=t_s, power_w=r.power_w, voltage_v=r.voltage_v,
                                   current_a=r.current_a)
    return PowerSample(t_s=t_s, power_w=sum(r.power_w for r in rails))


class JetsonMeter(PowerMeter):
    """``jetson[:SYSFS_ROOT]``: INA3221 rails, board total as above."""

    kind = "jetson"

    def __init__(self, *, sysfs_root: str = "/sys", config: MeterConfig | None = None) -> None:
        super().__init__(config=config)
        self.sysfs_root = sysfs_root
        self._rails: list[RailFiles] = []

    def describe(self) -> str:
        return self.sysfs_root

    def _discover(self) -> list[RailFiles]:
        rails = discover_rails(self.sysfs_root)
        if not rails:
            raise MeterError(
                f"no INA3221 rails under {self.sysfs_root}: looked for hwmon "
                f"(class/hwmon/*/name = ina3221, JetPack 5/6) and iio "
                f"(bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*, JetPack 4); "
                f"is this a Jetson?"
            )
        try:
            for r in rails:
                read_rail(r)
        except PermissionError as err:
            raise MeterError(f"cannot read {err.filename}: run as a user that may read the "
                             f"INA3221 sysfs files (e.g. root)") from err
        return rails

    def _device_probe(self) -> None:
        self._discover()

    def _device_open(self) -> None:
        self._rails = self._discover()

    def _device_read(self) -> list[PowerSample]:
        t_s = time.monotonic()
        try:
            rails = [read_rail(r) for r in self._rails]
        except ValueError as err:  # a half-written or empty attribute: skip this reading
            raise FrameError(str(err)) from err
        return [combine_rails(rails, t_s)]

    def _device_close(self) -> None:
        self._rails = []
