"""``ondevice bench fleet``: many devices, one edge; batched against serial edge scheduling.

Real mode runs one real ``edge-server`` on loopback (Gemma 3 270M by default) and N devices in
this process. Eight real drafts cannot share two cores with the edge, so each device *replays*
a recorded draft trace (``bench.trace``: along the target's greedy path, whether the draft's
argmax matched and its entropy, from the real pair) at the speed of a device hardware profile:
it drafts the trace's tokens (a matched token is the target's, the first unmatched one any
other token, later ones filler the edge rejects anyway), sleeps the profile's drafting time,
and sends real ``round`` frames. The edge does all its real work: prefill, batched verification
with the rejection sampler, edge-only generation.

The trace holds only along the path it was recorded on. Where the edge's greedy token is not
the trace's (a near-tie that the edge's float sums, which depend on the batch a step carries
and on where its sequence's cells lie in the KV pool, resolve otherwise than the recording
did), the session's context has left the trace, and a device that kept drafting it would
draft a path the edge never takes. So a drafting device ends that session at the verdict that
shows it and goes on with the next prompt in a new session (``diverged`` counts these); it
also moves on when a prompt's trace runs out. Device energy is modelled from the profile
(``CostModel``: drafting, waiting and radio power), labelled modelled.

Sim mode runs the same devices and policies against an event-driven model of a batching edge
whose decode of ``B`` tokens costs what the edge profile says of B positions
(``EdgeProfile.verify_ms``), on the trace alone. The modelled edge advises its sessions as the
real one does: every decode feeds the same ``StreamAdvisor``
(``ondevice.common.stream_advice``) what the engine feeds it, and each verdict and streamed
stretch carries its advice to the device's policy, as ``advise`` in the real frames does.

Per (N, policy, scheduler): aggregate tokens/s, per-device tokens/s (median, p5), per-device
J/token (modelled), mean edge batch (tokens per decode, from the verdicts), edge RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.bench._hardware import CostModel
from ondevice.bench.gelato_sim import leading_accepts
from ondevice.bench.trace import Trace
from ondevice.llm.policies import Policy, RoundStats, make_policy

FLEET_POLICIES = ("gelato", "fixed", "edge-only")
FILLER = 1  # a token id for drafted positions after the first mismatch (rejected anyway)


@dataclass(slots=True)
class DeviceResult:
    """One device's run. Seconds, joules (modelled), tokens."""

    device: int
    tokens: int
    seconds: float
    energy_j: float
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    batch_sum: float = 0.0  # sum over rounds/steps of the edge's decode size
    batch_n: int = 0
    queue_ms_sum: float = 0.0
    diverged: int = 0  # sessions whose edge path left the trace (next prompt followed)
    streamed: int = 0  # tokens the edge generated alone at the policy's choice (stream action)
    sessions: int = 0  # sessions opened (a new one per trace, real mode)
    b_history: list[int] = field(default_factory=list)  # gelato's budget per round
    t_start_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def j_per_token(self) -> float | None:
        return self.energy_j / self.tokens if self.tokens else None


