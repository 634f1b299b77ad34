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

The radio (``open_channel("emulated:bw=2,snr_db=10")``, ``"wifi:wlan0"``, ``"none"``) carries a
device's bytes to the edge and says what they cost: ``_radio.py``, ``_wifi.py``, docs/enachi.md.
"""

from hw._activity import Activity
from hw._channel_factory import CHANNEL_KINDS, open_channel
from hw._factory import METER_KINDS, open_meter, parse_spec
from hw._integrator import EnergyIntegrator, counter_delta_j
from hw._meter import MeterConfig, PowerMeter
from hw._radio import (
    Channel,
    ChannelSpecError,
    ConstantPower,
    EmulatedChannel,
    LinkState,
    NullChannel,
    SlotPower,
    TxReport,
    shannon_bps,
)
from hw._types import FrameError, MeterError, MeterSpecError, PowerSample

__all__ = [
    "CHANNEL_KINDS",
    "METER_KINDS",
    "Activity",
    "Channel",
    "ChannelSpecError",
    "ConstantPower",
    "EmulatedChannel",
    "EnergyIntegrator",
    "FrameError",
    "LinkState",
    "MeterConfig",
    "MeterError",
    "MeterSpecError",
    "NullChannel",
    "PowerMeter",
    "PowerSample",
    "SlotPower",
    "TxReport",
    "counter_delta_j",
    "open_channel",
    "open_meter",
    "parse_spec",
    "shannon_bps",
]
