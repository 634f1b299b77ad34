"""Several edges: ``Device(edge=[url1, url2])`` and ``ondevice generate --edge URL1,URL2`` against
two real ``edge-server`` processes (the f32 fixture pair, greedy).

Placement spreads devices started one after another over equal edges; a device whose edge is
SIGKILLed, or drains on SIGTERM, moves to the other edge with its committed prefix and ends
with exactly the tokens it produces alone on one edge. Devices are held after their first
round by a gate in the draft's worker thread (never the event loop), so "all sessions are
open" and "the edge went away mid-run" are events the test waits for, not timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _edge import EdgeProc, edge_server
from _waiting import wait_until

from ondevice import Device, DeviceSync
from ondevice.common.llama_runtime import LlamaConfig
from ondevice.llm.generate import EdgePlan
from ondevice.llm.policies import FixedPolicy, RoundStats
from ondevice.llm.report import Report

PROMPTS = ["Hello world", "The quick brown fox jumps over", "Once", "In the beginning there was",
           "one two three four five six", "a b c", "Dear", "To install the package, run"]
# Long greedy runs compare batched verification with one-token decoding: an f32 KV cache keeps
# their logits close enough that near-ties cannot flip an argmax (see test_discovery).
KV = LlamaConfig(n_ctx=512, n_threads=1, kv_type="f32")
EDGE_ARGS = ("--kv-type", "f32", "--n-ctx", "512", "--max-sessions", "10",
             "--max-sessions-per-client", "10")
N = 48  # tokens each device generates where the outputs are compared
DRAIN_S = 2.0  # s: the draining edge's --drain-timeout; it moves sessions at 1.5 s


class Held(FixedPolicy):
    """Fixed gamma 3. After its first round the draft waits for ``gate`` at the start of each
    round, in the draft's worker thread: the session stays open, between two frames."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__(3)
        self.gate = gate
        self.first_round = asyncio.Event()
        self.rounds = 0

    def observe(self, stats: RoundStats) -> None:
        super().observe(stats)
        self.rounds += 1
        self.first_round.set()

    def keep_drafting(self, drafted: int, entropy_nats: float | None) -> bool:
        if drafted == 1 and self.rounds:  # once per round, in the worker thread
            assert self.gate.wait(120), "the test never opened the gate"
        return super().keep_drafting(drafted, entropy_nats)


@pytest.fixture(autouse=True)
async def _threads() -> Iterator[None]:
    """Room for every held draft thread: the default executor has min(32, cores + 4)."""
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=24, thread_name_prefix="several-edges")
    loop.set_default_executor(pool)
    yield
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def pair(fixture_models: tuple[Path, Path]) -> Iterator[tuple[EdgeProc, EdgeProc]]:
    with edge_server(fixture_models[0], *EDGE_ARGS) as a, \
            edge_server(fixture_models[0], *EDGE_ARGS) as b:
        yield a, b


@pytest.fixture(scope="module")
def alone(fixture_models: tuple[Path, Path], pair: tuple[EdgeProc, EdgeProc]
          ) -> dict[str, Report]:
    """The reference: each prompt generated on one edge, by one device."""
    with DeviceSync(fixture_models[1], edge=pair[0].url, policy=FixedPolicy(3),
                    llama_config=KV) as dev:
        return {p: dev.complete(p, max_tokens=N) for p in PROMPTS}


async def _sessions(*edges: EdgeProc) -> list[int]:
    infos = await asyncio.gather(*(asyncio.to_thread(e.info) for e in edges))
    return [int(i["sessions"]) for i in infos]


async def _all_zero(*edges: EdgeProc) -> bool:
    return not any(await _sessions(*edges))