@dataclass(slots=True)
class FleetRow:
    """One (devices, policy, scheduler) cell of the table."""

    mode: str
    devices: int
    policy: str
    scheduler: str
    aggregate_tps: float
    median_tps: float
    p5_tps: float
    j_per_token: float | None  # mean over devices, modelled
    mean_batch: float | None
    mean_queue_ms: float | None
    edge_rss_mib: float | None
    acceptance: float | None
    diverged: int  # sessions whose edge path left the trace (real mode)
    sessions: int = 0  # sessions the devices opened (real mode: one per trace replayed)
    real_devices: int = 0  # devices running a real draft (this benchmark: none, all replay)
    replayed_devices: int = 0
    streamed_share: float | None = None  # of the tokens, those the edge streamed alone
    energy_source: str = "modelled"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(mode: str, n: int, policy: str, scheduler: str, results: Sequence[DeviceResult],
              rss_mib: float | None) -> FleetRow:
    """The row of one run from its devices' results."""
    tps = sorted(r.tokens_per_s for r in results)
    t0 = min(r.t_start_s for r in results)
    t1 = max(r.t_start_s + r.seconds for r in results)
    jpt = [r.j_per_token for r in results if r.j_per_token is not None]
    batches = sum(r.batch_sum for r in results)
    nb = sum(r.batch_n for r in results)
    drafted = sum(r.drafted for r in results)
    return FleetRow(
        mode=mode, devices=n, policy=policy, scheduler=scheduler,
        aggregate_tps=sum(r.tokens for r in results) / max(t1 - t0, 1e-9),
        median_tps=statistics.median(tps),
        p5_tps=float(np.percentile(tps, 5)),
        j_per_token=statistics.fmean(jpt) if jpt else None,
        mean_batch=batches / nb if nb else None,
        mean_queue_ms=sum(r.queue_ms_sum for r in results) / nb if nb else None,
        edge_rss_mib=rss_mib,
        acceptance=sum(r.accepted for r in results) / drafted if drafted else None,
        diverged=sum(r.diverged for r in results),
        sessions=sum(r.sessions for r in results),
        replayed_devices=n,
        streamed_share=(sum(r.streamed for r in results) / max(sum(r.tokens for r in results), 1)),
    )


# -- the replayed device ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PromptTrace:
    """One prompt's ids and the trace's positions of its greedy continuation."""

    ids: list[int]
    tokens: np.ndarray  # [m] target greedy
    match: np.ndarray  # [m] bool
    entropy: np.ndarray  # [m] nats


def prompt_traces(trace: Trace, prompt_ids: Sequence[list[int]]) -> list[PromptTrace]:
    out = []
    for p, ids in enumerate(prompt_ids):
        a, b = int(trace.offsets[p]), int(trace.offsets[p + 1])
        out.append(PromptTrace(list(ids), trace.tokens[a:b], trace.match[a:b],
                               trace.entropy[a:b]))
    return out


def draft_round(pt: PromptTrace, pos: int, policy: Policy, n_max: int) -> tuple[list[int],
                                                                                 list[float]]:
    """The tokens a draft proposes at trace position ``pos`` under ``policy`` (greedy): matched
    tokens are the target's, the first unmatched one another token, then filler."""
    ids: list[int] = []
    ents: list[float] = []
    ok = True
    while len(ids) < n_max and pos + len(ids) < len(pt.tokens):
        i = pos + len(ids)
        tok = int(pt.tokens[i])
        if ok and not pt.match[i]:
            ok = False
            tok = tok + 1 if tok + 1 != int(pt.tokens[i]) else tok + 2
        elif not ok:
            tok = FILLER
        ids.append(tok)
        ents.append(float(pt.entropy[i]))
        if not policy.keep_drafting(len(ids), ents[-1]):
            break
    return ids, ents


async def run_real_device(index: int, url: str, pts: Sequence[PromptTrace], policy: Policy,
                          cost: CostModel, vocab_hash: str, n_tokens: int,
                          start_delay_s: float = 0.0) -> DeviceResult:
    """One replayed device against a real edge (module docstring): ``n_tokens`` tokens over
    one socket, replaying ``pts[0]``, then ``pts[1]``, ... in turn (a new session each) when a
    trace runs out or the edge's greedy path leaves it (``diverged``)."""
    from ondevice.edge.client import EdgeClient

    await asyncio.sleep(start_delay_s)
    res = DeviceResult(index, 0, 0.0, 0.0, t_start_s=time.monotonic())
    async with EdgeClient(url, timeout_s=120.0) as edge:
        for leg in itertools.count():
            if res.tokens >= n_tokens:
                break
            pt = pts[leg % len(pts)]
            if leg:
                await edge.async_end_session()
            await edge.async_open(pt.ids, vocab_hash=vocab_hash, draft_model="replay",
                                  temperature=0.0, seed=index, top_k=1)
            res.sessions += 1
            room = min(n_tokens - res.tokens, len(pt.tokens) - 1)
            got = await _replay_leg(edge, pt, room, policy, cost, res)
            res.tokens += got
            if got == 0:  # the edge ended the prompt at once (end of generation)
                break
    res.seconds = time.monotonic() - res.t_start_s
    return res


