"""ENACHI's math: two-tier Lyapunov control of split inference. Pure functions, no I/O.

Task level (outer loop), once per inference task on a device with energy queue Q:
  choose the split point s and the reference transmit power p_ref maximizing
  V * Acc(s, w, p_ref) - Q * E(s, w, p_ref) under the deadline, where the bandwidth share w is
  given by the edge's allocator; then Q <- max(Q + E_measured - allowance, 0).
Packet level (inner loop), once per slot t with channel gain h_t and local queue Z_t:
  p_t = clip(w W / (Z_t ln 2) - N0 w W / h_t, 0, p_max)       (water-filling at price Z)
  Z_{t+1} = max(Z_t + z_gain * Z_0 * (p_t - p_ref) / p_ref, Z_min)   (tracks the reference)
so that the average of p_t follows p_ref while each slot spends more power when the channel is
good and less when it is poor. Rates are Shannon: R = w W log2(1 + p h / (N0 w W)).
Edge (all devices it serves): shares w_i minimizing sum_i Q_i E_i(w_i) with E_i ~ a_i / w_i,
i.e. w_i proportional to sqrt(a_i) (Cauchy-Schwarz), floored so nobody starves.

Units: seconds, joules, watts, hertz, bits. V is joules per unit of accuracy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hw import shannon_bps

# Run by the edge (bandwidth) and read from profiles on both sides (stop rule): defined in
# the shared part, re-exported here with the rest of ENACHI's math.
from ondevice.common.split_math import allocate_bandwidth as allocate_bandwidth
from ondevice.common.split_math import entropy_threshold as entropy_threshold
from ondevice.common.split_math import min_stop_fraction as min_stop_fraction
from ondevice.common.split_math import pooled_entropy_threshold as pooled_entropy_threshold

LN2 = math.log(2.0)
# R = w W log2(1 + p h / (N0 w W)), bits per second: the radio's own rate function, so the
# emulated channel and the controller's predictions cannot drift apart.
shannon_rate_bps = shannon_bps


def slot_power_w(*, z: float, share: float, bandwidth_hz: float, gain: float,
                 noise_w_per_hz: float, p_max_w: float) -> float:
    """Inner loop: p_t = clip(w W / (Z ln 2) - N0 w W / h_t, 0, p_max)."""
    bw = share * bandwidth_hz
    if z <= 0.0:
        return p_max_w
    p = bw / (z * LN2) - noise_w_per_hz * bw / gain
    return min(max(p, 0.0), p_max_w)


def price_for_power(*, p_ref_w: float, share: float, bandwidth_hz: float, gain: float,
                    noise_w_per_hz: float) -> float:
    """The Z at which the water-filling rule spends exactly ``p_ref_w`` at gain ``gain``."""
    bw = share * bandwidth_hz
    return bw / (LN2 * (p_ref_w + noise_w_per_hz * bw / gain))


@dataclass(slots=True)
class PowerTracker:
    """The packet-level loop: per-slot power tracking a reference by a local price queue Z."""

    p_ref_w: float
    share: float
    bandwidth_hz: float
    noise_w_per_hz: float
    p_max_w: float
    mean_gain: float
    z_gain: float = 0.05  # price step per slot, relative to Z_0, per unit relative deviation
    z: float = 0.0
    z0: float = 0.0
    start_price: float | None = None  # Z_0 (e.g. `tracking_price`); None: p_ref at mean gain

    def __post_init__(self) -> None:
        if self.start_price is not None:
            self.z = self.z0 = self.start_price
            return
        # Start at the price that spends p_ref at the mean gain. The additive update then has
        # its fixed point where the mean of p_t equals p_ref (a multiplicative one would not).
        self.z = self.z0 = price_for_power(
            p_ref_w=max(self.p_ref_w, 1e-9), share=self.share, bandwidth_hz=self.bandwidth_hz,
            gain=self.mean_gain, noise_w_per_hz=self.noise_w_per_hz)

    def step(self, gain: float) -> float:
        """Power for a slot with channel gain ``gain``; updates Z for the next slot."""
        p = slot_power_w(z=self.z, share=self.share, bandwidth_hz=self.bandwidth_hz,
                         gain=gain, noise_w_per_hz=self.noise_w_per_hz, p_max_w=self.p_max_w)
        ref = max(self.p_ref_w, 1e-9)
        self.z = max(self.z + self.z_gain * self.z0 * (p - ref) / ref, 1e-3 * self.z0)
        return p


@dataclass(frozen=True, slots=True)
class SplitOption:
    """One split point as the controller sees it (from profile.json). Seconds, joules, bytes."""

    name: str  # "s3", "device-only", "edge-only"
    head_s: float  # device compute before sending
    head_j: float  # its energy
    feature_bytes: int  # all channels, 8-bit (raw image for edge-only; 0 for device-only)
    tail_s: float  # edge compute
    fractions: tuple[float, ...]  # accuracy curve: fraction of channels received ...
    accuracy: tuple[float, ...]  # ... and top-1 accuracy there (non-decreasing)
    progressive: bool = True  # False: the edge can answer only once all bytes are in (raw input)

    def accuracy_at(self, fraction: float) -> float:
        return float(np.interp(min(max(fraction, 0.0), 1.0), self.fractions, self.accuracy))


@dataclass(frozen=True, slots=True)
class Link:
    """The device's radio link for one task."""

    bandwidth_hz: float
    noise_w_per_hz: float
    mean_gain: float
    p_max_w: float
    rtt_s: float = 0.005
    # Fading: gain / mean_gain at equally likely points (`rayleigh_points`); predictions
    # average over them, one block per task. Empty: the mean gain only.
    fading: tuple[float, ...] = ()
    circuit_w: float = 0.0  # radio electronics power while sending, beyond the radiated p