async def _fleet(draft: Path, urls: list[str], prompts: list[str], n: int, gate: threading.Event,
                 stack: contextlib.AsyncExitStack) -> list[asyncio.Task[Report]]:
    """One Device per prompt on ``urls``, started one after another: the next once the one
    before has its first round verified (its session open). The gate holds them all there."""
    tasks: list[asyncio.Task[Report]] = []
    for prompt in prompts:
        policy = Held(gate)
        dev = await stack.enter_async_context(
            Device(draft, edge=list(urls), policy=policy, llama_config=KV))
        task = asyncio.create_task(dev.complete(prompt, max_tokens=n))
        tasks.append(task)
        first = asyncio.create_task(policy.first_round.wait())
        await asyncio.wait([first, task], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        first.cancel()
        if task.done():
            task.result()  # its error, if it failed
        assert policy.first_round.is_set(), f"no round verified for {prompt!r} in 120 s"
    return tasks


async def _held_on_two(draft: Path, a: EdgeProc, b: EdgeProc, gate: threading.Event,
                       stack: contextlib.AsyncExitStack
                       ) -> tuple[list[asyncio.Task[Report]], list[int]]:
    """The eight prompts' devices (``N`` tokens each) held on edges ``a`` and ``b``, and the
    sessions each edge holds then (checked: 4 +/- 1 each, 8 in all)."""
    tasks = await _fleet(draft, [a.url, b.url], PROMPTS, N, gate, stack)
    before = await _sessions(a, b)
    assert 3 <= before[0] <= 5 and sum(before) == 8, before
    return tasks, before


def _check_contiguous(r: Report) -> None:
    assert r.segments[0]["from_token"] == 0 and r.segments[-1]["to_token"] == r.n_tokens
    for a, b in itertools.pairwise(r.segments):
        assert a["to_token"] == b["from_token"]  # nothing lost, nothing repeated


async def test_eight_devices_spread_four_and_four(
        fixture_models: tuple[Path, Path], pair: tuple[EdgeProc, EdgeProc]) -> None:
    a, b = pair
    await wait_until(lambda: _all_zero(a, b), 30, "no session open (another test's ended)")
    gate = threading.Event()
    async with contextlib.AsyncExitStack() as stack:
        try:
            tasks = await _fleet(fixture_models[1], [a.url, b.url], PROMPTS, 24, gate, stack)
            counts = await _sessions(a, b)  # all eight held open
        finally:
            gate.set()
        reports = await asyncio.gather(*tasks)
    assert sum(counts) == 8 and all(3 <= c <= 5 for c in counts), counts
    assert Counter(r.edges[0] for r in reports) == {a.url: counts[0], b.url: counts[1]}
    for r in reports:
        assert not r.degraded and not r.moves and r.n_tokens == 24, r.errors


async def test_sigkill_moves_sessions_with_nothing_lost(
        fixture_models: tuple[Path, Path], alone: dict[str, Report]) -> None:
    target, draft = fixture_models
    ref = [alone[p] for p in PROMPTS]
    with edge_server(target, *EDGE_ARGS) as a, edge_server(target, *EDGE_ARGS) as b:
        gate = threading.Event()
        async with contextlib.AsyncExitStack() as stack:
            try:
                tasks, before = await _held_on_two(draft, a, b, gate, stack)
                a.kill()  # every session on a: a round in flight or about to be sent
            finally:
                gate.set()
            reports = await asyncio.gather(*tasks)
    for r, alone in zip(reports, ref, strict=True):
        assert (r.tokens, r.text) == (alone.tokens, alone.text)
        assert not r.degraded, r.degraded_reason
        _check_contiguous(r)
    moved = [r for r in reports if r.edges[0] == a.url]
    assert len(moved) == before[0]
    for r in moved:
        assert r.edges == [a.url, b.url] and [s["source"] for s in r.segments] == [a.url, b.url]
        (move,) = r.moves
        assert (move["from"], move["to"]) == (a.url, b.url)
        assert move["at_token"] == r.segments[0]["to_token"] > 0
        assert move["reason"].startswith(f"edge {a.url}") and r.errors
    for r in reports:
        if r.edges[0] == b.url:
            assert r.edges == [b.url] and not r.moves


def _exit_time(edge: EdgeProc, t0: float) -> tuple[int, float]:
    """The edge process's exit status and when it exited, seconds after ``t0``."""
    code = edge.proc.wait(DRAIN_S + 30)
    return code, time.monotonic() - t0


async def _holds_no_session(edge: EdgeProc) -> bool:
    """True once ``edge`` has no session open, or has exited."""
    if edge.proc.poll() is not None:
        return True
    try:
        return (await _sessions(edge))[0] == 0
    except OSError:  # it stopped answering: exiting
        return True


async def test_sigterm_drains_and_moves_sessions(fixture_models: tuple[Path, Path],
                                                 alone: dict[str, Report]) -> None:
    """The drain moves the sessions still open at its end: the devices, held between two
    frames, take the ``move`` waiting on their socket, resume on the other edge from what
    they committed, and finish as if alone; the edge exits 0 within its drain timeout."""
    target, draft = fixture_models
    ref = [alone[p] for p in PROMPTS]
    with edge_server(target, *EDGE_ARGS, "--drain-timeout", str(DRAIN_S)) as a, \
            edge_server(target, *EDGE_ARGS) as b:
        gate = threading.Event()
        async with contextlib.AsyncExitStack() as stack:
            try:
                tasks, before = await _held_on_two(draft, a, b, gate, stack)
                t0 = time.monotonic()
                a.proc.send_signal(signal.SIGTERM)
                exited = asyncio.create_task(asyncio.to_thread(_exit_time, a, t0))
                await wait_until(lambda: _holds_no_session(a), DRAIN_S + 30,
                                 "the draining edge to move its sessions")
            finally:
                gate.set()
            reports = await asyncio.gather(*tasks)
            code, exited_s = await exited
            alog = a.log()
    assert code == 0, alog[-3000:]
    assert exited_s < DRAIN_S + 5, exited_s  # the drain, then the server's shutdown
    for r, alone in zip(reports, ref, strict=True):
        assert (r.tokens, r.text) == (alone.tokens, alone.text)
        assert not r.degraded and not r.errors, (r.degraded_reason, r.errors, alog[-3000:])
        _check_contiguous(r)
    moved = [r for r in reports if r.edges[0] == a.url]
    assert len(moved) == before[0]
    for r in moved:
        assert r.edges == [a.url, b.url]
        (move,) = r.moves
        assert (move["from"], move["to"], move["reason"]) == (a.url, b.url, "moved: draining")
        assert move["at_token"] == r.segments[0]["to_token"] > 0


def test_generate_cli_on_two_edges(fixture_models: tuple[Path, Path],
                                   pair: tuple[EdgeProc, EdgeProc]) -> None:
    a, b = pair
    base = [sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(fixture_models[1]),
            "--prompt", "Hello world", "--max-tokens", "12", "--policy", "fixed", "--gamma", "3",
            "--no-discover"]
    done = subprocess.run([*base, "--edge", f"{a.url},{b.url}", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["edge"] in (a.url, b.url) and not report["degraded"]
    assert report["n_tokens"] == 12 and report["moves"] == []
    bad = subprocess.run([*base, "--edge", f"{a.url},,{b.url}"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2
    assert "give one edge URL or several separated by commas" in bad.stderr


def test_edge_lists_are_checked() -> None:
    a, b = "http://127.0.0.1:8470", "http://127.0.0.1:8471"
    plan = Device("missing.gguf", edge=[a, b]).plan
    assert (plan.url, plan.urls, plan.discover) == (a, (a, b), False)
    assert EdgePlan(url=a) == EdgePlan(urls=(a,)) == EdgePlan(url=a, urls=(a,))
    with pytest.raises(ValueError, match="given twice"):
        Device("missing.gguf", edge=[a, a])
    with pytest.raises(ValueError, match="pin none"):
        EdgePlan(urls=(a, b), fingerprint="ab" * 32)
    with pytest.raises(ValueError, match="is not one of"):
        EdgePlan(url=a, urls=(b,))
    with pytest.raises(TypeError, match="list of URLs"):
        Device("missing.gguf", edge=[])
    with pytest.raises(ValueError, match="travel in plaintext to http://10"):
        Device("missing.gguf", edge=EdgePlan(urls=(a, "http://10.1.2.3:8470"), token="t"))