def _count_batch(res: DeviceResult, frame: Any) -> None:
    if frame.batch is not None:
        res.batch_sum += frame.batch
        res.batch_n += 1
        res.queue_ms_sum += frame.queue_ms or 0.0


async def _stream(edge: Any, pt: PromptTrace, pos: int, n: int, res: DeviceResult
                  ) -> tuple[int, bool, bool | None]:
    """Let the edge generate ``n`` tokens from trace position ``pos``; (tokens, whether one of
    them left the trace, the edge's last advice)."""
    got, left, advice = 0, False, None
    async for chunk in edge.async_generate(n):
        for tok in chunk.ids.tolist():
            left = left or tok != int(pt.tokens[pos + got])
            got += 1
        _count_batch(res, chunk)
        advice = chunk.advise if chunk.advise is not None else advice
    return got, left, advice


async def _replay_leg(edge: Any, pt: PromptTrace, room: int, policy: Policy, cost: CostModel,
                      res: DeviceResult) -> int:
    """Replay one open session along ``pt`` for at most ``room`` tokens; return the tokens
    produced. Drafting policies stop the leg where the edge's token is not the trace's: past
    it the trace no longer describes the session's context (a near-tie that the edge's batch
    resolved the other way, or a path recorded with other float sums)."""
    if policy.mode == "edge-only":  # the tokens' values do not change its cost: no early stop
        t0 = time.monotonic()
        got, left, _ = await _stream(edge, pt, 0, room, res)
        res.diverged += int(left)
        res.energy_j += edge_only_energy_j(cost, got, time.monotonic() - t0)
        return got
    d = cost.device
    pos = 0
    if policy.wants_draft_time():  # the replayed draft's speed is the profile's
        policy.calibrate(d.draft_ms_per_token / 1e3, d.draft_ms_per_token / 1e3 * d.draft_w)
    policy.begin_prompt()
    while pos < room:
        r0 = time.monotonic()
        n_stream = min(policy.stream_tokens(room - pos), room - pos)
        if n_stream > 0:  # the stream action: the edge generates a stretch alone
            got, left, advice = await _stream(edge, pt, pos, n_stream, res)
            seconds = time.monotonic() - r0
            energy = edge_only_energy_j(cost, got, seconds)
            policy.observe_stream(got, seconds, energy, edge_advice=advice)
            res.energy_j += energy
            res.streamed += got
            pos += got
            if left or got == 0:
                res.diverged += int(left)
                break
            continue
        n_max = max(0, min(policy.round_budget(), room - pos - 1, 32))
        ids, ents = draft_round(pt, pos, policy, n_max)
        draft_s = cost.draft_s(len(ids), 1)
        await asyncio.sleep(draft_s)  # the profile's device drafting time
        s0 = time.monotonic()
        n = len(ids)
        verdict = await edge.async_round(
            np.asarray(ids, np.int32), np.asarray(ids, np.int32).reshape(n, 1),
            np.ones((n, 1), np.float32))
        r1 = time.monotonic()
        produced = verdict.accepted + 1
        rc = cost.round(n)
        wait_s = (r1 - r0) - draft_s
        energy = rc.draft_energy_j + d.wait_w * wait_s + (rc.energy_j - rc.draft_energy_j
                                                          - d.wait_w * (rc.round_s
                                                                        - rc.draft_s))
        policy.observe(RoundStats(
            drafted=n, accepted=verdict.accepted, produced=produced, draft_s=draft_s,
            rtt_s=r1 - s0, verify_s=verdict.verify_ms / 1e3, round_s=r1 - r0,
            energy_j=energy, draft_energy_j=rc.draft_energy_j, entropies=ents,
            queue_s=None if verdict.queue_ms is None else verdict.queue_ms / 1e3,
            batch_tokens=verdict.batch, edge_advice=verdict.advise))
        pos += produced
        res.rounds += 1
        res.drafted += n
        res.accepted += verdict.accepted
        res.energy_j += energy
        _count_batch(res, verdict)
        res.b_history.append(n)
        if verdict.token != int(pt.tokens[pos - 1]):  # the edge left the trace
            res.diverged += 1
            break
    return pos


