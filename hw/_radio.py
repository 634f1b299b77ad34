"""The device's radio behind one interface: an emulated fading channel, Linux Wi-Fi, or none.

A :class:`Channel` carries a task's bytes to the edge. The caller hands it, per message, the
number of bytes, its bandwidth share w and a per-slot power rule (``SlotPower``: ENACHI's
`ondevice.dnn.enachi.PowerTracker`, or a constant power); the channel says when the bytes are out
and what the radio spent.

``emulated:bw=MHz,snr_db=...,fading=rayleigh,coherence_ms=...,seed=...`` (this module):
Rayleigh block fading, Shannon rate, seeded. Time is cut into slots of ``slot_ms``; at the
first use of a slot the rule picks the slot's power p_t from the slot's gain h_t, and the
slot carries R_t = w W log2(1 + p_t h_t / (N0 w W)) bit/s. ``async_send`` sleeps (asyncio, on
absolute targets so that errors do not add up) until the bits would be through, so the real
TCP stream that follows each call is paced slot by slot, and charges p_t * t to the modelled
radio (``modelled = True``: reported as modelled, never as measured). The gain of block b
(``coherence_ms`` long, counted from ``async_open``) is mean_gain * X_b with X_b ~ Exp(1)
i.i.d. from ``seed`` (|h|^2 of a Rayleigh channel), or mean_gain with ``fading=none``.

``none``: no pacing, as fast as the link allows; the radio's energy is whatever the meter sees
(the ``sim`` meter models it per byte). ``wifi:IFACE``: see ``_wifi.py``. ``open_channel``
(``_channel_factory.py``) builds a channel from its SPEC.

Defaults are the wireless constants of docs/hardware-profiles.md section 4: W = 2 MHz,
N0 = -174 dBm/Hz, p_max = 100 mW (LyDROO [C1]); coherence 50 ms (the section derives 53 ms
from Tc ~ 0.423/f_D at 1 m/s and 2.4 GHz, a textbook rule it could not confirm); 5 ms slots
(docs/enachi.md).
"""

from __future__ import annotations

import abc
import asyncio
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "NOISE_DBM_PER_HZ",
    "Channel",
    "ChannelSpecError",
    "ConstantPower",
    "EmulatedChannel",
    "LinkState",
    "NullChannel",
    "SlotPower",
    "TxReport",
    "dbm_to_w",
    "shannon_bps",
]

NOISE_DBM_PER_HZ = -174.0  # thermal noise density at 290 K [C1]
DEFAULT_BW_MHZ = 2.0  # [C1] ResourceAllocation.py:24
DEFAULT_P_MAX_W = 0.1  # [C1] :29
DEFAULT_SNR_DB = 10.0  # mean SNR at p_max over the whole band: a moderate link
DEFAULT_COHERENCE_MS = 50.0  # ~53 ms derived in docs/hardware-profiles.md section 4
DEFAULT_SLOT_MS = 5.0  # docs/enachi.md: a 5 ms slot
_GAIN_CHUNK = 4096  # fading blocks drawn at a time


class ChannelSpecError(ValueError):
    """A channel SPEC was malformed or named an unknown kind or option."""


def dbm_to_w(dbm: float) -> float:
    """Watts of a level in dBm."""
    return 10.0 ** ((dbm - 30.0) / 10.0)


def shannon_bps(share: float, bandwidth_hz: float, power_w: float, gain: float,
                noise_w_per_hz: float) -> float:
    """R = w W log2(1 + p h / (N0 w W)), bits per second (0 without band, power or gain)."""
    bw = share * bandwidth_hz
    if bw <= 0.0 or power_w <= 0.0 or gain <= 0.0:
        return 0.0
    return bw * math.log2(1.0 + power_w * gain / (noise_w_per_hz * bw))


class SlotPower(Protocol):
    """A per-slot power rule: given the slot's channel gain, the transmit power (W)."""

    def step(self, gain: float) -> float: ...


@dataclass(slots=True)
class ConstantPower:
    """The same power in every slot, whatever the gain (the constant-power baseline)."""

    power_w: float

    def step(self, gain: float) -> float:
        return self.power_w


@dataclass(frozen=True, slots=True)
class LinkState:
    """What the controller needs of the link now. Hz, W/Hz, W, unitless gains."""

    bandwidth_hz: float
    noise_w_per_hz: float
    mean_gain: float
    gain: float  # this instant's gain (the current fading block)
    p_max_w: float
    fading: str = "none"  # "rayleigh": block fading around mean_gain; "none": steady
    circuit_w: float = 0.0  # radio electronics power while sending, beyond the radiated p

    @property
    def spectral_eff(self) -> float:
        """bit/s/Hz at p_max, the mean gain and the whole band."""
        snr = self.p_max_w * self.mean_gain / (self.noise_w_per_hz * self.bandwidth_hz)
        return math.log2(1.0 + snr)


