"""Energy over any monotonic window from timestamped power samples or an energy counter.

Model. Between two consecutive samples power is linear (power sources) or constant at the
segment's average (counter sources), so the cumulative energy ``E(t)`` is defined for every
``t``; a window's energy is ``E(t1) - E(t0)``. This gives:

* trapezoid integration over whole segments;
* exact interpolation at window edges (a window edge inside a segment takes the linearly
  interpolated power there), so a window shorter than one sample period gets power x time;
* counters (RAPL, the sim model) differenced directly, with wraparound at ``counter_range_j``;
* nesting and overlapping windows for free: every window is a difference of the same E(t).

Outside the samples ``E`` extrapolates the first (last) power as a constant. Coverage: a
segment is *covered* when it is shorter than ``max_gap_s`` and no reconnect (``mark_break``)
happened inside it; the extrapolated head or tail of a window is covered when it is not
longer than ``max_gap_s``. Uncovered segments still contribute their trapezoid (a linear
bridge over the gap), and :meth:`coverage` says how much of the window that was.

Memory is bounded: samples older than ``history_s`` before the newest one are dropped
(amortized O(1)); at 50 Hz the default 10 minutes is 30 000 samples, about 1 MB. A window
reaching before the retained history extrapolates the oldest retained sample and counts that
part as uncovered.
"""

from __future__ import annotations

import bisect
import math
import threading

from hw._types import PowerSample

__all__ = ["DEFAULT_HISTORY_S", "EnergyIntegrator", "counter_delta_j"]

DEFAULT_HISTORY_S = 600.0  # s, retained sample history (10 minutes)


def counter_delta_j(prev_j: float, cur_j: float, range_j: float | None) -> float | None:
    """Energy between two readings of a wrapping counter, in joules.

    A counter that went down wrapped once at ``range_j`` (RAPL's ``max_energy_range_uj``;
    at most one wrap between reads, which holds when reads are minutes apart at most).
    Returns ``None`` when the counter went down and has no known range (a reset).
    """
    if cur_j >= prev_j:
        return cur_j - prev_j
    if range_j is None or not math.isfinite(range_j) or range_j <= 0:
        return None
    return cur_j + range_j - prev_j


