"""Real mode of ``ondevice bench fleet --edges N``: one fleet across N real edges, and what
a drain and a kill of one edge in mid-run cost.

N ``edge-server``s run as child processes, each in a network namespace of its own
(``_netns.edge_hosts``: a veth pair per namespace to this one) when root and ``ip netns``
allow, else all on 127.0.0.1; the replayed devices (``_fleet_real``) run in this process.
Each device places every new session by the devices' own rule (``ondevice.edge.placement``:
probe each edge's ``/v1/info``, rank by expected wait) and, when its edge asks it to move
(``EdgeMoved``), refuses it (``error/draining``) or is lost (``EdgeUnavailable``), resumes
the prompt on the next edge from its committed position (``Leg``): a new session opened with
the prompt and the tokens committed so far; a round whose verdict never came commits nothing.

Three phases of ``phase_s`` seconds, the same devices and policy: ``steady``; ``drain``
(``POST /v1/drain`` to one edge a third of the way in; the edges run with a short
``--drain-timeout``); ``kill`` (a fresh edge in the drained one's place, then SIGKILL of
another a third of the way in). Devices stop drafting at a phase's end. Every verdict and
streamed chunk is logged with its time (``DeviceResult.token_log``), so the report
(``_fleet_edges_report``) can compute sliding windows of the fleet's tokens/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from ondevice.bench._fleet_device import DeviceResult, PromptTrace
from ondevice.bench._fleet_edges_report import PhaseRun
from ondevice.bench._fleet_real import Leg, replay_leg
from ondevice.bench._hardware import CostModel
from ondevice.bench._netns import Host, NetnsUnavailable, edge_hosts
from ondevice.common import wire
from ondevice.edge.client import EdgeClient, EdgeUnavailable
from ondevice.edge.local import STOP_S, spawn_edge, stop_edge
from ondevice.edge.placement import EdgeLoad, async_probe, rank
from ondevice.llm.policies import Policy, make_policy

DRAIN_PATH = "/v1/drain"  # edge-server: POST here to start draining
PROBE_S = 2.0  # s: a /v1/info probe slower than this counts the edge as unreachable
PLACE_S = 30.0  # s: a session no edge takes in this long fails the device
START_STAGGER_S = 0.15  # s between devices' first sessions, so each placement sees the last
KV_ROOM = 64  # KV cells a new session needs beyond its context (the edge's admission rule)
EVENT_AT = 1 / 3  # of a phase: when the drain or the kill happens
BALANCE_EVERY_S = 0.1  # s between the balance's samples of where the devices are
CLIENT_TIMEOUT_S = 30.0  # s: a verdict slower than this means a lost edge


# -- the edges: child processes, maybe in namespaces of their own ----------------------------

@dataclass(slots=True)
class EdgeProc:
    """One ``edge-server`` child: its slot (namespace), URL and process."""

    slot: int
    url: str
    proc: asyncio.subprocess.Process
    drain: asyncio.Task[bytes] | None = None  # reads its stdout to the end (a few lines)

    async def async_stop(self) -> int:
        """``ondevice.edge.local.stop_edge``; its exit status. Idempotent."""
        status = await stop_edge(self.proc)
        if self.drain is not None:
            await self.drain
        return status


async def async_start_edge(slot: int, args: Sequence[str], host: Host | None) -> EdgeProc:
    """Start ``edge-server ARGS`` (inside ``host``'s namespace when given); return once it
    prints its URL. ``ondevice.edge.local.spawn_edge`` with the process kept: the benchmark
    kills it and reads its exit status."""
    proc, url = await spawn_edge(args, quiet=True,
                                 prefix=host.prefix if host is not None else ())
    assert proc.stdout is not None
    edge = EdgeProc(slot, url, proc)
    edge.drain = asyncio.create_task(proc.stdout.read())
    return edge


@contextlib.contextmanager
def rig(n: int, use_netns: bool) -> Iterator[tuple[list[Host | None], str]]:
    """(a host per edge, the rig in words): ``n`` namespaces, or ``n`` times loopback when
    ``use_netns`` is false or namespaces are not available here (the words say why)."""
    if use_netns:
        try:
            with edge_hosts(n) as hosts:
                yield list(hosts), f"{n} network namespaces (a veth pair each)"
                return
        except NetnsUnavailable as exc:
            why = f"loopback (no namespaces: {exc})"
    else:
        why = "loopback (asked for)"
    yield [None] * n, why


@dataclass(slots=True)
class EdgeBook:
    """The edges the devices may place sessions on, by slot; the benchmark adds and removes
    them as it starts and ends edges (a device finds a killed edge by itself)."""

    urls: dict[int, str] = field(default_factory=dict)


# -- one device across the edges ------------------------------------------------------------

@dataclass(slots=True)
class _Placer:
    """A device's sockets to the edges and its choice among them (``placement.rank``)."""

    book: EdgeBook
    vocab_hash: str
    seed: int
    rng: random.Random
    http: aiohttp.ClientSession
    clients: dict[str, EdgeClient] = field(default_factory=dict)

    async def _loads(self, urls: Sequence[str]) -> list[EdgeLoad]:
        async def probe(url: str) -> EdgeLoad | None:
            try:
                return await asyncio.wait_for(async_probe(self.http, url), PROBE_S)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError):
                return None
        found = await asyncio.gather(*(probe(u) for u in urls))
        loads = [x for x in found if x is not None]
        # The rig's links are alike and its edges share this machine with the devices: a
        # probe's time here is this process's event loop, noise larger than a tiny model's
        # step. Every edge gets the least RTT measured, so the load decides.
        rtt = min((x.rtt_ms for x in loads if x.rtt_ms is not None), default=None)
        return [replace(x, rtt_ms=rtt) for x in loads]

    async def drop(self, url: str) -> None:
        """Forget the socket to ``url`` (its edge moved the session, refused or was lost)."""
        client = self.clients.pop(url, None)
        if client is not None:
            await client.async_close()

    async def async_open(self, leg: Leg) -> tuple[EdgeClient, int]:
        """A session resuming ``leg`` on the best edge that takes it: (its client, the
        edge's slot). Edges are tried best first; none taking it, they are probed again."""
        deadline = time.monotonic() + PLACE_S
        while time.monotonic() < deadline:
            context = leg.context()
            slots = {url: k for k, url in self.book.urls.items()}
            for load in rank(await self._loads(list(slots)), need_kv_cells=len(context) + KV_ROOM,
                             rng=self.rng):
                try:
                    client = self.clients.get(load.url)
                    if client is None or not client.reusable:
                        await self.drop(load.url)
                        client = await EdgeClient(load.url,
                                                  timeout_s=CLIENT_TIMEOUT_S).async_connect()
                        self.clients[load.url] = client
                    await client.async_open(context, vocab_hash=self.vocab_hash,
                                            draft_model="replay", temperature=0.0,
                                            seed=self.seed, top_k=1)
                    return client, slots[load.url]
                except wire.EdgeError as exc:
                    if exc.code not in ("draining", "too-many-sessions", "kv-full"):
                        raise
                    await self.drop(load.url)
                except EdgeUnavailable:
                    await self.drop(load.url)
            await asyncio.sleep(0.1)
        raise RuntimeError(f"no edge took a session in {PLACE_S:g} s")

    async def async_close(self) -> None:
        for url in list(self.clients):
            await self.drop(url)


