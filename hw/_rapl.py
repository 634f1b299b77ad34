"""``rapl[:POWERCAP_ROOT]``: Intel/AMD RAPL package energy counters via Linux powercap.

Files (``POWERCAP_ROOT`` defaults to ``/sys/class/powercap``):

========================================= ============================================
path                                      contents
========================================= ============================================
``intel-rapl:N/name``                     ``package-N`` for a CPU package (also on AMD)
``intel-rapl:N/energy_uj``                cumulative energy, uJ, wraps
``intel-rapl:N/max_energy_range_uj``      the value at which energy_uj wraps to 0
``intel-rapl:N:M/``                       sub-domains (core, uncore, dram): *inside* N
``intel-rapl-mmio:N/``                    the same package through MMIO: a duplicate
``intel-rapl:N`` named ``psys``           the platform: contains the packages
========================================= ============================================

Only top-level ``package-*`` domains are summed, never a sub-domain, the MMIO duplicate or
psys, so no energy is counted twice. Each package counter is differenced with wraparound at
its own ``max_energy_range_uj`` (:func:`hw._integrator.counter_delta_j`); the sample's
``energy_j`` is the sum of the unwrapped counters since the meter first read them, kept
across reconnects so a gap is bridged by the counter itself.

Since Linux 5.10 (CVE-2020-8694, "Platypus") ``energy_uj`` is readable by root only.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass

from hw._integrator import EnergyIntegrator, counter_delta_j
from hw._meter import MeterConfig, PowerMeter
from hw._types import FrameError, MeterError, PowerSample

__all__ = ["RaplDomain", "RaplMeter", "discover_packages"]

_TOP_LEVEL = re.compile(r"^intel-rapl:\d+$")
PERMISSION_FIX = (
    "energy_uj is root-only since Linux 5.10 (CVE-2020-8694). Either run as root, or allow "
    "reading it: `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj` (until reboot), "
    "or permanently with a udev rule: SUBSYSTEM==\"powercap\", ACTION==\"add\", "
    "RUN+=\"/bin/chmod o+r /sys%p/energy_uj\""
)


@dataclass(frozen=True, slots=True)
class RaplDomain:
    name: str
    energy_path: str
    range_j: float  # wrap range


def _read_text(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def discover_packages(root: str) -> list[RaplDomain]:
    """Top-level package domains under a powercap root, in name order."""
    try:
        entries = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if not _TOP_LEVEL.match(entry):
            continue
        d = os.path.join(root, entry)
        try:
            name = _read_text(os.path.join(d, "name"))
            range_uj = int(_read_text(os.path.join(d, "max_energy_range_uj")))
        except (OSError, ValueError):
            continue
        if name.startswith("package"):
            out.append(RaplDomain(name, os.path.join(d, "energy_uj"), range_uj * 1e-6))
    return out


def read_energy_j(domain: RaplDomain) -> float:
    """One counter reading in joules; PermissionError becomes MeterError naming the fix."""
    try:
        text = _read_text(domain.energy_path)
    except PermissionError as err:
        raise MeterError(f"cannot read {domain.energy_path}: {PERMISSION_FIX}") from err
    try:
        return int(text) * 1e-6
    except ValueError as err:  # an empty or torn read: skip this reading
        raise FrameError(f"{domain.energy_path}: {text!r} is not a counter") from err


class RaplMeter(PowerMeter):
    """``rapl``: sum of the package counters; power is the counter's slope between reads."""

    kind = "rapl"

    def __init__(self, *, powercap_root: str = "/sys/class/powercap",
                 config: MeterConfig | None = None) -> None:
        super().__init__(config=config)
        self.powercap_root = powercap_root
        self._domains: list[RaplDomain] = []
        self._raw_j: dict[str, float] = {}  # energy_path -> last raw counter, J
        self._total_j = 0.0  # unwrapped sum since the first read
        self._last_t_s: float | None = None

    def _make_integrator(self) -> EnergyIntegrator:
        # The device unwraps each package, so the summed counter never wraps.
        return EnergyIntegrator(max_gap_s=self.config.gap_s, history_s=self.config.history_s,
                                counter_range_j=math.inf)

    def describe(self) -> str:
        return self.powercap_root

    def _discover(self) -> list[RaplDomain]:
        domains = discover_packages(self.powercap_root)
        if not domains:
            raise MeterError(
                f"no RAPL package domain under {self.powercap_root} (intel-rapl:N with name "
                f"package-N): no RAPL on this CPU, or the intel_rapl_common module is not "
                f"loaded (`sudo modprobe intel_rapl_msr`)"
            )
        for d in domains:
            read_energy_j(d)
        return domains

    def _device_probe(self) -> None:
        self._discover()

    def _device_open(self) -> None:
        self._domains = self._discover()
        t_s = time.monotonic()
        for d in self._domains:
            if d.energy_path not in self._raw_j:  # keep old baselines: bridge the gap
                self._raw_j[d.energy_path] = read_energy_j(d)
        if self._last_t_s is None:
            self._last_t_s = t_s

    def _device_read(self) -> list[PowerSample]:
        t_s = time.monotonic()
        delta_j = 0.0
        for d in self._domains:
            raw = read_energy_j(d)
            delta = counter_delta_j(self._raw_j[d.energy_path], raw, d.range_j)
            self._raw_j[d.energy_path] = raw
            delta_j += delta if delta is not None else 0.0
        assert self._last_t_s is not None
        dt = t_s - self._last_t_s
        self._last_t_s = t_s
        self._total_j += delta_j
        power_w = delta_j / dt if dt > 0 else 0.0
        return [PowerSample(t_s=t_s, power_w=power_w, energy_j=self._total_j)]

    def _device_close(self) -> None:
        self._domains = []
