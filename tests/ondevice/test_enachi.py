"""ENACHI's controller math: closed forms, hand-computed choices, the tracking loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ondevice.enachi import (
    Link,
    PowerTracker,
    SplitOption,
    allocate_bandwidth,
    choose_task,
    entropy_threshold,
    predict,
    price_for_power,
    queue_update,
    shannon_rate_bps,
    slot_power_w,
)

W, N0 = 2e6, 4e-21  # 2 MHz (LyDROO), -174 dBm/Hz
LINK = Link(bandwidth_hz=W, noise_w_per_hz=N0, mean_gain=1e-13, p_max_w=0.1, rtt_s=0.005)


def test_shannon_rate() -> None:
    snr = 0.05 * 1e-13 / (N0 * 0.5 * W)
    assert shannon_rate_bps(0.5, W, 0.05, 1e-13, N0) == pytest.approx(0.5 * W * math.log2(1 + snr))
    assert shannon_rate_bps(0.0, W, 0.05, 1e-13, N0) == 0.0


def test_slot_power_closed_form_and_clipping() -> None:
    z, w, h = 2e7, 0.5, 1e-13
    want = w * W / (z * math.log(2)) - N0 * w * W / h
    assert slot_power_w(z=z, share=w, bandwidth_hz=W, gain=h, noise_w_per_hz=N0,
                        p_max_w=1.0) == pytest.approx(want)
    assert slot_power_w(z=z, share=w, bandwidth_hz=W, gain=1e-16, noise_w_per_hz=N0,
                        p_max_w=1.0) == 0.0  # a deep fade: do not transmit
    assert slot_power_w(z=1e3, share=w, bandwidth_hz=W, gain=h, noise_w_per_hz=N0,
                        p_max_w=0.1) == 0.1
    z_ref = price_for_power(p_ref_w=0.03, share=w, bandwidth_hz=W, gain=h, noise_w_per_hz=N0)
    assert slot_power_w(z=z_ref, share=w, bandwidth_hz=W, gain=h, noise_w_per_hz=N0,
                        p_max_w=1.0) == pytest.approx(0.03)


def test_tracker_follows_reference_on_fading_channel() -> None:
    rng = np.random.default_rng(0)
    tr = PowerTracker(p_ref_w=0.03, share=0.5, bandwidth_hz=W, noise_w_per_hz=N0, p_max_w=0.1,
                      mean_gain=1e-13)
    gains = 1e-13 * rng.exponential(1.0, 20000)  # Rayleigh fading power
    powers = np.array([tr.step(h) for h in gains])
    assert powers.mean() == pytest.approx(0.03, rel=0.03)
    # Opportunistic: more power in good slots than in bad ones.
    good, bad = gains > np.quantile(gains, 0.75), gains < np.quantile(gains, 0.25)
    assert powers[good].mean() > powers[bad].mean()


def _opt(name: str, head_s: float, head_j: float, nbytes: int, acc_full: float) -> SplitOption:
    return SplitOption(name, head_s, head_j, nbytes, 0.002, (0.0, 0.5, 1.0),
                       (0.1, 0.8 * acc_full, acc_full))


OPTS = [
    _opt("s1", 0.002, 0.004, 20000, 0.95),  # cheap head, big feature
    _opt("s2", 0.010, 0.020, 2000, 0.93),  # more compute, small feature
    SplitOption("device-only", 0.030, 0.060, 0, 0.0, (0.0, 1.0), (0.80, 0.80)),
]


def test_predict_by_hand() -> None:
    rate = shannon_rate_bps(0.5, W, 0.05, 1e-13, N0)
    acc, e, t = predict(OPTS[1], LINK, 0.5, 0.05, deadline_s=1.0)
    tx = 8 * 2000 / rate
    assert acc == pytest.approx(0.93)
    assert e == pytest.approx(0.020 + 0.05 * tx)
    assert t == pytest.approx(0.010 + tx + 0.005 + 0.002)
    # A deadline that cuts the stream: the fraction sent sets the accuracy.
    window = 0.010 + 0.005 + 0.002 + tx / 2
    acc_half, _, _ = predict(OPTS[1], LINK, 0.5, 0.05, deadline_s=window)
    assert acc_half == pytest.approx(0.8 * 0.93)


def test_choose_task_trades_accuracy_for_energy() -> None:
    powers = [0.01, 0.03, 0.1]
    free = choose_task(OPTS, LINK, 0.5, q_j=0.0, v=1.0, deadline_s=0.5, powers_w=powers)
    assert free.option.name == "s1" and free.predicted_accuracy == pytest.approx(0.95)
    tight = choose_task(OPTS, LINK, 0.5, q_j=1000.0, v=1.0, deadline_s=0.5, powers_w=powers)
    assert tight.predicted_energy_j < free.predicted_energy_j
    # Brute force agrees.
    best = max((1.0 * a - 1000.0 * e, o.name, p) for o in OPTS
               for p in (powers if o.feature_bytes else [0.0])
               for a, e, t in [predict(o, LINK, 0.5, p, 0.5)] if t <= 0.5)
    assert (tight.option.name, tight.p_ref_w) == (best[1], best[2])


def test_queue_update() -> None:
    assert queue_update(1.0, 0.5, 0.2) == pytest.approx(1.3)
    assert queue_update(0.1, 0.0, 0.2) == 0.0


def test_bandwidth_allocation() -> None:
    w = allocate_bandwidth([1.0, 4.0, 0.0], [8e4, 8e4, 8e4], [2.0, 2.0, 2.0])
    assert w.sum() == pytest.approx(1.0)
    assert w[1] > w[0] > w[2] > 0.0  # larger queues get more, nobody starves
    assert w[1] / w[0] == pytest.approx(2.0, rel=0.1)  # sqrt(4 / 1) beyond the floor
    even = allocate_bandwidth([0.0, 0.0], [1.0, 1.0], [1.0, 1.0])
    assert even.tolist() == [0.5, 0.5]


def test_entropy_threshold_from_profile_curve() -> None:
    fr = [0.1, 0.25, 0.5, 0.75, 1.0]
    acc = [0.3, 0.7, 0.93, 0.945, 0.95]
    ent = [2.0, 1.2, 0.5, 0.3, 0.25]
    assert entropy_threshold(fr, acc, ent, tolerance=0.01) == 0.3
    assert entropy_threshold(fr, acc, ent, tolerance=0.05) == 0.5