async def run_edges_device(index: int, book: EdgeBook, pts: Sequence[PromptTrace],
                           policy: Policy, cost: CostModel, vocab_hash: str,
                           stop: asyncio.Event, *, start_delay_s: float = 0.0,
                           seats: list[int | None] | None = None) -> DeviceResult:
    """One replayed device across the edges of ``book`` until ``stop``: ``pts[0]``, then
    ``pts[1]``, ... each a ``Leg`` that resumes on another edge when its session ends early
    (module docstring). ``lost`` counts the tokens a resume lost or repeated (``Leg.lost``)
    and any the device counted but did not receive or received but did not count;
    ``moved`` the sessions opened to resume a leg. ``seats[index]`` is kept at the
    slot of the edge its latest session went to."""
    await asyncio.sleep(start_delay_s)
    res = DeviceResult(index, t_start_s=time.monotonic())
    async with aiohttp.ClientSession() as http:
        placer = _Placer(book, vocab_hash, index, random.Random(index), http)
        committed = 0
        try:
            for j in itertools.count():
                if stop.is_set():
                    break
                leg = Leg(pts[j % len(pts)])
                await _replay_across_edges(placer, leg, policy, cost, res, stop, seats)
                committed += leg.pos
                res.lost += leg.lost()
                if leg.pos == 0:  # the edge ended the prompt at once (end of generation)
                    break
        finally:
            await placer.async_close()
    res.lost += abs(res.tokens - committed)
    res.seconds = time.monotonic() - res.t_start_s
    return res


