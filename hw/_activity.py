"""What the client is doing, as exact cumulative counters, for the ``sim`` power model.

The client (drafting threads, the network sender) reports busy cores and radio bytes; the
``sim`` meter turns those into joules. Real meters ignore it.

Busy time is integrated exactly: every change of the busy-core count is logged with its
``time.monotonic()`` timestamp and the cumulative busy-core-seconds up to it, so the busy
energy of any window can be computed exactly, even a window shorter than a sim sample
period. The log is bounded (``max_events``); windows that start before its oldest retained
event fall back to the sim meter's sampled counter.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["MSS_BYTES", "Activity", "ActivityCounters"]

# One TCP segment's payload on Ethernet/Wi-Fi (1500 B MTU - 20 B IPv4 - 20 B TCP); used to
# turn a message of n bytes into ceil(n / MSS_BYTES) radio packets for per-packet energy.
MSS_BYTES = 1460
# Default bound of the change log: about 18 min at 30 changes per second.
DEFAULT_MAX_EVENTS = 32768


@dataclass(frozen=True, slots=True)
class ActivityCounters:
    """Cumulative counters at one instant, all counted from the Activity's creation."""

    t_s: float
    busy_cores: float  # busy cores at t_s
    busy_core_s: float  # integral of busy cores over time, core-seconds
    tx_bytes: int
    rx_bytes: int
    tx_packets: int
    rx_packets: int


def _packets(n_bytes: int) -> int:
    return -(-n_bytes // MSS_BYTES)


class Activity:
    """What the client is doing, read by the ``sim`` meter (real meters ignore it). Thread-safe.

    All methods may be called from any thread. ``clock`` must be ``time.monotonic`` or share
    its epoch, because sim energy windows are given in monotonic seconds.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        if max_events < 2:
            raise ValueError("max_events must be at least 2")
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._now = ActivityCounters(now, 0.0, 0.0, 0, 0, 0, 0)
        self._log: deque[ActivityCounters] = deque([self._now], maxlen=max_events)
        self._trimmed = False

    # -- writers -------------------------------------------------------------------------

    def set_busy_cores(self, n: float) -> None:
        """Set the number of busy cores from now on (fractions allowed, ``n >= 0``)."""
        n = float(n)
        if not math.isfinite(n) or n < 0:
            raise ValueError(f"busy cores must be a finite number >= 0, got {n!r}")
        self._update(busy_cores=n)

    @contextlib.contextmanager
    def busy(self, n: float = 1.0) -> Iterator[None]:
        """Set ``n`` busy cores for the ``with`` block, then restore the previous count."""
        previous = self.busy_cores
        self.set_busy_cores(n)
        try:
            yield
        finally:
            self.set_busy_cores(previous)

    def add_tx_bytes(self, n: int) -> None:
        """Count one transmitted message of ``n`` bytes (``ceil(n / MSS_BYTES)`` packets)."""
        self._update(tx=self._check_bytes(n))

    def add_rx_bytes(self, n: int) -> None:
        """Count one received message of ``n`` bytes (``ceil(n / MSS_BYTES)`` packets)."""
        self._update(rx=self._check_bytes(n))

    @staticmethod
    def _check_bytes(n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"byte count must be an int >= 0, got {n!r}")
        return n

    def _update(self, *, busy_cores: float | None = None, tx: int = 0, rx: int = 0) -> None:
        with self._lock:
            now = max(self._clock(), self._now.t_s)
            c = self._advance(self._now, now)
            c = ActivityCounters(
                now,
                c.busy_cores if busy_cores is None else busy_cores,
                c.busy_core_s,
                c.tx_bytes + tx,
                c.rx_bytes + rx,
                c.tx_packets + _packets(tx),
                c.rx_packets + _packets(rx),
            )
            self._now = c
            if len(self._log) == self._log.maxlen:
                self._trimmed = True
            self._log.append(c)

    # -- readers -------------------------------------------------------------------------

    @property
    def busy_cores(self) -> float:
        """Busy cores right now."""
        with self._lock:
            return self._now.busy_cores

    def counters(self) -> ActivityCounters:
        """Cumulative counters now."""
        with self._lock:
            return self._advance(self._now, max(self._clock(), self._now.t_s))

    def counters_at(self, t_s: float) -> ActivityCounters | None:
        """Exact cumulative counters at monotonic time ``t_s``.

        Before the Activity was created everything is zero. Returns ``None`` when ``t_s`` is
        older than the oldest retained change (the log was trimmed). A ``t_s`` in the future
        extrapolates the current busy count.
        """
        with self._lock:
            log = self._log
            if t_s < log[0].t_s:
                if self._trimmed:
                    return None
                return ActivityCounters(t_s, 0.0, 0.0, 0, 0, 0, 0)
            # Binary search for the last change at or before t_s (deque indexing is cheap
            # near the ends and O(n/64) in the middle, fine for a few thousand entries).
            lo, hi = 0, len(log) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if log[mid].t_s <= t_s:
                    lo = mid
                else:
                    hi = mid - 1
            return self._advance(log[lo], t_s)

    @staticmethod
    def _advance(c: ActivityCounters, t_s: float) -> ActivityCounters:
        """Counters at ``t_s >= c.t_s`` given no change in between."""
        return ActivityCounters(
            t_s,
            c.busy_cores,
            c.busy_core_s + c.busy_cores * (t_s - c.t_s),
            c.tx_bytes,
            c.rx_bytes,
            c.tx_packets,
            c.rx_packets,
        )
