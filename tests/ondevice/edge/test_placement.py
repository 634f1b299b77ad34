"""Placement: the expected-wait rule against hand-computed cases, the ranking's exclusions,
order and tie-spreading, and the probe against a real edge's ``/v1/info`` shape."""

from __future__ import annotations

import math
import random
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from ondevice.common.discovery_record import EdgeRecord
from ondevice.edge import placement
from ondevice.edge.placement import EdgeLoad, async_probe, expected_wait_ms, rank


def load(url: str = "http://a:1", *, sessions: int = 0, capacity: int = 8,
         **kw: object) -> EdgeLoad:
    return EdgeLoad(url=url, sessions=sessions, capacity=capacity, **kw)  # type: ignore[arg-type]


def test_expected_wait_is_rtt_plus_one_step_per_open_session() -> None:
    assert expected_wait_ms(load(sessions=3, rtt_ms=2.0, step_ms=10.0)) == 32.0
    assert expected_wait_ms(load(sessions=0, rtt_ms=7.5, step_ms=10.0)) == 7.5
    # unknown step time and RTT: the documented defaults
    assert expected_wait_ms(load(sessions=2)) == (
        placement.DEFAULT_RTT_MS + 2 * placement.DEFAULT_STEP_MS)


@pytest.mark.parametrize("edge, need, why", [
    (load(draining=True), 0, "draining"),
    (load(sessions=8, capacity=8), 0, "full (8/8 sessions)"),
    (load(sessions=9, capacity=8), 0, "full"),
    (load(free_kv_cells=100), 101, "100 free KV cells, the session needs 101"),
])
def test_unusable_edges_wait_forever(edge: EdgeLoad, need: int, why: str) -> None:
    assert expected_wait_ms(edge, need) == math.inf
    reason = placement.unusable_reason(edge, need)
    assert reason is not None and reason.startswith(why)


def test_kv_room_exactly_enough_is_usable() -> None:
    assert expected_wait_ms(load(free_kv_cells=100, rtt_ms=1.0), 100) == 1.0
    assert expected_wait_ms(load(free_kv_cells=None, rtt_ms=1.0), 10**9) == 1.0  # unknown


def test_rank_excludes_unusable_and_orders_by_wait() -> None:
    edges = [
        load("http://busy:1", sessions=4, rtt_ms=1.0, step_ms=10.0),  # 41
        load("http://full:1", sessions=8, rtt_ms=0.1),
        load("http://drain:1", rtt_ms=0.1, draining=True),
        load("http://far:1", sessions=0, rtt_ms=30.0, step_ms=10.0),  # 30
        load("http://kv:1", rtt_ms=0.1, free_kv_cells=10),
        load("http://idle:1", sessions=1, rtt_ms=1.0, step_ms=10.0),  # 11
    ]
    order = rank(edges, need_kv_cells=64, rng=random.Random(0))
    assert [e.url for e in order] == ["http://idle:1", "http://far:1", "http://busy:1"]


def test_lower_load_beats_lower_rtt_and_rtt_breaks_equal_load() -> None:
    a = load("http://a:1", sessions=2, rtt_ms=1.0, step_ms=20.0)  # 41
    b = load("http://b:1", sessions=1, rtt_ms=15.0, step_ms=20.0)  # 35
    assert [e.url for e in rank([a, b], rng=random.Random(1))] == ["http://b:1", "http://a:1"]
    near = load("http://near:1", sessions=1, rtt_ms=2.0, step_ms=20.0)  # 22
    far = load("http://far:1", sessions=1, rtt_ms=9.0, step_ms=20.0)  # 29: not a tie
    for seed in range(20):
        assert rank([far, near], rng=random.Random(seed))[0].url == "http://near:1"


def test_near_ties_spread_over_seeds_and_are_seedable() -> None:
    # 100 ms and 104 ms are within 5 %; 120 ms is not.
    edges = [load("http://a:1", rtt_ms=100.0), load("http://b:1", rtt_ms=104.0),
             load("http://c:1", rtt_ms=120.0)]
    firsts = Counter(rank(edges, rng=random.Random(s))[0].url for s in range(200))
    assert set(firsts) == {"http://a:1", "http://b:1"}
    assert min(firsts.values()) > 60  # about half each (binomial(200, 1/2): > 60 by 5 sigma)
    for s in range(50):
        assert rank(edges, rng=random.Random(s))[-1].url == "http://c:1"
        assert rank(edges, rng=random.Random(s)) == rank(edges, rng=random.Random(s))


def test_sub_millisecond_rtts_tie() -> None:
    edges = [load("http://a:1", rtt_ms=0.2), load("http://b:1", rtt_ms=0.9)]
    firsts = {rank(edges, rng=random.Random(s))[0].url for s in range(50)}
    assert firsts == {"http://a:1", "http://b:1"}


def test_loads_from_info_and_record() -> None:
    info = {"sessions": 2, "max_sessions": 4, "state": "draining",
            "engine": {"kv_tokens": 4096, "kv_used": 1000, "mean_step_ms": 12.5}}
    got = EdgeLoad.from_info("http://e:1", info, rtt_ms=3.0)
    assert got == EdgeLoad(url="http://e:1", sessions=2, capacity=4, free_kv_cells=3096,
                           rtt_ms=3.0, step_ms=12.5, draining=True)
    bare = EdgeLoad.from_info("http://e:1", {"sessions": 0, "max_sessions": 8, "engine": None})
    assert (bare.free_kv_cells, bare.step_ms, bare.draining) == (None, None, False)
    with pytest.raises(ValueError, match="load fields"):
        EdgeLoad.from_info("http://e:1", {"model": "x"})
    rec = EdgeRecord(name="e", host="10.0.0.2", port=8470, version=1, caps=["llm"], models=[],
                     vocab_hash="v", sessions=3, capacity=8, auth=False, tls=False,
                     state="draining", rtt_ms=4.0)
    assert EdgeLoad.from_record(rec) == EdgeLoad(url="http://10.0.0.2:8470", sessions=3,
                                                 capacity=8, rtt_ms=4.0, draining=True)


async def test_probe_reads_info_and_measures_rtt() -> None:
    seen: list[str | None] = []

    async def info(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"sessions": 1, "max_sessions": 8, "state": "serving",
                                  "engine": {"kv_tokens": 2048, "kv_used": 48}})

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/v1/info", info)
    bad = web.Application()
    bad.router.add_get("/v1/info", broken)
    runners = [web.AppRunner(app), web.AppRunner(bad)]
    urls = []
    for r in runners:
        await r.setup()
        site = web.TCPSite(r, "127.0.0.1", 0)
        await site.start()
        urls.append(f"http://127.0.0.1:{r.addresses[0][1]}")
    try:
        async with aiohttp.ClientSession() as http:
            got = await async_probe(http, urls[0], token="tok")
            with pytest.raises(aiohttp.ClientResponseError):
                await async_probe(http, urls[1])
    finally:
        for r in runners:
            await r.cleanup()
    assert seen == ["Bearer tok"] * placement.PROBES
    assert (got.url, got.sessions, got.capacity, got.free_kv_cells, got.draining) == (
        urls[0], 1, 8, 2000, False)
    assert got.rtt_ms is not None and 0 < got.rtt_ms < 5000