async def _replay_across_edges(placer: _Placer, leg: Leg, policy: Policy, cost: CostModel,
                               res: DeviceResult, stop: asyncio.Event,
                               seats: list[int | None] | None) -> None:
    """``leg`` to its trace's end (or where the edge leaves it, or ``stop``), one session
    after another while edges move, refuse or lose it."""
    end = len(leg.pt.tokens) - 1
    while leg.pos < end and not leg.left_trace and not stop.is_set():
        client, slot = await placer.async_open(leg)
        res.sessions += 1
        res.placed.append(slot)
        if seats is not None:
            seats[res.device] = slot
        if leg.pos > 0:
            leg.resume()
            res.moved += 1
        pos0 = leg.pos
        try:
            await replay_leg(client, leg, end, policy, cost, res, stop=stop)
        except (EdgeUnavailable, wire.EdgeError) as exc:  # moved, refused or lost: resume
            if isinstance(exc, wire.EdgeError) and exc.code != "draining":
                raise
            await placer.drop(client.url)
            res.diverged += int(leg.left_trace)  # where a cut-short stretch left the trace
            continue
        with contextlib.suppress(EdgeUnavailable):
            await client.async_end_session()
        if leg.pos == pos0:
            break


# -- the phases -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class EdgesConfig:
    """What ``ondevice bench fleet --mode real --edges N`` runs."""

    edges: int
    devices: int
    policy: str = "gelato"
    phase_s: float = 15.0
    drain_timeout_s: float = 4.0
    edge_threads: int = 1
    use_netns: bool = True
    power_budget_w: float | None = None