@dataclass(frozen=True, slots=True)
class TxReport:
    """One ``async_send``: were all bytes delivered, airtime (s), radio energy (J, modelled
    channels only, else 0), slots touched and the mean transmit power while sending (W)."""

    nbytes: int
    delivered: bool
    airtime_s: float
    energy_j: float
    slots: int
    t_end: float  # loop time when the last bit left (or the send gave up)

    @property
    def mean_power_w(self) -> float:
        return self.energy_j / self.airtime_s if self.airtime_s > 0 else 0.0


class Channel(abc.ABC):
    """``async with`` a channel around a device's session. ``modelled``: the radio's energy
    comes from this model (report it as modelled) rather than from the meter."""

    kind: str = "?"
    modelled: bool = False

    def __init__(self) -> None:
        self.energy_j = 0.0  # radio energy charged so far (modelled channels)
        self.airtime_s = 0.0
        self.bytes_sent = 0

    async def __aenter__(self) -> Channel:
        await self.async_open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.async_close()

    async def async_open(self) -> None:  # noqa: B027 - most channels have nothing to start
        """Start the channel (its clock, its polling)."""

    async def async_close(self) -> None:  # noqa: B027 - nor anything to stop
        """Stop it. Idempotent."""

    @abc.abstractmethod
    def link(self) -> LinkState:
        """The link as the controller should see it now."""

    @abc.abstractmethod
    async def async_send(self, nbytes: int, *, share: float, power: SlotPower,
                         until: float | None = None) -> TxReport:
        """Carry ``nbytes`` at bandwidth ``share`` with per-slot ``power``; return when they
        are through, or at loop time ``until`` with ``delivered`` False."""

    def describe(self) -> str:
        return self.kind


class NullChannel(Channel):
    """``none``: no pacing, no radio model. The controller assumes a nominal fast link."""

    kind = "none"
    modelled = False

    def __init__(self, *, bw_mhz: float = 20.0, snr_db: float = 30.0,
                 p_max_w: float = DEFAULT_P_MAX_W) -> None:
        super().__init__()
        n0 = dbm_to_w(NOISE_DBM_PER_HZ)
        gain = 10.0 ** (snr_db / 10.0) * n0 * bw_mhz * 1e6 / p_max_w
        self._link = LinkState(bw_mhz * 1e6, n0, gain, gain, p_max_w)

    def link(self) -> LinkState:
        return self._link

    async def async_send(self, nbytes: int, *, share: float, power: SlotPower,
                         until: float | None = None) -> TxReport:
        self.bytes_sent += nbytes
        return TxReport(nbytes, True, 0.0, 0.0, 0, asyncio.get_running_loop().time())


