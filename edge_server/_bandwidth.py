"""The edge's bandwidth book: which devices share the uplink now, and each one's share.

ENACHI's edge owns the bandwidth of every device it serves (docs/enachi.md). Each task's
``dnn_open`` reports the device's energy queue Q_i (J), the bits it means to send and its
spectral efficiency at the full band (bit/s/Hz); the book keeps the latest report per device,
and `ondevice.common.split_math.allocate_bandwidth` divides the band among the devices seen
in the last ``ACTIVE_S`` seconds: w_i ~ sqrt(Q_i * bits_i / eff_i), floored so that nobody starves.

Pure bookkeeping: callers pass ``now`` (``time.monotonic()`` seconds). Not thread-safe; the
event loop owns it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ondevice.common.split_math import allocate_bandwidth

ACTIVE_S = 3.0  # s: a device that opened no task for this long no longer holds a share
SHARE_FLOOR = 0.05  # fraction of the band kept for the floors of all devices together


@dataclass(slots=True)
class _Report:
    queue_j: float
    bits: float
    spectral_eff: float
    seen_s: float
    owner: int  # the connection that last reported it (forgotten when it closes)


class BandwidthBook:
    """Latest report per device id; shares over the active devices."""

    def __init__(self, *, active_s: float = ACTIVE_S, floor: float = SHARE_FLOOR) -> None:
        self.active_s = active_s
        self.floor = floor
        self._devices: dict[str, _Report] = {}

    @staticmethod
    def check(*, queue_j: float, bits: float, spectral_eff: float) -> None:
        """Raise ValueError unless a report with these values would be accepted."""
        for name, v in (("queue", queue_j), ("bits", bits), ("spectral efficiency", spectral_eff)):
            if not math.isfinite(v) or v < 0.0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

    def report(self, device: str, *, queue_j: float, bits: float, spectral_eff: float,
               now: float, owner: int) -> None:
        """Record a device's state at the start of a task (ValueError as ``check``)."""
        self.check(queue_j=queue_j, bits=bits, spectral_eff=spectral_eff)
        self._devices[device] = _Report(queue_j, bits, spectral_eff, now, owner)

    def active(self, now: float) -> list[str]:
        """Devices heard from within ``active_s``, in a stable order; prunes the others."""
        stale = [d for d, r in self._devices.items() if now - r.seen_s > self.active_s]
        for d in stale:
            del self._devices[d]
        return sorted(self._devices)

    def share(self, device: str, now: float) -> tuple[float, int]:
        """(bandwidth share of ``device`` in 0..1, number of active devices)."""
        names = self.active(now)
        if device not in self._devices:
            return (1.0 / (len(names) + 1), len(names) + 1)
        reports = [self._devices[d] for d in names]
        # A device that reports no bits (e.g. it runs locally this task) still counts as
        # present, with the smallest demand of the others, so shares do not swing each task.
        demand = [r.bits for r in reports if r.bits > 0]
        fill = min(demand) if demand else 1.0
        shares = allocate_bandwidth(
            [max(r.queue_j, 0.0) for r in reports],
            [r.bits if r.bits > 0 else fill for r in reports],
            [max(r.spectral_eff, 1e-9) for r in reports],
            floor=self.floor,
        )
        return float(shares[names.index(device)]), len(names)

    def forget_owner(self, owner: int) -> None:
        """Drop the devices a closed connection reported (they left, not just went quiet)."""
        for d in [d for d, r in self._devices.items() if r.owner == owner]:
            del self._devices[d]

    def __len__(self) -> int:
        return len(self._devices)