async def _post_drain(url: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(url + DRAIN_PATH) as resp:
        if resp.status >= 300:
            raise RuntimeError(f"edge {url}: POST {DRAIN_PATH} answered {resp.status}")


async def _balance(seats: Sequence[int | None], slots: int, until: float) -> list[float]:
    """Mean devices on each edge slot (where each device's latest session was placed),
    sampled every ``BALANCE_EVERY_S`` from now until monotonic ``until``."""
    total = [0] * slots
    samples = 0
    while True:
        for slot in seats:
            if slot is not None:
                total[slot] += 1
        samples += 1
        if time.monotonic() + BALANCE_EVERY_S > until:
            break
        await asyncio.sleep(BALANCE_EVERY_S)
    return [t / samples for t in total]


PhaseEvent = Callable[[], Awaitable[tuple[int, "asyncio.Task[int]"]]]  # (slot, its exit status)


async def _phase(name: str, cfg: EdgesConfig, book: EdgeBook, traces: Sequence[PromptTrace],
                 cost: CostModel, vocab_hash: str, event: PhaseEvent | None = None) -> PhaseRun:
    """One phase: the devices for ``cfg.phase_s`` seconds; at ``EVENT_AT`` of it ``event()``
    (if any) runs: it returns (slot, a task giving the edge's exit status). The balance is
    sampled from when the last device has started until the event (or the phase's end)."""
    stop = asyncio.Event()
    seats: list[int | None] = [None] * cfg.devices
    k = len(traces)
    policies = [make_policy(cfg.policy, gamma=4, power_budget_w=cfg.power_budget_w)
                for _ in range(cfg.devices)]
    t0 = time.monotonic()
    devices = [asyncio.create_task(run_edges_device(
        i, book, [traces[(i + j) % k] for j in range(k)], policies[i], cost, vocab_hash, stop,
        start_delay_s=i * START_STAGGER_S, seats=seats)) for i in range(cfg.devices)]
    try:
        t_event = t0 + (EVENT_AT * cfg.phase_s if event is not None else cfg.phase_s)
        await asyncio.sleep(max(0.0, t0 + cfg.devices * START_STAGGER_S - time.monotonic()))
        balance = await _balance(seats, cfg.edges, t_event)
        await asyncio.sleep(max(0.0, t_event - time.monotonic()))
        slot, exited = (None, None) if event is None else await event()
        t_event = time.monotonic() if event is not None else None
        await asyncio.sleep(max(0.0, t0 + cfg.phase_s - time.monotonic()))
        t_stop = time.monotonic()
        stop.set()
        results = list(await asyncio.gather(*devices))
    finally:
        stop.set()
        for task in devices:
            task.cancel()
        await asyncio.gather(*devices, return_exceptions=True)
    status = await exited if exited is not None else None
    return PhaseRun(name=name, t0=t0, t_ramped=t0 + cfg.devices * START_STAGGER_S,
                    t_stop=t_stop, t_event=t_event, results=results,
                    balance=balance, event_slot=slot, exit_status=status)


@contextlib.asynccontextmanager
async def _edge_set(cfg: EdgesConfig, target: Path, hosts: Sequence[Host | None]
                    ) -> AsyncIterator[tuple[EdgeBook, dict[int, EdgeProc],
                                             Callable[[int], Awaitable[EdgeProc]]]]:
    """The edges, started; (the book, the processes by slot, a function that starts one in
    a slot). Every edge still running is stopped on exit."""
    procs: dict[int, EdgeProc] = {}
    book = EdgeBook()
    n = cfg.devices

    async def start(slot: int) -> EdgeProc:
        host = hosts[slot]
        args = ["--model", str(target), "--host", host.ip if host else "127.0.0.1",
                "--port", "0", "--no-advertise", "--max-sessions", str(n),
                "--max-sessions-per-client", str(n), "--scheduler", "batched",
                "--threads", str(cfg.edge_threads), "--n-ctx", "1024",
                "--drain-timeout", f"{cfg.drain_timeout_s:g}"]
        edge = await async_start_edge(slot, args, host)
        procs[slot] = edge
        book.urls[slot] = edge.url
        return edge

    try:
        await asyncio.gather(*(start(k) for k in range(len(hosts))))
        yield book, procs, start
    finally:
        await asyncio.gather(*(e.async_stop() for e in procs.values()),
                             return_exceptions=True)


async def run_fleet_edges_real(cfg: EdgesConfig, cost: CostModel, target: Path,
                               traces: Sequence[PromptTrace], vocab_hash: str,
                               say: Callable[[str], None] = lambda line: None,
                               ) -> tuple[list[PhaseRun], str]:
    """The three phases (module docstring) on ``cfg.edges`` edges; (the phases, the rig in
    words)."""
    with rig(cfg.edges, cfg.use_netns) as (hosts, where):
        say(f"{cfg.edges} edges on {where}")
        async with _edge_set(cfg, target, hosts) as (book, procs, start):
            phases = [await _phase("steady", cfg, book, traces, cost, vocab_hash)]
            say(f"steady: {sum(r.tokens for r in phases[0].results)} tokens")

            async def drain(slot: int = 0) -> tuple[int, asyncio.Task[int]]:
                edge = procs[slot]
                await _post_drain(edge.url)

                async def exited() -> int:  # by itself; if not, killed: -9 says so
                    try:
                        return await asyncio.wait_for(edge.proc.wait(),
                                                      cfg.drain_timeout_s + STOP_S)
                    except asyncio.TimeoutError:
                        edge.proc.kill()
                        return await edge.proc.wait()
                    finally:
                        book.urls.pop(slot, None)
                return slot, asyncio.create_task(exited())

            phases.append(await _phase("drain", cfg, book, traces, cost, vocab_hash, drain))
            say(f"drain: edge {phases[1].event_slot} exited {phases[1].exit_status}")
            await procs[0].async_stop()
            await start(0)  # a fresh edge in the drained one's place

            async def kill(slot: int = min(1, cfg.edges - 1)) -> tuple[int, asyncio.Task[int]]:
                edge = procs[slot]
                edge.proc.send_signal(signal.SIGKILL)
                book.urls.pop(slot, None)
                return slot, asyncio.create_task(edge.async_stop())

            phases.append(await _phase("kill", cfg, book, traces, cost, vocab_hash, kill))
    return phases, where


__all__ = ["EdgeBook", "EdgeProc", "EdgesConfig", "async_start_edge", "rig",
           "run_edges_device", "run_fleet_edges_real"]
