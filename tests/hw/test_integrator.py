"""EnergyIntegrator against analytic traces and a naive reference."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw import EnergyIntegrator, PowerSample, counter_delta_j


def feed(integ: EnergyIntegrator, power, t0: float, t1: float, period: float) -> None:
    n = round((t1 - t0) / period)
    for k in range(n + 1):
        t = t0 + k * period
        integ.add(PowerSample(t_s=t, power_w=power(t)))


def naive_energy(ts: list[float], ps: list[float], a: float, b: float, n: int = 20000) -> float:
    """Reference: midpoint rule over the piecewise-linear interpolant, constant outside."""

    def p_at(t: float) -> float:
        if t <= ts[0]:
            return ps[0]
        if t >= ts[-1]:
            return ps[-1]
        for i in range(1, len(ts)):
            if t <= ts[i]:
                u = (t - ts[i - 1]) / (ts[i] - ts[i - 1])
                return ps[i - 1] + u * (ps[i] - ps[i - 1])
        raise AssertionError

    h = (b - a) / n
    return sum(p_at(a + (k + 0.5) * h) for k in range(n)) * h


def test_constant_power():
    integ = EnergyIntegrator(max_gap_s=0.3)
    feed(integ, lambda t: 4.0, 0.0, 10.0, 0.1)
    assert integ.energy_j(0.0, 10.0) == pytest.approx(40.0)
    assert integ.energy_j(2.05, 7.33) == pytest.approx(4.0 * 5.28)
    assert integ.coverage(0.0, 10.0) == 1.0
    assert integ.gaps(0.0, 10.0) == []


def test_ramp_is_exact_with_edges_inside_segments():
    # P = 1 + 2t: trapezoid on a linear trace is exact, including interpolated edges.
    integ = EnergyIntegrator(max_gap_s=0.5)
    feed(integ, lambda t: 1 + 2 * t, 0.0, 5.0, 0.25)
    t0, t1 = 0.37, 4.11
    exact = (t1 - t0) + (t1**2 - t0**2)
    assert integ.energy_j(t0, t1) == pytest.approx(exact, rel=1e-12)


def test_step_inside_window():
    # 2 W, then 10 W from t = 3.0 exactly on a sample; the step shows as a one-period ramp.
    integ = EnergyIntegrator(max_gap_s=0.5)
    period = 0.1
    for k in range(61):
        t = k * period
        integ.add(PowerSample(t_s=t, power_w=2.0 if t < 3.0 - 1e-9 else 10.0))
    exact = 2.0 * 3.0 + 10.0 * 3.0
    # Trapezoid error of a step: half a period times the jump, at most.
    assert integ.energy_j(0.0, 6.0) == pytest.approx(exact, abs=8.0 * period / 2 + 1e-9)
    # Windows entirely on one side of the step are exact.
    assert integ.energy_j(0.5, 2.9) == pytest.approx(2.0 * 2.4)
    assert integ.energy_j(3.0, 5.5) == pytest.approx(10.0 * 2.5)


def test_windows_shorter_than_a_sample_period_are_power_times_time():
    integ = EnergyIntegrator(max_gap_s=3.0)
    integ.add(PowerSample(t_s=0.0, power_w=5.0))
    integ.add(PowerSample(t_s=1.0, power_w=5.0))
    integ.add(PowerSample(t_s=2.0, power_w=9.0))
    assert integ.energy_j(0.2, 0.21) == pytest.approx(5.0 * 0.01)
    # inside a changing segment: the interpolated power at the window middle times its length
    e = integ.energy_j(1.5, 1.502)
    assert e == pytest.approx(7.004 * 0.002, rel=1e-9)  # P(1.501) = 7.004 W


def test_windows_nest_and_overlap_additively():
    integ = EnergyIntegrator(max_gap_s=0.3)
    feed(integ, lambda t: 3 + math.sin(t), 0.0, 10.0, 0.1)
    whole = integ.energy_j(1.0, 9.0)
    parts = integ.energy_j(1.0, 2.345) + integ.energy_j(2.345, 7.0) + integ.energy_j(7.0, 9.0)
    assert whole == pytest.approx(parts, rel=1e-12)
    assert integ.energy_j(2.0, 8.0) + integ.energy_j(1.0, 2.0) == pytest.approx(
        integ.energy_j(1.0, 8.0), rel=1e-12)


def test_window_ending_now_extrapolates_last_sample():
    integ = EnergyIntegrator(max_gap_s=0.3)
    feed(integ, lambda t: 6.0, 0.0, 1.0, 0.1)
    # 0.15 s after the last sample: extrapolated, still covered (< max_gap_s)
    assert integ.energy_j(0.5, 1.15) == pytest.approx(6.0 * 0.65)
    assert integ.coverage(0.5, 1.15) == 1.0
    # 1 s after: extrapolated, but that tail is a gap
    assert integ.energy_j(0.5, 2.0) == pytest.approx(6.0 * 1.5)
    assert integ.gaps(0.5, 2.0) == [(1.0, 2.0)]
    assert integ.coverage(0.5, 2.0) == pytest.approx(0.5 / 1.5)


def test_gap_between_samples_is_bridged_and_reported():
    integ = EnergyIntegrator(max_gap_s=0.3)
    feed(integ, lambda t: 2.0, 0.0, 1.0, 0.1)
    feed(integ, lambda t: 4.0, 3.0, 4.0, 0.1)
    # linear bridge over the 2 s gap: 2 s at the mean of 2 and 4 W
    assert integ.energy_j(0.0, 4.0) == pytest.approx(2.0 + 6.0 + 4.0)
    assert integ.gaps(0.0, 4.0) == [(1.0, 3.0)]
    assert integ.gaps(1.5, 2.5) == [(1.5, 2.5)]
    assert integ.coverage(0.0, 4.0) == pytest.approx(0.5)
    assert integ.coverage(0.0, 1.0) == 1.0


def test_break_marks_a_short_segment_as_gap():
    integ = EnergyIntegrator(max_gap_s=0.3)
    integ.add(PowerSample(t_s=0.0, power_w=1.0))
    integ.add(PowerSample(t_s=0.1, power_w=1.0))
    integ.mark_break()
    integ.add(PowerSample(t_s=0.2, power_w=1.0))
    assert integ.gaps(0.0, 0.2) == [(0.1, 0.2)]


def test_no_samples_means_zero_energy_and_no_coverage():
    integ = EnergyIntegrator(max_gap_s=0.3)
    assert integ.energy_j(0.0, 1.0) == 0.0
    assert integ.coverage(0.0, 1.0) == 0.0
    assert integ.gaps(0.0, 1.0) == [(0.0, 1.0)]


def test_out_of_order_and_non_finite_samples_are_dropped():
    integ = EnergyIntegrator(max_gap_s=0.3)
    assert integ.add(PowerSample(t_s=1.0, power_w=1.0))
    assert not integ.add(PowerSample(t_s=0.5, power_w=1.0))
    assert not integ.add(PowerSample(t_s=1.0, power_w=1.0))
    assert not integ.add(PowerSample(t_s=2.0, power_w=math.nan))
    assert len(integ) == 1


def test_counter_source_with_wraparound():
    # 7 W for 10 s from a counter that wraps at 5 J (as RAPL at max_energy_range_uj)
    integ = EnergyIntegrator(max_gap_s=0.3, counter_range_j=5.0)
    raw = 3.0
    for k in range(101):
        t = k * 0.1
        integ.add(PowerSample(t_s=t, power_w=7.0, energy_j=raw))
        raw = (raw + 0.7) % 5.0
    assert integ.energy_j(0.0, 10.0) == pytest.approx(70.0)
    assert integ.energy_j(2.05, 2.15) == pytest.approx(0.7)
    assert integ.coverage(0.0, 10.0) == 1.0


def test_counter_reset_without_range_is_a_gap():
    integ = EnergyIntegrator(max_gap_s=0.3, counter_range_j=math.inf)
    integ.add(PowerSample(t_s=0.0, power_w=2.0, energy_j=10.0))
    integ.add(PowerSample(t_s=0.1, power_w=2.0, energy_j=10.2))
    integ.add(PowerSample(t_s=0.2, power_w=2.0, energy_j=0.1))  # reset
    assert integ.energy_j(0.0, 0.2) == pytest.approx(0.4)
    assert integ.gaps(0.0, 0.2) == [(0.1, 0.2)]


def test_counter_delta():
    assert counter_delta_j(1.0, 3.5, 10.0) == 2.5
    assert counter_delta_j(9.0, 1.0, 10.0) == pytest.approx(2.0)
    assert counter_delta_j(9.0, 1.0, None) is None
    assert counter_delta_j(9.0, 1.0, math.inf) is None


def test_memory_is_bounded_by_history():
    integ = EnergyIntegrator(max_gap_s=0.05, history_s=10.0)
    feed(integ, lambda t: 1.0, 0.0, 100.0, 0.02)
    assert len(integ) <= 10.0 / 0.02 * 1.4
    assert integ.samples_total == 5001
    assert integ.energy_j(95.0, 100.0) == pytest.approx(5.0)
    # a window reaching before the retained history: extrapolated and reported as a gap
    assert integ.coverage(50.0, 100.0) < 0.5


def test_sample_rate():
    integ = EnergyIntegrator(max_gap_s=0.3)
    feed(integ, lambda t: 1.0, 0.0, 5.0, 0.05)
    assert integ.sample_rate_hz(now_s=5.0) == pytest.approx(20.0, rel=0.05)
    assert integ.powers_w(1.0, 1.1) == [1.0, 1.0, 1.0]


@settings(max_examples=60, deadline=None)
@given(
    ps=st.lists(st.floats(0.0, 50.0), min_size=2, max_size=12),
    dts=st.lists(st.floats(0.01, 0.5), min_size=11, max_size=11),
    a=st.floats(-0.5, 3.0),
    width=st.floats(0.0005, 3.0),
)
def test_matches_naive_reference(ps, dts, a, width):
    ts = [0.0]
    for dt in dts[: len(ps) - 1]:
        ts.append(ts[-1] + dt)
    integ = EnergyIntegrator(max_gap_s=1.0)
    for t, p in zip(ts, ps, strict=True):
        integ.add(PowerSample(t_s=t, power_w=p))
    b = a + width
    ref = naive_energy(ts, ps, a, b, n=4000)
    assert integ.energy_j(a, b) == pytest.approx(ref, rel=1e-4, abs=1e-6)
    mid = a + width / 3
    assert integ.energy_j(a, b) == pytest.approx(
        integ.energy_j(a, mid) + integ.energy_j(mid, b), rel=1e-9, abs=1e-12)