def rayleigh_points(n: int = 16) -> tuple[float, ...]:
    """n equally likely values of |h|^2 / E|h|^2 under Rayleigh fading (Exp(1) quantiles at
    the midpoints (i + 1/2) / n)."""
    u = (np.arange(n) + 0.5) / n  # [n]
    return tuple(float(x) for x in -np.log1p(-u))


def tracking_price(p_ref_w: float, share: float, link: Link) -> float:
    """The starting price Z_0 of the tracking loop for reference ``p_ref_w``.

    Without fading points: `price_for_power` at the mean gain. With them: the Z at which the
    mean over the points of the clipped water-filling power equals p_ref (bisection on log Z;
    the clip at p_max otherwise pulls the mean below p_ref). 0 when p_ref >= p_max: every
    slot at p_max, the only way to spend p_max on average.
    """
    if p_ref_w >= link.p_max_w:
        return 0.0
    if not link.fading:
        return price_for_power(p_ref_w=p_ref_w, share=share, bandwidth_hz=link.bandwidth_hz,
                               gain=link.mean_gain, noise_w_per_hz=link.noise_w_per_hz)
    return _faded_price(p_ref_w, share, link.bandwidth_hz, link.noise_w_per_hz, link.mean_gain,
                        link.p_max_w, link.fading)


@functools.lru_cache(maxsize=4096)  # the outer loop asks for the same few prices every task
def _faded_price(p_ref_w: float, share: float, bandwidth_hz: float, noise_w_per_hz: float,
                 mean_gain: float, p_max_w: float, fading: tuple[float, ...]) -> float:
    z_mean = price_for_power(p_ref_w=p_ref_w, share=share, bandwidth_hz=bandwidth_hz,
                             gain=mean_gain, noise_w_per_hz=noise_w_per_hz)
    bw = share * bandwidth_hz
    floor = noise_w_per_hz * bw / (mean_gain * np.asarray(fading))  # [n]

    def mean_power(z: float) -> float:  # the water-filling rule of `slot_power_w`, [n] at once
        return float(np.clip(bw / (z * LN2) - floor, 0.0, p_max_w).mean())

    lo, hi = math.log(z_mean) - 12.0, math.log(z_mean) + 12.0  # mean power falls as Z rises
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mean_power(math.exp(mid)) > p_ref_w:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def slot_power_at(p_ref_w: float, share: float, link: Link, gain: float, *,
                  tracking: bool) -> float:
    """The power a slot of gain ``gain`` gets: the water-filling rule at the tracking loop's
    starting price (`tracking_price`), or p_ref itself."""
    if not tracking or p_ref_w <= 0.0:
        return p_ref_w
    z0 = tracking_price(p_ref_w, share, link)
    return slot_power_w(z=z0, share=share, bandwidth_hz=link.bandwidth_hz, gain=gain,
                        noise_w_per_hz=link.noise_w_per_hz, p_max_w=link.p_max_w)


@dataclass(frozen=True, slots=True)
class Choice:
    option: SplitOption
    p_ref_w: float
    predicted_accuracy: float
    predicted_energy_j: float
    predicted_time_s: float
    objective: float


def predict(option: SplitOption, link: Link, share: float, p_ref_w: float,
            deadline_s: float, *, progressive: bool = True,
            tracking: bool = False) -> tuple[float, float, float]:
    """(accuracy, device energy J, time s) of a task at split ``option`` and power ``p_ref_w``:
    the feature streams at the Shannon rate until all is sent or the deadline leaves no time
    for the tail; accuracy from the profile's curve at the fraction received.

    Without ``progressive`` the edge answers only on the whole feature: a stream the deadline
    cuts is worth nothing (accuracy 0) and still costs the energy spent up to the deadline.
    With ``link.fading`` the three are means over the fading points (the gain held for the
    task), the power per point from `slot_power_at` (``tracking``: water-filling around p_ref,
    which falls silent in deep fades; else p_ref), so outages of the deadline count.
    """
    acc, e, t = predict_grid(option, link, share, (p_ref_w,), deadline_s,
                             progressive=progressive, tracking=tracking)
    return float(acc[0]), float(e[0]), float(t[0])