async def run_real_fleet(url: str, traces: Sequence[PromptTrace], policy_name: str, n: int,
                         cost: CostModel, vocab_hash: str, n_tokens: int, *,
                         power_budget_w: float | None = None, join_every_s: float = 0.0,
                         ) -> list[DeviceResult]:
    """``n`` replayed devices at once (or joining every ``join_every_s``); device ``i``
    starts on prompt ``i`` and goes on with the next ones in turn."""
    policies = [make_policy(policy_name, gamma=4, power_budget_w=power_budget_w)
                for _ in range(n)]
    k = len(traces)
    return list(await asyncio.gather(*(
        run_real_device(i, url, [traces[(i + j) % k] for j in range(k)], policies[i], cost,
                        vocab_hash, n_tokens, start_delay_s=i * join_every_s)
        for i in range(n))))


def edge_only_energy_j(cost: CostModel, tokens: int, seconds: float) -> float:
    """Device energy (modelled) of receiving ``tokens`` streamed tokens over ``seconds``: the
    radio's per-frame cost from the profile plus waiting power for the measured time."""
    s_model, e_model = cost.edge_only(tokens)
    return e_model - cost.device.wait_w * s_model + cost.device.wait_w * seconds


def edge_rss_mib(pid: int) -> float | None:
    """Resident memory of the edge process (Linux /proc), MiB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


# -- sim mode: an event-driven batching edge ----------------------------------------------------

def simulate_fleet(traces: Sequence[PromptTrace], policy_name: str, n: int, cost: CostModel,
                   n_tokens: int, *, scheduler: str = "batched",
                   power_budget_w: float | None = None,
                   make: Callable[..., Policy] = make_policy) -> list[DeviceResult]:
    """N devices and one edge on a virtual clock. The edge runs one decode at a time; a decode
    takes every pending job (``batched``; one in ``serial``) and lasts
    ``t0 + k * tokens``. Devices draft, send (half the RTT each way plus transfer), wait.
    After each decode the edge's ``StreamAdvisor`` observes it (as ``edge_server._engine``
    does) and its advice reaches the devices in that decode's verdicts and stretches."""
    import heapq

    # the edge's own advisor, shared rather than re-derived (a pure class, no I/O)
    from ondevice.common.stream_advice import ACTIVE_S, StreamAdvisor

    e = cost.edge
    d = cost.device
    half_rtt = d.rtt_ms / 2e3
    policies = [make(policy_name, gamma=4, power_budget_w=power_budget_w) for _ in range(n)]
    for policy in policies:  # each device replays one prompt, its draft's speed measured
        if policy.wants_draft_time():
            policy.calibrate(d.draft_ms_per_token / 1e3, d.draft_ms_per_token / 1e3 * d.draft_w)
        policy.begin_prompt()
    res = [DeviceResult(i, 0, 0.0, 0.0) for i in range(n)]
    pos = [0] * n
    pts = [traces[i % len(traces)] for i in range(n)]
    limit = [min(n_tokens, len(p.tokens) - 1) for p in pts]
    events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, device)
    pending: list[tuple[float, int, int, list[int], list[float], float]] = []
    seq = 0
    edge_free_at = 0.0
    advisor = StreamAdvisor()
    last_job = [-math.inf] * n  # when each device's session last had a job decoded
    closed = [False] * n  # the device is done: its session is closed
    advice: dict[int, bool] = {}  # device -> the advice of its stretch's latest step

    def push(t: float, kind: str, dev: int) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, dev))
        seq += 1

    start = {}
    # device -> (end position, request time, tokens) of the stretch the edge streams to it
    stretch: dict[int, tuple[int, float, int]] = {}

    for i in range(n):
        push(0.0, "draft", i)
    while events:
        t, _, kind, i = heapq.heappop(events)
        if kind == "draft":
            start.setdefault(i, t)
            if pos[i] >= limit[i]:
                res[i].seconds = t - start[i]
                res[i].tokens = pos[i]
                closed[i] = True
                continue
            if policies[i].mode == "edge-only":  # one generate request, then the edge streams
                pending.append((t + half_rtt, i, 0, [], [], t))
                push(t + half_rtt, "arrive", i)
                continue
            n_stream = min(policies[i].stream_tokens(limit[i] - pos[i]), limit[i] - pos[i])
            if n_stream > 0:  # a stretch: one generate request, then the edge streams
                stretch[i] = (pos[i] + n_stream, t, n_stream)
                pending.append((t + half_rtt, i, 0, [], [], t))
                push(t + half_rtt, "arrive", i)
                continue
            b = max(0, min(policies[i].round_budget(), limit[i] - pos[i] - 1, 32))
            ids, ents = draft_round(pts[i], pos[i], policies[i], b)
            draft_s = cost.draft_s(len(ids), 1)
            pending.append((t + draft_s + half_rtt, i, len(ids), ids, ents, t))
            push(t + draft_s + half_rtt, "arrive", i)
        elif kind in ("arrive", "edge"):
            ready = [p for p in pending if p[0] <= t + 1e-12]
            if not ready or edge_free_at > t + 1e-12:
                if ready:
                    push(edge_free_at, "edge", i)
                continue
            take = sorted(ready)[: (1 if scheduler == "serial" else len(ready))]
            for p in take:
                pending.remove(p)
            batch = sum(p[2] + 1 for p in take)
            svc = e.verify_ms(batch) / 1e3
            idle_s, edge_free_at = t - edge_free_at, t + svc
            # a round's accepted prefix, known to the edge once it has verified
            accepted = {p[1]: leading_accepts(pts[p[1]].match, pos[p[1]], p[2]) for p in take
                        if p[1] not in stretch and policies[p[1]].mode != "edge-only"}
            for p in take:
                last_job[p[1]] = edge_free_at
            # serial scheduling never batches: a streamed token is a step of its own
            active = 1 if scheduler == "serial" else sum(
                1 for j in range(n) if not closed[j] and edge_free_at - last_job[j] < ACTIVE_S)
            advisor.observe_step(
                compute_s=svc, idle_s=idle_s, tokens=batch, jobs=len(take), active=active,
                rounds=[(p[2] + 1, accepted[p[1]] + 1) for p in take if p[1] in accepted],
                fit=True)  # every job asks a logits row per token (no prefill here)
            advise = advisor.advise_stream
            for arrive_t, dev, nd, _ids, ents, r0 in take:
                pol, r = policies[dev], res[dev]
                if dev in stretch:
                    pos[dev] += 1
                    r.batch_sum += batch
                    r.batch_n += 1
                    r.queue_ms_sum += max(t - arrive_t, 0.0) * 1e3
                    end, s0, n_got = stretch[dev]
                    advice[dev] = advise  # each streamed token's frame carries it
                    if pos[dev] < end:
                        pending.append((edge_free_at, dev, 0, [], [], r0))
                    else:  # the stretch's last token: the device decides again
                        del stretch[dev]
                        done_t = edge_free_at + half_rtt
                        energy = edge_only_energy_j(cost, n_got, done_t - s0)
                        pol.observe_stream(n_got, done_t - s0, energy,
                                           edge_advice=advice.pop(dev))
                        r.energy_j += energy
                        r.streamed += n_got
                        push(done_t, "draft", dev)
                    continue
                if pol.mode == "edge-only":
                    pos[dev] += 1
                    r.batch_sum += batch
                    r.batch_n += 1
                    r.queue_ms_sum += max(t - arrive_t, 0.0) * 1e3
                    if pos[dev] < limit[dev]:  # the edge goes on with the next step at once
                        pending.append((edge_free_at, dev, 0, [], [], r0))
                    else:
                        r.tokens, r.seconds = pos[dev], edge_free_at + half_rtt - start[dev]
                        r.energy_j = edge_only_energy_j(cost, r.tokens, r.seconds)
                        closed[dev] = True
                    continue
                acc = accepted[dev]
                produced = min(acc + 1, limit[dev] - pos[dev]) if nd else 1
                done_t = edge_free_at + half_rtt
                rc = cost.round(nd)
                round_s = done_t - r0
                energy = rc.draft_energy_j + d.wait_w * (round_s - rc.draft_s) + (
                    rc.energy_j - rc.draft_energy_j - d.wait_w * (rc.round_s - rc.draft_s))
                pol.observe(RoundStats(
                    drafted=nd, accepted=acc, produced=produced, draft_s=rc.draft_s,
                    rtt_s=done_t - arrive_t + half_rtt, verify_s=svc, round_s=round_s,
                    energy_j=energy, draft_energy_j=rc.draft_energy_j, entropies=ents,
                    queue_s=max(t - arrive_t, 0.0), batch_tokens=batch, edge_advice=advise))
                r.rounds += 1
                r.drafted += nd
                r.accepted += acc
                r.b_history.append(nd)
                r.energy_j += energy
                r.batch_sum += batch
                r.batch_n += 1
                r.queue_ms_sum += max(t - arrive_t, 0.0) * 1e3
                pos[dev] += produced
                push(done_t, "draft", dev)
            if pending:
                push(edge_free_at, "edge", i)
    return res