class EnergyIntegrator:
    """Joules, coverage and gaps over monotonic windows. Thread-safe.

    ``max_gap_s``: longest sample spacing still counted as covered (a couple of periods).
    ``counter_range_j``: ``None`` for power samples; for a counter source pass the wrap range
    in joules (``math.inf`` for a counter that never wraps) and give each sample's counter in
    ``PowerSample.energy_j``.
    """

    def __init__(
        self,
        *,
        max_gap_s: float,
        history_s: float = DEFAULT_HISTORY_S,
        counter_range_j: float | None = None,
    ) -> None:
        if max_gap_s <= 0 or history_s <= 0:
            raise ValueError("max_gap_s and history_s must be > 0")
        self.max_gap_s = max_gap_s
        self.history_s = history_s
        self.counter_range_j = counter_range_j
        self._lock = threading.Lock()
        self._t: list[float] = []  # s, sample times, strictly increasing
        self._p: list[float] = []  # W, power at each sample (segment average for counters)
        self._e: list[float] = []  # J, cumulative energy at each sample
        self._gaps: list[tuple[float, float]] = []  # uncovered segments, in time order
        self._raw_prev: float | None = None  # last raw counter reading
        self._break_pending = False
        self.samples_total = 0

    @property
    def counter_mode(self) -> bool:
        return self.counter_range_j is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._t)

    # -- feeding -------------------------------------------------------------------------

    def mark_break(self) -> None:
        """The source lost samples (reconnect): the next segment counts as a gap."""
        with self._lock:
            self._break_pending = True

    def add(self, sample: PowerSample) -> bool:
        """Append a sample; returns False if it was dropped (not after the last one)."""
        t, p = sample.t_s, sample.power_w
        if not (math.isfinite(t) and math.isfinite(p)):
            return False
        with self._lock:
            if self._t and t <= self._t[-1]:
                return False
            if self.counter_mode:
                raw = sample.energy_j
                if raw is None or not math.isfinite(raw):
                    return False
                if not self._t:
                    e = 0.0
                else:
                    assert self._raw_prev is not None
                    delta = counter_delta_j(self._raw_prev, raw, self.counter_range_j)
                    if delta is None:  # counter reset: bridge with the last power, as a gap
                        delta = self._p[-1] * (t - self._t[-1])
                        self._break_pending = True
                    e = self._e[-1] + delta
                self._raw_prev = raw
            else:
                e = 0.0 if not self._t else self._e[-1] + (t - self._t[-1]) * (p + self._p[-1]) / 2
            if self._t and (self._break_pending or t - self._t[-1] > self.max_gap_s):
                self._gaps.append((self._t[-1], t))
            self._break_pending = False
            self._t.append(t)
            self._p.append(p)
            self._e.append(e)
            self.samples_total += 1
            self._trim()
        return True

    def _trim(self) -> None:
        horizon = self._t[-1] - self.history_s
        if self._t[0] >= horizon:
            return
        k = bisect.bisect_left(self._t, horizon)
        # Trim in chunks so the cost is amortized O(1) per sample.
        if k < 64 and k < len(self._t) // 4:
            return
        del self._t[:k], self._p[:k], self._e[:k]
        g = 0
        while g < len(self._gaps) and self._gaps[g][1] <= self._t[0]:
            g += 1
        del self._gaps[:g]

    # -- queries -------------------------------------------------------------------------

    @property
    def latest_t_s(self) -> float | None:
        with self._lock:
            return self._t[-1] if self._t else None

    def _energy_at(self, t: float) -> float:
        """Cumulative energy at ``t`` (caller holds the lock, at least one sample)."""
        ts, ps, es = self._t, self._p, self._e
        if t <= ts[0]:
            return es[0] - ps[0] * (ts[0] - t)
        if t >= ts[-1]:
            return es[-1] + ps[-1] * (t - ts[-1])
        i = bisect.bisect_right(ts, t)  # ts[i-1] <= t < ts[i]
        t0, t1 = ts[i - 1], ts[i]
        u = t - t0
        dt = t1 - t0
        if self.counter_mode:
            return es[i - 1] + (es[i] - es[i - 1]) * u / dt
        p0, p1 = ps[i - 1], ps[i]
        p_t = p0 + (p1 - p0) * u / dt
        return es[i - 1] + u * (p0 + p_t) / 2

    def energy_j(self, t0_s: float, t1_s: float) -> float:
        """Joules over ``[t0_s, t1_s]`` (monotonic seconds); 0.0 with no samples."""
        if t1_s <= t0_s:
            return 0.0
        with self._lock:
            if not self._t:
                return 0.0
            return self._energy_at(t1_s) - self._energy_at(t0_s)

    def mean_power_w(self, t0_s: float, t1_s: float) -> float:
        """Average power over the window (0.0 for an empty window)."""
        if t1_s <= t0_s:
            return 0.0
        return self.energy_j(t0_s, t1_s) / (t1_s - t0_s)

    def gaps(self, t0_s: float, t1_s: float) -> list[tuple[float, float]]:
        """Uncovered intervals inside ``[t0_s, t1_s]``, clipped, merged, in time order."""
        if t1_s <= t0_s:
            return []
        with self._lock:
            if not self._t:
                return [(t0_s, t1_s)]
            raw: list[tuple[float, float]] = []
            first, last = self._t[0], self._t[-1]
            if first - t0_s > self.max_gap_s:
                raw.append((t0_s, first))
            # Gap segments overlapping the window: they are sorted by start and disjoint.
            k = bisect.bisect_left(self._gaps, (t0_s, -math.inf))
            if k > 0 and self._gaps[k - 1][1] > t0_s:
                k -= 1
            while k < len(self._gaps) and self._gaps[k][0] < t1_s:
                raw.append(self._gaps[k])
                k += 1
            if t1_s - last > self.max_gap_s:
                raw.append((last, t1_s))
        out: list[tuple[float, float]] = []
        for a, b in raw:
            a, b = max(a, t0_s), min(b, t1_s)
            if b <= a:
                continue
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        return out

    def coverage(self, t0_s: float, t1_s: float) -> float:
        """Fraction of ``[t0_s, t1_s]`` covered by real samples, in ``[0, 1]``.

        An empty window is covered (1.0) when its instant is not inside a gap.
        """
        if t1_s < t0_s:
            return 0.0
        if t1_s == t0_s:
            if len(self) == 0:
                return 0.0
            eps = 1e-9
            return 0.0 if self.gaps(t0_s - eps, t0_s + eps) else 1.0
        uncovered = sum(b - a for a, b in self.gaps(t0_s, t1_s))
        return min(1.0, max(0.0, 1.0 - uncovered / (t1_s - t0_s)))

    def powers_w(self, t0_s: float, t1_s: float) -> list[float]:
        """Power of the retained samples taken inside ``[t0_s, t1_s]``."""
        with self._lock:
            a = bisect.bisect_left(self._t, t0_s)
            b = bisect.bisect_right(self._t, t1_s)
            return self._p[a:b]

    def sample_rate_hz(self, now_s: float, span_s: float = 2.0) -> float:
        """Samples per second over the last ``span_s`` seconds before ``now_s``."""
        with self._lock:
            k = bisect.bisect_left(self._t, now_s - span_s)
            n = len(self._t) - k
            if n < 2:
                return 0.0
            return (n - 1) / max(self._t[-1] - self._t[k], 1e-9)
