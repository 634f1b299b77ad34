"""Placing a session: which of several edges a new session should go to.

The API (pure except ``async_probe``)::

    load = await async_probe(http, "http://edge-a:8470", token=None, fingerprint=None)
    order = rank([load_a, load_b], need_kv_cells=600, rng=random.Random(seed))  # best first
    expected_wait_ms(load_a, need_kv_cells=600)  # inf: unusable (why: ``unusable_reason``)

``EdgeLoad`` is an edge's load as the device sees it: from its ``GET /v1/info``
(``async_probe``) or from its zeroconf record (``from_record``).

The rule. A new session's first round waits, on average, for the round trip and for the work
already queued on the edge. The edge's engine serves the open sessions' frames in steps of
``step_ms`` each; in the worst case (the serial scheduler, every open session with a frame in
hand) the new frame waits for one step per open session, and batching only shrinks that by a
factor common to the edges of one fleet. So::

    expected_wait_ms = rtt_ms + sessions * step_ms

with ``step_ms`` the edge's step time when its ``/v1/info`` reports one
(``engine.mean_step_ms``), else ``DEFAULT_STEP_MS``, and ``rtt_ms`` the measured round trip
(``DEFAULT_RTT_MS`` when none was measured). An edge that is draining, full
(``sessions >= capacity``) or without ``need_kv_cells`` free KV cells (when it reports them)
is unusable: ``inf``.

Today's ``edge-server`` reports no step time, on purpose: a step time measured on an edge
that shares its cores is noisy, and in ``sessions * step_ms`` a noise of more than a third
alone would split 8 devices 5/3 over two equal edges. So real edges are priced with one
``DEFAULT_STEP_MS``: placement is by open sessions, then RTT.
The fleet simulator passes each edge profile's step time (``ondevice/bench/_fleet_sim.py``),
where it is exact.

``rank`` orders the usable edges by expected wait, and shuffles edges within a near tie
(``TIE_FRACTION`` of the best of the group, or ``TIE_MS``, whichever is larger) with the
given ``random.Random``: devices that start together spread over equal edges instead of all
picking the one whose RTT happened to measure a little lower.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from ondevice.common import wire
from ondevice.common.discovery_record import EdgeRecord
from ondevice.edge.client import client_ssl

PROBES = 3  # GET /v1/info per probe; the RTT is the minimum (the others may pay for connecting)
DEFAULT_STEP_MS = 25.0  # ms: an engine step when the edge reports none (a 1B-class CPU decode)
DEFAULT_RTT_MS = 5.0  # ms: a LAN round trip, when none was measured
TIE_FRACTION = 0.05  # expected waits within 5 % of each other are a tie ...
TIE_MS = 1.0  # ms: ... as are those within a millisecond (RTT noise on a LAN)


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeLoad:
    """An edge's load as this device sees it. ``free_kv_cells``, ``rtt_ms`` and ``step_ms``
    are None when unknown (not reported, not measured)."""

    url: str
    sessions: int
    capacity: int
    free_kv_cells: int | None = None
    rtt_ms: float | None = None
    step_ms: float | None = None  # the engine's mean step time
    draining: bool = False

    @classmethod
    def from_info(cls, url: str, info: dict[str, Any], *, rtt_ms: float | None = None
                  ) -> EdgeLoad:
        """From an edge's ``/v1/info`` JSON; raises ValueError when it is not one."""
        try:
            engine = info.get("engine") or {}
            kv_total, kv_used = engine.get("kv_tokens"), engine.get("kv_used")
            step = engine.get("mean_step_ms")
            return cls(
                url=url,
                sessions=int(info["sessions"]),
                capacity=int(info["max_sessions"]),
                free_kv_cells=(int(kv_total) - int(kv_used)
                               if kv_total is not None and kv_used is not None else None),
                rtt_ms=rtt_ms,
                step_ms=float(step) if step is not None else None,
                draining=info.get("state") == "draining",
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"edge {url}: /v1/info without the load fields ({exc})") from exc

    @classmethod
    def from_record(cls, rec: EdgeRecord) -> EdgeLoad:
        """From a zeroconf record (its TXT load and state, the RTT discovery measured)."""
        return cls(url=rec.url, sessions=rec.sessions, capacity=rec.capacity,
                   rtt_ms=rec.rtt_ms, draining=rec.state == "draining")


def unusable_reason(load: EdgeLoad, need_kv_cells: int = 0) -> str | None:
    """Why a new session cannot go to the edge now, or None when it can."""
    if load.draining:
        return "draining"
    if load.sessions >= load.capacity:
        return f"full ({load.sessions}/{load.capacity} sessions)"
    if load.free_kv_cells is not None and load.free_kv_cells < need_kv_cells:
        return f"{load.free_kv_cells} free KV cells, the session needs {need_kv_cells}"
    return None


def expected_wait_ms(load: EdgeLoad, need_kv_cells: int = 0) -> float:
    """Expected wait of a new session's first round on the edge, ms (the module's rule);
    ``math.inf`` when the edge cannot take the session."""
    if unusable_reason(load, need_kv_cells) is not None:
        return math.inf
    rtt_ms = load.rtt_ms if load.rtt_ms is not None else DEFAULT_RTT_MS
    step_ms = load.step_ms if load.step_ms is not None else DEFAULT_STEP_MS
    return rtt_ms + load.sessions * step_ms


def rank(loads: Sequence[EdgeLoad], *, need_kv_cells: int = 0,
         rng: random.Random | None = None) -> list[EdgeLoad]:
    """The usable edges, best (lowest expected wait) first; near ties in random order."""
    rng = rng or random.Random()
    scored = sorted(((expected_wait_ms(x, need_kv_cells), i, x) for i, x in enumerate(loads)),
                    key=lambda t: (t[0], t[1]))
    scored = [t for t in scored if math.isfinite(t[0])]
    ordered: list[EdgeLoad] = []
    i = 0
    while i < len(scored):
        head = scored[i][0]
        j = i + 1
        while j < len(scored) and scored[j][0] <= head + max(head * TIE_FRACTION, TIE_MS):
            j += 1
        group = [t[2] for t in scored[i:j]]
        rng.shuffle(group)
        ordered += group
        i = j
    return ordered


async def async_probe(http: aiohttp.ClientSession, url: str, *, token: str | None = None,
                      fingerprint: str | None = None) -> EdgeLoad:
    """The edge's load now: ``PROBES`` ``GET /v1/info``, the minimum time as ``rtt_ms`` and the
    last answer's figures. Raises ``aiohttp.ClientError``, OSError, ``asyncio.TimeoutError``
    when it does not answer, ValueError when the answer is not an edge's."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ssl = client_ssl(url, fingerprint)
    best, info = math.inf, None
    for _ in range(PROBES):
        t0 = time.perf_counter()
        async with http.get(url + wire.INFO_PATH, headers=headers, ssl=ssl) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message=resp.reason or "")
        best = min(best, (time.perf_counter() - t0) * 1e3)
        info = body
    try:
        data = json.loads(info or b"")
    except ValueError as exc:
        raise ValueError(f"edge {url}: /v1/info is not JSON") from exc
    if not isinstance(data, dict):
        raise ValueError(f"edge {url}: /v1/info is not a JSON object")
    return EdgeLoad.from_info(url, data, rtt_ms=best)


__all__ = ["DEFAULT_RTT_MS", "DEFAULT_STEP_MS", "PROBES", "TIE_FRACTION", "TIE_MS", "EdgeLoad",
           "async_probe", "expected_wait_ms", "rank", "unusable_reason"]
