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

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)


def shannon_rate_bps(share: float, bandwidth_hz: float, power_w: float, gain: float,
                     noise_w_per_hz: float) -> float:
    """R = w W log2(1 + p h / (N0 w W)), bits per second."""
    bw = share * bandwidth_hz
    if bw <= 0.0 or power_w <= 0.0 or gain <= 0.0:
        return 0.0
    return bw * math.log2(1.0 + power_w * gain / (noise_w_per_hz * bw))


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

    def __post_init__(self) -> None:
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


@dataclass(frozen=True, slots=True)
class Choice:
    option: SplitOption
    p_ref_w: float
    predicted_accuracy: float
    predicted_energy_j: float
    predicted_time_s: float
    objective: float


def predict(option: SplitOption, link: Link, share: float, p_ref_w: float,
            deadline_s: float) -> tuple[float, float, float]:
    """(accuracy, device energy J, time s) of a task at split ``option`` and power ``p_ref_w``:
    the feature streams at the mean Shannon rate until all is sent or the deadline leaves no
    time for the tail; accuracy from the profile's curve at the fraction received."""
    if option.feature_bytes == 0:  # device-only: the whole model ran as the head
        return option.accuracy_at(1.0), option.head_j, option.head_s
    rate = shannon_rate_bps(share, link.bandwidth_hz, p_ref_w, link.mean_gain,
                            link.noise_w_per_hz)
    window = deadline_s - option.head_s - option.tail_s - link.rtt_s
    if rate <= 0.0 or window <= 0.0:
        return 0.0, option.head_j, option.head_s
    need_s = 8.0 * option.feature_bytes / rate
    tx_s = min(need_s, window)
    fraction = tx_s / need_s
    time_s = option.head_s + tx_s + link.rtt_s + option.tail_s
    return option.accuracy_at(fraction), option.head_j + p_ref_w * tx_s, time_s


def choose_task(options: Sequence[SplitOption], link: Link, share: float, *, q_j: float,
                v: float, deadline_s: float, powers_w: Sequence[float]) -> Choice:
    """Outer loop: the (split, p_ref) maximizing V * Acc - Q * E among those within the deadline.

    ``powers_w`` is the grid of reference powers to consider (e.g. 8 levels up to p_max).
    """
    best: Choice | None = None
    for opt in options:
        for p in (powers_w if opt.feature_bytes else (0.0,)):
            acc, e, t = predict(opt, link, share, p, deadline_s)
            if t > deadline_s + 1e-9:
                continue
            obj = v * acc - q_j * e
            if best is None or obj > best.objective + 1e-12:
                best = Choice(opt, p, acc, e, t, obj)
    if best is None:  # nothing fits the deadline: the cheapest option, flagged by its time
        opt = min(options, key=lambda o: o.head_s)
        acc, e, t = predict(opt, link, share, powers_w[-1], deadline_s)
        best = Choice(opt, powers_w[-1], acc, e, t, v * acc - q_j * e)
    return best


def queue_update(q_j: float, energy_j: float, allowance_j: float) -> float:
    """Q <- max(Q + E - C, 0): the device's virtual energy queue."""
    return max(q_j + energy_j - allowance_j, 0.0)


def allocate_bandwidth(queues_j: Sequence[float], bits: Sequence[float],
                       spectral_eff: Sequence[float], *, floor: float = 0.05) -> np.ndarray:
    """Edge allocator: shares w_i >= floor/n, summing to 1, minimizing sum Q_i a_i / w_i with
    a_i = bits_i / efficiency_i (the airtime a device needs at full bandwidth): w_i ~ sqrt(Q_i a_i).

    Devices with empty queues get the floor; with every queue empty the split is even.
    """
    q = np.asarray(queues_j, dtype=float)  # [n]
    a = np.asarray(bits, dtype=float) / np.maximum(np.asarray(spectral_eff, dtype=float), 1e-9)
    n = q.shape[0]
    if n == 0:
        return np.zeros(0)
    weight = np.sqrt(np.maximum(q, 0.0) * np.maximum(a, 0.0))  # [n]
    if weight.sum() <= 0.0:
        return np.full(n, 1.0 / n)
    base = floor / n
    return base + (1.0 - floor) * weight / weight.sum()


def entropy_threshold(fractions: Sequence[float], accuracy: Sequence[float],
                      entropies: Sequence[float], *, tolerance: float = 0.01) -> float:
    """Stop threshold for progressive transmission, from the profile's curves.

    ``entropies`` is the mean tail-output entropy (nats) at each received fraction. The
    threshold is the entropy at the smallest fraction whose accuracy is within ``tolerance``
    of the full feature's: stopping when the edge is at least that sure loses at most about
    ``tolerance`` accuracy.
    """
    acc = np.asarray(accuracy, dtype=float)
    ok = np.flatnonzero(acc >= acc[-1] - tolerance)
    return float(np.asarray(entropies, dtype=float)[ok[0]])
