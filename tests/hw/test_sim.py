"""Activity counters and the ``sim`` power model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from _waiting import wait_until

from hw import Activity, open_meter
from hw._activity import MSS_BYTES
from hw._sim import SimMeter, SimModel


class ManualClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_busy_core_seconds_are_exact():
    clock = ManualClock()
    a = Activity(clock=clock)
    clock.t = 101.0
    a.set_busy_cores(2)
    clock.t = 101.5
    with a.busy(4):
        clock.t = 101.503  # a 3 ms block
    clock.t = 102.0
    a.set_busy_cores(0)
    clock.t = 103.0
    c = a.counters()
    assert c.busy_core_s == pytest.approx(2 * 0.5 + 4 * 0.003 + 2 * 0.497)
    assert c.busy_cores == 0
    assert a.counters_at(101.25).busy_core_s == pytest.approx(0.5)
    assert a.counters_at(101.5015).busy_core_s == pytest.approx(1.0 + 4 * 0.0015)
    assert a.counters_at(50.0).busy_core_s == 0.0  # before creation: nothing happened
    assert a.counters_at(110.0).busy_core_s == pytest.approx(c.busy_core_s)


def test_busy_restores_previous_count():
    a = Activity()
    a.set_busy_cores(1.5)
    with a.busy(3.0):
        assert a.busy_cores == 3.0
        with a.busy(0.5):
            assert a.busy_cores == 0.5
        assert a.busy_cores == 3.0
    assert a.busy_cores == 1.5


def test_bytes_and_packets():
    a = Activity()
    a.add_tx_bytes(3000)  # 3 segments of <= 1460 B
    a.add_tx_bytes(10)
    a.add_rx_bytes(MSS_BYTES)
    a.add_rx_bytes(0)
    c = a.counters()
    assert (c.tx_bytes, c.tx_packets, c.rx_bytes, c.rx_packets) == (3010, 4, 1460, 1)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            a.add_tx_bytes(bad)
    with pytest.raises(ValueError):
        a.set_busy_cores(float("nan"))


def test_thread_safe_counting():
    a = Activity()

    def work() -> None:
        for _ in range(2000):
            a.add_tx_bytes(10)
            with a.busy(1):
                a.add_rx_bytes(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c = a.counters()
    assert (c.tx_bytes, c.rx_bytes) == (80000, 8000)


def test_trimmed_log_reports_unknown_past():
    clock = ManualClock()
    a = Activity(clock=clock, max_events=4)
    for k in range(10):
        clock.t += 1
        a.set_busy_cores(k % 2)
    assert a.counters_at(101.5) is None
    assert a.counters_at(clock.t) is not None


def test_model_defaults_are_the_cited_pi5_figures():
    m = SimModel()
    assert (m.idle_w, m.core_w) == (3.3, pytest.approx((12.0 - 3.3) / 4))
    assert (m.tx_j_per_byte, m.tx_j_per_packet) == (1.9e-6, 420e-6)
    assert (m.rx_j_per_byte, m.rx_j_per_packet) == (0.42e-6, 330e-6)
    with pytest.raises(ValueError):
        SimModel(idle_w=-1)


async def test_sub_sample_busy_block_is_counted_in_full():
    activity = Activity()
    async with open_meter("sim:idle_w=2.0,core_w=1.5", activity=activity) as meter:
        assert meter.kind == "sim" and meter.measured is False
        await wait_until(lambda: meter.latest is not None)
        t0 = time.monotonic()
        with activity.busy(2.0):
            inner0 = time.monotonic()
            time.sleep(0.004)  # 4 ms of "drafting", well under the 20 ms sample period
            inner1 = time.monotonic()
        t1 = time.monotonic()
        e = meter.energy_j(t0, t1)
        lo = 2.0 * (t1 - t0) + 1.5 * 2.0 * (inner1 - inner0)
        hi = 2.0 * (t1 - t0) + 1.5 * 2.0 * (t1 - t0)
        assert lo <= e <= hi
        assert meter.coverage(t0, t1) == 1.0


async def test_radio_and_busy_energy_over_nested_windows():
    activity = Activity()
    model = SimModel(idle_w=3.0, core_w=2.0, tx_j_per_byte=1e-3, tx_j_per_packet=0.01,
                     rx_j_per_byte=5e-4, rx_j_per_packet=0.02)
    async with SimMeter(model=model, activity=activity) as meter:
        await wait_until(lambda: meter.latest is not None)
        first = meter.latest
        t0 = time.monotonic()
        activity.add_tx_bytes(2000)  # 2 packets: 2 J + 0.02 J
        t_mid = time.monotonic()
        activity.add_rx_bytes(100)  # 1 packet: 0.05 J + 0.02 J
        await asyncio.sleep(0.1)
        t1 = time.monotonic()
        outer = meter.energy_j(t0, t1)
        assert outer == pytest.approx(3.0 * (t1 - t0) + 2.02 + 0.07, rel=1e-9)
        assert meter.energy_j(t0, t_mid) + meter.energy_j(t_mid, t1) == pytest.approx(outer)
        # the sampled counter agrees with the exact model between samples
        await wait_until(lambda: meter.latest.t_s > t1)
        last = meter.latest
        assert meter.integrator.energy_j(first.t_s, last.t_s) == pytest.approx(
            meter.energy_j(first.t_s, last.t_s), rel=1e-9)
        assert last.energy_j - first.energy_j == pytest.approx(
            meter.energy_j(first.t_s, last.t_s), rel=1e-9)
        assert 30 < meter.sample_rate_hz < 70  # 50 Hz