class EmulatedChannel(Channel):
    """Rayleigh block fading with Shannon rates, pacing real sends in slots (module doc)."""

    kind = "emulated"
    modelled = True

    def __init__(self, *, bw_mhz: float = DEFAULT_BW_MHZ, snr_db: float = DEFAULT_SNR_DB,
                 fading: str = "rayleigh", coherence_ms: float = DEFAULT_COHERENCE_MS,
                 seed: int = 0, p_max_w: float = DEFAULT_P_MAX_W,
                 slot_ms: float = DEFAULT_SLOT_MS,
                 noise_dbm_hz: float = NOISE_DBM_PER_HZ, circuit_w: float = 0.0) -> None:
        super().__init__()
        if fading not in ("rayleigh", "none"):
            raise ChannelSpecError(f"fading must be rayleigh or none, got {fading!r}")
        for name, v in (("bw", bw_mhz), ("coherence_ms", coherence_ms), ("p_max_w", p_max_w),
                        ("slot_ms", slot_ms)):
            if not (math.isfinite(v) and v > 0.0):
                raise ChannelSpecError(f"{name} must be a number > 0, got {v!r}")
        self.bandwidth_hz = bw_mhz * 1e6
        self.snr_db = snr_db
        self.fading = fading
        self.coherence_s = coherence_ms / 1e3
        self.slot_s = slot_ms / 1e3
        self.seed = seed
        self.p_max_w = p_max_w
        if not (math.isfinite(circuit_w) and circuit_w >= 0.0):
            raise ChannelSpecError(f"circuit_w must be a number >= 0, got {circuit_w!r}")
        self.circuit_w = circuit_w
        self.noise_w_per_hz = dbm_to_w(noise_dbm_hz)
        # Mean SNR at p_max over the whole band fixes the mean gain: snr = p h / (N0 W).
        self.mean_gain = 10.0 ** (snr_db / 10.0) * self.noise_w_per_hz * self.bandwidth_hz / (
            p_max_w)
        self._rng = np.random.default_rng(seed)
        self._gains = np.zeros(0)  # [blocks drawn so far], in units of mean_gain
        self._t0: float | None = None
        self._busy_until = 0.0
        self._slot: tuple[int, int, float] | None = None  # (slot k, rule id, its power W)

    def describe(self) -> str:
        circuit = f" + {self.circuit_w:g} W circuit" if self.circuit_w else ""
        return (f"emulated {self.bandwidth_hz / 1e6:g} MHz, {self.snr_db:g} dB mean SNR at "
                f"{self.p_max_w * 1e3:g} mW{circuit}, {self.fading} fading "
                f"{self.coherence_s * 1e3:g} ms, slots {self.slot_s * 1e3:g} ms, seed {self.seed}")

    async def async_open(self) -> None:
        if self._t0 is None:
            self._t0 = asyncio.get_running_loop().time()
            self._busy_until = self._t0

    def block_gain(self, block: int) -> float:
        """Gain of fading block ``block`` (0, 1, ...): deterministic given the seed."""
        if self.fading == "none":
            return self.mean_gain
        while block >= self._gains.size:
            self._gains = np.concatenate([self._gains, self._rng.exponential(1.0, _GAIN_CHUNK)])
        return float(self.mean_gain * self._gains[block])

    def gain_at(self, t: float) -> float:
        """Gain at loop time ``t`` (the block that contains it)."""
        t0 = self._t0 if self._t0 is not None else t
        return self.block_gain(max(0, int((t - t0) // self.coherence_s)))

    def link(self) -> LinkState:
        now = asyncio.get_running_loop().time() if self._t0 is not None else 0.0
        return LinkState(self.bandwidth_hz, self.noise_w_per_hz, self.mean_gain,
                         self.gain_at(now), self.p_max_w, self.fading, self.circuit_w)

    def _slot_power(self, k: int, t: float, power: SlotPower) -> float:
        """The power of slot ``k``, chosen once at its first use by this rule."""
        if self._slot is not None and self._slot[0] == k and self._slot[1] == id(power):
            return self._slot[2]
        p = min(max(float(power.step(self.gain_at(t))), 0.0), self.p_max_w)
        self._slot = (k, id(power), p)
        return p

    async def async_send(self, nbytes: int, *, share: float, power: SlotPower,
                         until: float | None = None) -> TxReport:
        if self._t0 is None:
            await self.async_open()
        assert self._t0 is not None
        loop = asyncio.get_running_loop()
        # One transmission at a time. A message handed over less than a slot after the radio
        # went idle is taken as queued behind the last one (a radio's transmit queue absorbs
        # the sender's scheduling jitter); later than that, the radio sat idle meanwhile.
        now = loop.time()
        t = self._busy_until if now - self._busy_until <= self.slot_s else now
        bits = 8.0 * nbytes
        energy = airtime = 0.0
        slots: set[int] = set()
        k_min = 0  # the slot after the last one used up (float rounding may keep t at its edge)
        while bits > 1e-9:
            if until is not None and t >= until:
                break
            k = max(int((t - self._t0) // self.slot_s), k_min)
            end = self._t0 + (k + 1) * self.slot_s
            if until is not None:
                end = min(end, until)
            p = self._slot_power(k, t, power)
            slots.add(k)
            rate = shannon_bps(share, self.bandwidth_hz, p, self.gain_at(t), self.noise_w_per_hz)
            if rate <= 0.0:  # a slot the rule leaves silent (deep fade): wait it out
                dt = max(end - t, 0.0)
            else:
                dt = min(bits / rate, max(end - t, 0.0))
                bits -= rate * dt
                energy += (p + self.circuit_w) * dt
                airtime += dt
            t += dt
            if t >= end:  # this slot is used up: the next step is in the next one, whatever
                k_min = k + 1  # the rounding of t near the edge (loop time of a long uptime)
                t = max(t, end)
            await asyncio.sleep(max(0.0, t - loop.time()))
        delivered = bits <= 1e-9
        self._busy_until = t
        self.energy_j += energy
        self.airtime_s += airtime
        if delivered:
            self.bytes_sent += nbytes
        return TxReport(nbytes, delivered, airtime, energy, len(slots), t)