# -- the benchmark: orchestration --------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class FleetConfig:
    """What ``ondevice bench fleet`` runs."""

    mode: str  # "real" | "sim"
    devices: tuple[int, ...]
    policies: tuple[str, ...]
    schedulers: tuple[str, ...]
    device_profile: str = "rpi5"
    edge_profiles: tuple[str, ...] = ("edge-gpu",)  # sim mode
    max_tokens: int = 48  # per device
    power_budget_w: float | None = None  # for gelato
    edge_threads: int = 2
    join_every_s: float = 0.0  # > 0: one extra run where gelato devices join one by one
    join_tokens: int = 400  # per device in the joining run (the budget is a long-run one)


async def _info(url: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(url + wire_info_path()) as resp:
        return await resp.json()


def wire_info_path() -> str:
    from ondevice.common import wire

    return wire.INFO_PATH


async def run_real_bench(cfg: FleetConfig, target: Path, traces: Sequence[PromptTrace],
                         vocab_hash: str, say: Callable[[str], None],
                         on_row: Callable[[FleetRow], None] = lambda row: None) -> tuple[
                             list[FleetRow], dict[str, Any]]:
    """Every (scheduler, N, policy) against a real edge on loopback; plus the joining run.
    ``on_row`` gets each row as it is measured, ``say`` what else there is to tell."""
    from ondevice.bench._hardware import load_profile
    from ondevice.edge.local import edge_child

    cost = CostModel(load_profile(cfg.device_profile, "device"),  # type: ignore[arg-type]
                     load_profile("edge-gpu", "edge"))  # type: ignore[arg-type]
    rows: list[FleetRow] = []
    join: dict[str, Any] = {}
    n_max = max(cfg.devices)
    for sch in cfg.schedulers:
        args = ["--model", str(target), "--host", "127.0.0.1", "--port", "0", "--no-advertise",
                "--max-sessions", str(n_max), "--max-sessions-per-client", str(n_max),
                "--scheduler", sch, "--threads", str(cfg.edge_threads), "--n-ctx", "1024"]
        async with edge_child(args, quiet=True) as url:
            for n in cfg.devices:
                for policy in cfg.policies:
                    before = await _info(url)
                    results = await run_real_fleet(url, traces, policy, n, cost, vocab_hash,
                                                   cfg.max_tokens,
                                                   power_budget_w=cfg.power_budget_w)
                    after = await _info(url)
                    rss = after.get("engine", {}).get("rss_mib")
                    row = summarize("real", n, policy, sch, results, rss)
                    rows.append(row)
                    on_row(row)
                    del before
            if cfg.join_every_s > 0 and sch == "batched":
                say(f"joining run: {n_max} gelato devices, one every {cfg.join_every_s:g} s")
                results = await run_real_fleet(
                    url, traces, "gelato", n_max, cost, vocab_hash, cfg.join_tokens,
                    power_budget_w=cfg.power_budget_w, join_every_s=cfg.join_every_s)
                join = joining_summary(results, cfg.power_budget_w)
    return rows, join


def joining_summary(results: Sequence[DeviceResult], budget_w: float | None) -> dict[str, Any]:
    """Per device of the joining run: when it joined, its mean drafted budget, its mean power
    against the budget (modelled), and device 0's budget round by round."""
    devices = []
    for r in results:
        power = r.energy_j / r.seconds if r.seconds else None
        devices.append({
            "device": r.device, "joined_s": r.t_start_s - results[0].t_start_s,
            "tokens": r.tokens, "tokens_per_s": r.tokens_per_s,
            "mean_drafted": r.drafted / r.rounds if r.rounds else None,
            "mean_power_w": power,
            "budget_w": budget_w,
            "budget_ratio": power / budget_w if power is not None and budget_w else None,
            "mean_batch": r.batch_sum / r.batch_n if r.batch_n else None,
        })
    return {"devices": devices, "device0_drafted_per_round": results[0].b_history}


def run_sim_bench(cfg: FleetConfig, traces: Sequence[PromptTrace],
                  on_row: Callable[[FleetRow], None] = lambda row: None) -> list[FleetRow]:
    """Every (edge profile, scheduler, N, policy) on the virtual clock; ``on_row`` gets each
    row as it is computed."""
    from ondevice.bench._hardware import load_profile

    rows = []
    device = load_profile(cfg.device_profile, "device")
    for edge in cfg.edge_profiles:
        cost = CostModel(device, load_profile(edge, "edge"))  # type: ignore[arg-type]
        for sch in cfg.schedulers:
            for n in cfg.devices:
                for policy in cfg.policies:
                    results = simulate_fleet(traces, policy, n, cost, cfg.max_tokens,
                                             scheduler=sch, power_budget_w=cfg.power_budget_w)
                    row = summarize(f"sim:{edge}", n, policy, sch, results, None)
                    rows.append(row)
                    on_row(row)
    return rows


# -- the report --------------------------------------------------------------------------------

HEADER = (f"{'mode':<16} {'N':>3} {'policy':<10} {'sched':<8} {'agg tok/s':>9} "
          f"{'med tok/s':>9} {'p5 tok/s':>8} {'J/token':>8} {'batch':>6} {'queue ms':>8} "
          f"{'RSS MiB':>7}")


def _f(x: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if x is None else format(x, f">{width}{spec}")


def format_row(r: FleetRow) -> str:
    return (f"{r.mode:<16} {r.devices:>3} {r.policy:<10} {r.scheduler:<8} "
            f"{r.aggregate_tps:>9.1f} {r.median_tps:>9.1f} {r.p5_tps:>8.1f} "
            f"{_f(r.j_per_token, '.4f', 8)} {_f(r.mean_batch, '.1f', 6)} "
            f"{_f(r.mean_queue_ms, '.1f', 8)} {_f(r.edge_rss_mib, '.0f', 7)}")


def ratios(rows: Sequence[FleetRow]) -> list[str]:
    """Batched against serial, per (mode, N, policy), measured side by side in one run; and
    gelato against batched edge-only at each N."""
    out = []
    by = {(r.mode, r.devices, r.policy, r.scheduler): r for r in rows}
    for (mode, n, policy, sch), r in sorted(by.items()):
        if sch != "batched":
            continue
        s = by.get((mode, n, policy, "serial"))
        if s is not None and s.aggregate_tps > 0:
            out.append(f"{mode} N={n} {policy}: batched/serial aggregate "
                       f"{r.aggregate_tps / s.aggregate_tps:.2f}x, p5/median "
                       f"{r.p5_tps / r.median_tps if r.median_tps else 0:.2f}")
        e = by.get((mode, n, "edge-only", "batched"))
        if policy == "gelato" and e is not None and e.aggregate_tps > 0:
            jr = (f", J/token {r.j_per_token / e.j_per_token:.2f}x"
                  if r.j_per_token and e.j_per_token else "")
            out.append(f"{mode} N={n} gelato/edge-only (batched) aggregate "
                       f"{r.aggregate_tps / e.aggregate_tps:.2f}x{jr}")
    return out


_MODE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_SCHEDULER_LINES = {"batched": "-", "serial": "--"}


def series_styles(keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str],
                                                                tuple[str, str, str]]:
    """(colour, marker, linestyle) for each (mode, policy, scheduler) series: the colour
    says the policy, the marker the mode (edge profile), the line the scheduler (solid
    batched, dashed serial), so that no two series look alike. Pure."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    policies = list(dict.fromkeys(k[1] for k in keys))
    modes = list(dict.fromkeys(k[0] for k in keys))
    scheds = list(dict.fromkeys(k[2] for k in keys))
    cmap = colormaps["tab10" if len(policies) <= 10 else "tab20"]
    colour = {p: to_hex(cmap(i % cmap.N)) for i, p in enumerate(policies)}
    marker = {m: _MODE_MARKERS[i % len(_MODE_MARKERS)] for i, m in enumerate(modes)}
    spare = iter(ls for ls in ("-.", ":") if ls not in _SCHEDULER_LINES.values())
    line = {s: _SCHEDULER_LINES.get(s) or next(spare, ":") for s in scheds}
    return {k: (colour[k[1]], marker[k[0]], line[k[2]]) for k in keys}


def build_figure(rows: Sequence[FleetRow]) -> Any:
    """Aggregate and per-device (median, p5 band) tokens/s and J/token against N, one line per
    (mode, policy, scheduler) styled by ``series_styles``, the legend below the panels and the
    device counts as plain integer ticks on a log-2 axis. A matplotlib Figure (not attached
    to pyplot)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

    fig = Figure(figsize=(15, 5.5), dpi=110)
    axes = fig.subplots(1, 3)
    series: dict[tuple[str, str, str], list[FleetRow]] = {}
    for r in rows:
        series.setdefault((r.mode, r.policy, r.scheduler), []).append(r)
    styles = series_styles(sorted(series))
    for key, rs in sorted(series.items()):
        mode, policy, sch = key
        rs = sorted(rs, key=lambda r: r.devices)
        n = [r.devices for r in rs]
        colour, marker, ls = styles[key]
        style = {"color": colour, "marker": marker, "ls": ls, "ms": 6}
        axes[0].plot(n, [r.aggregate_tps for r in rs], label=f"{mode} {policy} {sch}", **style)
        axes[1].plot(n, [r.median_tps for r in rs], **style)
        axes[1].fill_between(n, [r.p5_tps for r in rs], [r.median_tps for r in rs],
                             color=colour, alpha=0.10)
        axes[2].plot(n, [r.j_per_token if r.j_per_token is not None else np.nan for r in rs],
                     **style)
    axes[0].set(title="aggregate tokens/s (all devices)", xlabel="devices sharing the edge",
                ylabel="tokens/s")
    axes[1].set(title="per-device tokens/s: median, band down to p5",
                xlabel="devices sharing the edge", ylabel="tokens/s")
    axes[2].set(title="per-device J/token (modelled)", xlabel="devices sharing the edge",
                ylabel="J/token")
    counts = sorted({r.devices for r in rows})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(counts))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(alpha=0.3)
    ncol = min(len(series), 4)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=ncol,
               fontsize=8, title="colour: policy; marker: mode; solid: batched, dashed: serial",
               title_fontsize=8, frameon=False)
    rows_of_legend = -(-len(series) // ncol) + 1  # entries' rows plus the title
    fig.tight_layout(rect=(0.0, min(0.05 * rows_of_legend, 0.5), 1.0, 1.0))
    return fig


def write_png(rows: Sequence[FleetRow], path: Path) -> None:
    """``build_figure(rows)`` saved as a PNG at ``path``."""
    build_figure(rows).savefig(path)
