"""Zeroconf discovery on 127.0.0.1: ranking, RTT, choosing among edges, failover.

Every zeroconf instance here binds 127.0.0.1 (edge ``--interface 127.0.0.1``, device
``interfaces=("127.0.0.1",)``): nothing goes out on the machine's real interfaces.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from _edge import SITE, KillEdgeAfter, Reference, edge_server

from ondevice.common import wire
from ondevice.common.discovery_record import EdgeRecord, decode_txt, encode_txt
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel
from ondevice.edge.discovery import EdgeBrowser, async_discover, rank_edges
from ondevice.llm.generate import EdgePlan, GenerateRequest, generate
from ondevice.llm.policies import FixedPolicy

LO = "127.0.0.1"
SMALL = LlamaConfig(n_ctx=512, n_threads=1)


def _rec(name: str, **kw: object) -> EdgeRecord:
    base = dict(name=name, host=LO, port=1, version=wire.PROTOCOL_VERSION, caps=["llm"],
                models=["t.gguf"], vocab_hash="v", sessions=0, capacity=8, auth=False,
                tls=False, rtt_ms=1.0)
    base.update(kw)
    return EdgeRecord(**base)  # type: ignore[arg-type]


def test_txt_roundtrip() -> None:
    txt = encode_txt(version=1, caps=["llm", "dnn"], models=["a.gguf"], vocab_hash="abc",
                     sessions=3, capacity=8, auth=True, fingerprint="ff00", site="lab-2")
    rec = decode_txt("e._coinfer._tcp.local.", LO, 9, {k.encode(): v.encode()
                                                        for k, v in txt.items()})
    assert (rec.caps, rec.models, rec.vocab_hash, rec.sessions, rec.capacity) == (
        ["llm", "dnn"], ["a.gguf"], "abc", 3, 8)
    assert rec.auth and rec.tls and rec.fingerprint == "ff00" and rec.site == "lab-2"
    assert rec.url == "https://127.0.0.1:9"
    with pytest.raises(ValueError, match="malformed"):
        decode_txt("x", LO, 1, {b"load": b"lots"})


def test_rank_edges_filters_and_orders() -> None:
    edges = [
        _rec("slow", rtt_ms=30.0),
        _rec("fast", rtt_ms=2.0),
        _rec("busy", sessions=6, rtt_ms=0.5),
        _rec("full", sessions=8),
        _rec("othervocab", vocab_hash="w"),
        _rec("old", version=0),
        _rec("dnnonly", caps=["dnn"]),
        _rec("dead", rtt_ms=None, extra={"error": "ConnectionRefusedError"}),
        _rec("leaving", rtt_ms=0.1, state="draining"),
    ]
    usable, rejected = rank_edges(edges, vocab_hash="v")
    assert [e.name for e in usable] == ["fast", "slow", "busy"]
    reasons = {r.record.name: r.reason for r in rejected}
    assert set(reasons) == {"full", "othervocab", "old", "dnnonly", "dead", "leaving"}
    assert "vocabulary" in reasons["othervocab"] and "full" in reasons["full"]
    assert reasons["leaving"] == "draining"
    usable, rejected = rank_edges(edges, vocab_hash="v", exclude=["http://127.0.0.1:1"])
    assert usable == []


@pytest.fixture(scope="module")
def draft_info(fixture_models: tuple[Path, Path]) -> tuple[str, str]:
    with LlamaModel(fixture_models[1]) as m:
        return m.vocab_hash(), m.model_id


async def _wait_for(url: str, pred, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            async with http.get(url + wire.INFO_PATH) as resp:
                if pred(await resp.json()):
                    return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never reached the expected state")


async def test_device_picks_compatible_least_loaded_edge(
    fixture_models: tuple[Path, Path], gemma_path: Path, draft_info: tuple[str, str]
) -> None:
    target, _ = fixture_models
    with edge_server(gemma_path, "--n-ctx", "256", advertise=True) as other, \
            edge_server(target, "--max-sessions", "4", advertise=True) as busy, \
            edge_server(target, "--emulate-delay-ms", "40", advertise=True) as free:
        # Load the "busy" edge: three open sessions of four. Its expected wait, a few ms of
        # RTT plus three engine steps (placement.DEFAULT_STEP_MS each), is above the idle
        # edge's 40 ms of RTT.
        async with aiohttp.ClientSession() as http:
            sockets = []
            for _ in range(3):
                ws = await http.ws_connect(busy.url.replace("http", "ws") + wire.WS_PATH)
                sockets.append(ws)
                await ws.send_bytes(wire.encode(wire.Open(np.array([1, 2], np.int32),
                                                          draft_info[0], "d", 0.0, 0, 4)))
                assert isinstance(wire.decode((await ws.receive()).data), wire.Opened)
            await asyncio.sleep(1.0)  # the TXT refresh is debounced by 0.5 s
            records = await async_discover(timeout_s=2.0, interfaces=[LO], site=SITE)
            by_url = {r.url: r for r in records}
            assert {other.url, busy.url, free.url} <= set(by_url)
            assert by_url[busy.url].sessions == 3 and by_url[busy.url].capacity == 4
            assert by_url[free.url].rtt_ms >= 40.0  # the injected delay shows in the RTT
            assert by_url[busy.url].rtt_ms < 40.0
            usable, rejected = rank_edges(records, vocab_hash=draft_info[0])
            assert usable[0].url == free.url  # less loaded wins over faster
            assert any(r.record.url == other.url and "vocabulary" in r.reason for r in rejected)
            # The full pipeline: no --edge, discovery on loopback.
            report = await generate(
                str(fixture_models[1]), GenerateRequest(prompt="pick me", max_tokens=12),
                FixedPolicy(3), plan=EdgePlan(discover=True, interfaces=(LO,), site=SITE,
                             browse_s=3.0),
                llama_config=SMALL,
            )
            for ws in sockets:
                await ws.close()
    assert report.edge == free.url and not report.degraded
    assert any(r["url"] == other.url for r in report.rejected_edges)


def test_cli_discover_json(fixture_models: tuple[Path, Path]) -> None:
    with edge_server(fixture_models[0], "--emulate-delay-ms", "25", advertise=True) as e:
        done = subprocess.run(
            [sys.executable, "-m", "ondevice.cli", "discover", "--timeout", "1.5",
             "--interface", LO, "--site", SITE, "--json"],
            capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 0, done.stderr
    edges = json.loads(done.stdout.strip().splitlines()[-1])["edges"]
    mine = [x for x in edges if x["url"] == e.url]
    assert len(mine) == 1
    rec = mine[0]
    assert rec["caps"] == ["llm"] and rec["models"] == ["target.gguf"]
    assert rec["vocab_hash"] and rec["capacity"] == 8 and rec["auth"] is False
    assert rec["rtt_ms"] >= 25.0




async def test_a_device_keeps_to_its_site(fixture_models: tuple[Path, Path]) -> None:
    """Two compatible edges, the idle one of another site: a device given a site label never
    lists, probes or picks the other site's edge; without one it may use either."""
    target, draft = fixture_models
    with edge_server(target, "--max-sessions", "2", advertise=True) as mine, \
            edge_server(target, "--site", "lab-next-door", advertise=True) as other:
        everyone = await async_discover(timeout_s=2.0, interfaces=[LO])
        assert {mine.url, other.url} <= {r.url for r in everyone}
        assert {r.site for r in everyone if r.url in (mine.url, other.url)} == {
            SITE, "lab-next-door"}
        ours = await async_discover(timeout_s=2.0, interfaces=[LO], site=SITE)
        assert [r.url for r in ours] == [mine.url]
        report = await generate(
            str(draft), GenerateRequest(prompt="which site", max_tokens=6), FixedPolicy(3),
            plan=EdgePlan(discover=True, interfaces=(LO,), site=SITE, browse_s=2.0),
            llama_config=SMALL)
        assert report.edge == mine.url and not report.degraded
        assert other.info()["engine"]["steps"] == 0  # nothing reached the other site's edge
        done = subprocess.run(
            [sys.executable, "-m", "ondevice.cli", "discover", "--timeout", "1.5",
             "--interface", LO, "--site", "lab-next-door", "--json"],
            capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    edges = json.loads(done.stdout.strip().splitlines()[-1])["edges"]
    assert [x["url"] for x in edges] == [other.url] and edges[0]["site"] == "lab-next-door"


async def test_failover_to_a_second_edge(fixture_models: tuple[Path, Path]) -> None:
    """The chosen edge dies mid-generation; the generation moves at once to the second edge,
    which discovery knows, and resumes speculation there: every token accounted for, both
    edges named, the move recorded, and no stretch on the draft alone (not degraded)."""
    target, draft = fixture_models
    # Long greedy runs compare batched verification with one-token decoding: an f32 KV cache
    # keeps their logits within ~3e-6 (f16: ~3e-4), so near-ties cannot flip an argmax.
    prompt, n = "fail over please", 800
    with edge_server(target, "--kv-type", "f32", advertise=True) as first, \
            edge_server(target, "--kv-type", "f32", advertise=True) as second:
        # A device keeps one browser open across generations, so both edges are known.
        async with EdgeBrowser(interfaces=[LO], site=SITE) as browser:
            while len(browser.names) < 2:
                assert await browser.async_wait_change(10.0), "edges never answered"
            report = await generate(
                str(draft), GenerateRequest(prompt=prompt, max_tokens=n),
                KillEdgeAfter(3, first, rounds=3),
                plan=EdgePlan(url=first.url, discover=True, interfaces=(LO,), site=SITE,
                              timeout_s=5.0),
                llama_config=LlamaConfig(n_ctx=2048, n_threads=1, kv_type="f32"),
                browser=browser,
            )
        assert first.proc.poll() is not None and second.proc.poll() is None
    assert report.edges == [first.url, second.url]
    assert not report.degraded and report.n_tokens == n and report.errors
    segs = report.segments
    assert [s["source"] for s in segs] == [first.url, second.url]
    (move,) = report.moves
    assert (move["from"], move["to"], move["at_token"]) == (
        first.url, second.url, segs[0]["to_token"])
    assert segs[0]["from_token"] == 0 and segs[-1]["to_token"] == n
    for a, b in itertools.pairwise(segs):
        assert a["to_token"] == b["from_token"]  # nothing lost, nothing repeated
    # Each segment is exactly what its producer decodes greedily from the text before it.
    tref, dref = Reference(target, kv_f32=True), Reference(draft, kv_f32=True)
    try:
        ids = tref.tokenize(prompt)
        for s in segs:
            a, b = s["from_token"], s["to_token"]
            ref = dref if s["source"] == "draft" else tref
            assert report.tokens[a:b] == ref.greedy(ids + report.tokens[:a], b - a), s
    finally:
        tref.close()
        dref.close()


async def test_edge_unregisters_on_sigterm(fixture_models: tuple[Path, Path]) -> None:
    async with EdgeBrowser(interfaces=[LO], site=SITE) as browser:
        with edge_server(fixture_models[0], advertise=True) as e:
            port = e.url.rsplit(":", 1)[1]
            mine = lambda: [n for n in browser.names if f"-{port}." in n]  # noqa: E731
            while not mine():
                assert await browser.async_wait_change(10.0), "the edge never appeared"
        # The context manager stopped it with SIGTERM: it must say goodbye.
        deadline = time.monotonic() + 10
        while mine() and time.monotonic() < deadline:
            await browser.async_wait_change(1.0)
        assert not mine(), "the edge's record outlived it"
