"""ENACHI's controller math: closed forms, hand-computed choices, the tracking loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ondevice.dnn.enachi import (
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


# -- extensions for the device loop: fading, all-or-nothing, ties, circuit power, stop rules --

def test_rayleigh_points_are_exponential_quantiles() -> None:
    from ondevice.dnn.enachi import rayleigh_points

    pts = np.array(rayleigh_points(16))
    u = (np.arange(16) + 0.5) / 16
    assert np.allclose(1.0 - np.exp(-pts), u)  # Exp(1) CDF at the midpoints
    assert pts.mean() == pytest.approx(1.0, abs=0.05)


def test_slot_power_at_is_the_trackers_first_slot() -> None:
    from ondevice.dnn.enachi import slot_power_at

    for x in (0.05, 0.5, 1.0, 3.0):
        tr = PowerTracker(p_ref_w=0.03, share=0.5, bandwidth_hz=W, noise_w_per_hz=N0,
                          p_max_w=0.1, mean_gain=1e-13)
        want = tr.step(1e-13 * x)
        assert slot_power_at(0.03, 0.5, LINK, 1e-13 * x, tracking=True) == pytest.approx(want)
    assert slot_power_at(0.03, 0.5, LINK, 1e-15, tracking=False) == 0.03
    assert slot_power_at(0.03, 0.5, LINK, 1e-13, tracking=True) == pytest.approx(0.03)


def test_predict_all_or_nothing_circuit_power_and_fading() -> None:
    from dataclasses import replace

    from ondevice.dnn.enachi import rayleigh_points

    rate = shannon_rate_bps(0.5, W, 0.05, 1e-13, N0)
    tx = 8 * 2000 / rate
    cut = 0.010 + 0.005 + 0.002 + tx / 2  # half the stream fits
    assert predict(OPTS[1], LINK, 0.5, 0.05, cut, progressive=False)[0] == 0.0
    assert predict(OPTS[1], LINK, 0.5, 0.05, 1.0, progressive=False)[0] == pytest.approx(0.93)
    raw = SplitOption("raw", 0.0, 0.0, 2000, 0.002, (0.0, 1.0), (0.0, 0.9), progressive=False)
    assert predict(raw, LINK, 0.5, 0.05, cut - 0.010)[0] == 0.0  # never partial
    hot = replace(LINK, circuit_w=0.4)
    assert predict(OPTS[1], hot, 0.5, 0.05, 1.0)[1] == pytest.approx(0.020 + 0.45 * tx)
    # Fading: the mean over equally likely gains, each held for the task (naive reference).
    faded = replace(LINK, fading=rayleigh_points(8))
    acc, e, _ = predict(OPTS[1], faded, 0.5, 0.05, cut)
    accs, es = [], []
    for x in faded.fading:
        r = shannon_rate_bps(0.5, W, 0.05, 1e-13 * x, N0)
        need = 8 * 2000 / r
        t = min(need, tx / 2)
        accs.append(OPTS[1].accuracy_at(t / need))
        es.append(0.020 + 0.05 * t)
    assert acc == pytest.approx(np.mean(accs)) and e == pytest.approx(np.mean(es))
    # Water-filling around a low p_ref falls silent in deep fades: outages cost accuracy.
    low_track = predict(OPTS[1], faded, 0.5, 0.003, cut, tracking=True)[0]
    low_const = predict(OPTS[1], faded, 0.5, 0.003, cut, tracking=False)[0]
    assert low_track != low_const


def test_choose_task_breaks_ties_by_energy() -> None:
    powers = [0.01, 0.03, 0.1]
    # With an empty queue every power that gets the whole feature through ties on accuracy:
    # the cheapest of them wins, not the first listed.
    c = choose_task(OPTS[:2], LINK, 0.5, q_j=0.0, v=1.0, deadline_s=10.0, powers_w=powers)
    options = [(predict(o, LINK, 0.5, p, 10.0)[1], o.name, p) for o in OPTS[:2] for p in powers
               if predict(o, LINK, 0.5, p, 10.0)[0] == pytest.approx(0.95)]
    assert (c.option.name, c.p_ref_w) == min(options)[1:]


def test_stop_rule_thresholds() -> None:
    from ondevice.dnn.enachi import min_stop_fraction, pooled_entropy_threshold

    fr = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]
    ent = [0.1, 0.6, 0.9, 0.5, 0.2, 0.1]  # confident on the mean feature, then evidence
    assert min_stop_fraction(fr, ent) == 0.25
    table_e, table_a = [0.01, 0.1, 0.5, 1.0], [1.0, 0.99, 0.9, 0.7]
    assert pooled_entropy_threshold(table_e, table_a, 0.95) == 0.1
    assert pooled_entropy_threshold(table_e, table_a, 0.999) == 0.01
    assert pooled_entropy_threshold(table_e, table_a, 1.01) == 0.0  # never stop
