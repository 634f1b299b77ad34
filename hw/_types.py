"""Sample dataclass and the exception hierarchy shared by every meter.

Vendor and OS errors (``serial.SerialException``, ``OSError``, ``subprocess`` failures) are
mapped onto these inside the drivers, so callers catch only :class:`MeterError`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FrameError", "MeterError", "MeterSpecError", "PowerSample"]


@dataclass(frozen=True, slots=True)
class PowerSample:
    """One reading of a power source.

    ``t_s`` is ``time.monotonic()`` seconds at which the quantity was measured (for a polled
    meter: just after the request left the host, not when the reply finished arriving).
    ``energy_j`` is a cumulative counter where the source has one (RAPL, the sim model),
    counted from an arbitrary origin; ``None`` for instantaneous-power sources.
    """

    t_s: float
    power_w: float
    voltage_v: float | None = None
    current_a: float | None = None
    energy_j: float | None = None


class MeterError(Exception):
    """A meter could not be opened or read. Carries a message a user can act on."""


class MeterSpecError(MeterError, ValueError):
    """A meter SPEC string was malformed or named an unknown kind or option."""


class FrameError(MeterError):
    """One reply or line was unusable (short, bad checksum, garbage, timeout).

    The sampler skips it and resynchronizes; only a run of them forces a reconnect.
    """
