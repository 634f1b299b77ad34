"""``sim[:key=value,...]``: a power model for machines with no meter. Labelled *modelled*.

    P(t) = idle_w + core_w * busy_cores(t)
    E    = integral of P  +  tx_j_per_byte * tx_bytes + tx_j_per_packet * tx_packets
                          +  rx_j_per_byte * rx_bytes + rx_j_per_packet * rx_packets

``busy_cores``, bytes and packets come from the :class:`~hw.Activity` the client updates
(packets = ceil(bytes / 1460) per message). Energy over a window is computed from the
Activity's exact change log, so a busy block shorter than a sample period is counted in
full; the 50 Hz samples only feed the live readout, ``latest`` and coverage.

Defaults: a Raspberry Pi 5 class board, from docs/hardware-profiles.md section 3:

* ``idle_w = 3.3``: row "Pi 4 / Pi 5 idle | ~0.5 A / ~0.65 A | USB tester" [P3], 0.65 A at
  the 5.1 V of the official supply. (The 1.8 W [P5] and 4-5 W [P7] rows bracket it.)
* ``core_w = 2.175``: row "Pi 5 16GB, HPL full load | 12.0 W" [P5], all 4 cores busy:
  (12.0 - 3.3) / 4 W per busy core.
* radio: row "802.11 radio energy (generic, old 2 Mbit/s card) | ... send 1.9 uJ/B + 420
  uJ/packet; receive 0.42 uJ/B + 330 uJ" [W4], the only per-byte radio figures there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from hw._activity import Activity, ActivityCounters
from hw._integrator import EnergyIntegrator
from hw._meter import MeterConfig, PowerMeter
from hw._types import PowerSample

__all__ = ["SimMeter", "SimModel"]

SIM_POLL_HZ = 50.0  # Hz, default sample rate


@dataclass(frozen=True, slots=True, kw_only=True)
class SimModel:
    """Model parameters; each is a SPEC option (``sim:idle_w=2.7,core_w=1.1``)."""

    idle_w: float = 3.3  # W, [P3]
    core_w: float = 2.175  # W per busy core, [P5]
    tx_j_per_byte: float = 1.9e-6  # J, [W4]
    tx_j_per_packet: float = 420e-6  # J, [W4]
    rx_j_per_byte: float = 0.42e-6  # J, [W4]
    rx_j_per_packet: float = 330e-6  # J, [W4]

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{f.name} must be a finite number >= 0, got {v!r}")

    def energy_j(self, c: ActivityCounters) -> float:
        """Model energy from the Activity's creation up to ``c.t_s`` (idle from t=0)."""
        return (self.idle_w * c.t_s + self.core_w * c.busy_core_s
                + self.tx_j_per_byte * c.tx_bytes + self.tx_j_per_packet * c.tx_packets
                + self.rx_j_per_byte * c.rx_bytes + self.rx_j_per_packet * c.rx_packets)


class SimMeter(PowerMeter):
    """The ``sim`` meter: modelled (``measured = False``), exact for any window."""

    kind = "sim"
    measured = False

    def __init__(self, *, model: SimModel | None = None, activity: Activity | None = None,
                 config: MeterConfig | None = None) -> None:
        super().__init__(config=config or MeterConfig(poll_hz=SIM_POLL_HZ))
        self.model = model or SimModel()
        self.activity = activity if activity is not None else Activity()
        self._last: tuple[float, float] | None = None  # (t_s, model energy)

    def _make_integrator(self) -> EnergyIntegrator:
        return EnergyIntegrator(max_gap_s=self.config.gap_s, history_s=self.config.history_s,
                                counter_range_j=math.inf)

    def describe(self) -> str:
        m = self.model
        return f"idle {m.idle_w:g} W + {m.core_w:g} W/core"

    def _device_open(self) -> None:
        """Nothing to open: the model reads the Activity."""

    def _device_read(self) -> list[PowerSample]:
        c = self.activity.counters()
        e = self.model.energy_j(c)
        prev, self._last = self._last, (c.t_s, e)
        if prev is None or c.t_s <= prev[0]:
            power_w = self.model.idle_w + self.model.core_w * c.busy_cores
        else:
            power_w = (e - prev[1]) / (c.t_s - prev[0])  # includes radio energy
        return [PowerSample(t_s=c.t_s, power_w=power_w, energy_j=e)]

    def _device_close(self) -> None:
        """Nothing to close."""

    def energy_j(self, t0_s: float, t1_s: float) -> float:
        """Exact model joules over the window, from the Activity's change log.

        Falls back to the sampled counter when the window starts before the retained log.
        """
        if t1_s <= t0_s:
            return 0.0
        c0 = self.activity.counters_at(t0_s)
        c1 = self.activity.counters_at(t1_s)
        if c0 is None or c1 is None:
            return self.integrator.energy_j(t0_s, t1_s)
        return self.model.energy_j(c1) - self.model.energy_j(c0)
