"""Power meters behind one async interface, and the integrator that turns samples into joules.

Typical use::

    activity = Activity()
    async with open_meter("um25c:/dev/rfcomm0", activity=activity) as meter:
        t0 = time.monotonic()
        with activity.busy(1.0):
            ...  # work
        t1 = time.monotonic()
        joules = meter.energy_j(t0, t1)
        covered = meter.coverage(t0, t1)  # 0..1: how much of it real samples saw
        source = "measured" if meter.measured else "modelled"

See ``docs/meters.md`` for every SPEC, and each ``_<kind>.py`` module for its byte layout.
"""

from hw._activity import Activity
from hw._factory import METER_KINDS, open_meter, parse_spec
from hw._integrator import EnergyIntegrator, counter_delta_j
from hw._meter import MeterConfig, PowerMeter
from hw._types import FrameError, MeterError, MeterSpecError, PowerSample

__all__ = [
    "METER_KINDS",
    "Activity",
    "EnergyIntegrator",
    "FrameError",
    "MeterConfig",
    "MeterError",
    "MeterSpecError",
    "PowerMeter",
    "PowerSample",
    "counter_delta_j",
    "open_meter",
    "parse_spec",
]