def predict_grid(option: SplitOption, link: Link, share: float, powers_w: Sequence[float],
                 deadline_s: float, *, progressive: bool = True, tracking: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`predict` for every reference power of ``powers_w`` at once: (accuracy [m], energy J
    [m], time s [m]), one numpy pass over the [powers, fading points] grid."""
    m = len(powers_w)
    if option.feature_bytes == 0:  # device-only: the whole model ran as the head
        return (np.full(m, option.accuracy_at(1.0)), np.full(m, option.head_j),
                np.full(m, option.head_s))
    window = deadline_s - option.head_s - option.tail_s - link.rtt_s
    if window <= 0.0:
        return np.zeros(m), np.full(m, option.head_j), np.full(m, option.head_s)
    x = np.asarray(link.fading or (1.0,), dtype=float)[None, :]  # [1, n] gain / mean gain
    gain = link.mean_gain * x  # [1, n]
    bw = share * link.bandwidth_hz
    p_ref = np.asarray(powers_w, dtype=float)[:, None]  # [m, 1]
    if tracking and link.fading:
        z0 = np.array([[tracking_price(float(q), share, link) if q > 0 else -1.0]
                       for q in powers_w])  # [m, 1]; 0: always p_max, -1: p_ref = 0
        with np.errstate(divide="ignore"):
            wf = np.clip(bw / (np.where(z0 > 0, z0, 1.0) * LN2)
                         - link.noise_w_per_hz * bw / gain, 0.0, link.p_max_w)  # [m, n]
        p = np.where(z0 > 0, wf, np.where(z0 == 0, link.p_max_w, 0.0))
    else:
        p = np.broadcast_to(p_ref, (m, x.shape[1]))  # [m, n]
    if bw <= 0.0:
        rate = np.zeros_like(p)
    else:
        rate = bw * np.log2(1.0 + p * gain / (link.noise_w_per_hz * bw))  # [m, n] bit/s
    silent = rate <= 0.0  # no power in this fade: nothing goes out in the window
    need_s = np.where(silent, np.inf, 8.0 * option.feature_bytes / np.where(silent, 1.0, rate))
    tx_s = np.where(silent, 0.0, np.minimum(need_s, window))  # [m, n]
    fraction = np.where(silent, 0.0, tx_s / need_s)
    time_s = np.where(silent, option.head_s + window,
                      option.head_s + tx_s + link.rtt_s + option.tail_s)
    if progressive and option.progressive:
        acc = np.interp(fraction, option.fractions, option.accuracy)
    else:
        acc = np.where(need_s <= window, option.accuracy_at(1.0), 0.0)
    energy = option.head_j + (p + link.circuit_w) * tx_s
    return acc.mean(axis=1), energy.mean(axis=1), time_s.mean(axis=1)


def choose_task(options: Sequence[SplitOption], link: Link, share: float, *, q_j: float,
                v: float, deadline_s: float, powers_w: Sequence[float],
                progressive: bool = True, tracking: bool = False) -> Choice:
    """Outer loop: the (split, p_ref) maximizing V * Acc - Q * E among those within the deadline.

    ``powers_w`` is the grid of reference powers to consider (e.g. 8 levels up to p_max).
    Ties (equal objective within 1e-12, e.g. with an empty queue) go to the lower energy.
    """
    best: Choice | None = None
    for opt in options:
        grid = tuple(powers_w) if opt.feature_bytes else (0.0,)
        accs, es, ts = predict_grid(opt, link, share, grid, deadline_s,
                                    progressive=progressive, tracking=tracking)
        for p, acc, e, t in zip(grid, accs.tolist(), es.tolist(), ts.tolist(), strict=True):
            if t > deadline_s + 1e-9:
                continue
            obj = v * acc - q_j * e
            if best is None or obj > best.objective + 1e-12 or (
                obj > best.objective - 1e-12 and e < best.predicted_energy_j
            ):
                best = Choice(opt, p, acc, e, t, obj)
    if best is None:  # nothing fits the deadline: the cheapest option, flagged by its time
        opt = min(options, key=lambda o: o.head_s)
        acc, e, t = predict(opt, link, share, powers_w[-1], deadline_s, progressive=progressive,
                            tracking=tracking)
        best = Choice(opt, powers_w[-1], acc, e, t, v * acc - q_j * e)
    return best


def queue_update(q_j: float, energy_j: float, allowance_j: float) -> float:
    """Q <- max(Q + E - C, 0): the device's virtual energy queue."""
    return max(q_j + energy_j - allowance_j, 0.0)
