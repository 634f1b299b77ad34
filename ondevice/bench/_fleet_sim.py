"""Sim mode of ``ondevice bench fleet``: the same replayed devices and policies against an
event-driven model of a batching edge, on a virtual clock.

The edge runs one decode at a time; a decode takes every job waiting (``batched``; the first
in ``serial``) and costs what the edge profile says of its tokens (``EdgeProfile.verify_ms``).
Devices draft (the profile's time), send (half the RTT each way), wait. The modelled edge
advises its sessions as the real one does: every decode feeds the same ``StreamAdvisor``
(``ondevice.common.stream_advice``) what the engine feeds it, and each verdict and streamed
stretch carries its advice to the device's policy, as ``advise`` in the real frames does.

Several edges (``edges`` > 1) are independent copies of that edge, each with its own queue,
clock and advisor; each device's session is placed, as it opens, on the edge with the lowest
expected wait by the devices' own rule (``place_session``, ``ondevice.edge.placement``).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ondevice.bench._fleet_device import (
    DeviceResult,
    PromptTrace,
    close_round,
    draft_round,
    edge_only_energy_j,
    round_budget,
    start_prompt,
)
from ondevice.bench._hardware import CostModel
from ondevice.bench.action_plan import leading_accepts
from ondevice.common.stream_advice import ACTIVE_S, StreamAdvisor
from ondevice.edge.placement import EdgeLoad, rank
from ondevice.llm.policies import Policy, make_policy


class _Job(NamedTuple):
    """A request waiting at the modelled edge: a round of ``drafted`` tokens (maybe none), or
    one decode step of a stream (edge-only, or a stretch: ``drafted`` 0, no ids). Ordered by
    arrival, then device: the order the edge takes them in."""

    arrive_t: float  # when it reaches the edge
    dev: int
    drafted: int
    ids: list[int]
    entropies: list[float]
    start_t: float  # when the device began the round, or asked for the stream


class _Stretch(NamedTuple):
    """A stretch the edge streams to a device at its policy's choice."""

    end: int  # the trace position where it ends
    start_t: float  # when the device asked for it
    tokens: int


class _Decode(NamedTuple):
    """One batched decode of the modelled edge."""

    t: float  # when it began
    done_t: float  # when it ended
    batch: int  # tokens it evaluated
    compute_s: float
    advise: bool | None  # the edge's advice to stream, as its frames carry it


@dataclass(slots=True)
class _SimDevice:
    """One simulated device: its policy, its result, the trace it replays, where it is."""

    policy: Policy
    result: DeviceResult
    trace: PromptTrace
    limit: int  # tokens it generates
    pos: int = 0
    start_t: float | None = None  # its first event
    closed: bool = False  # done: its session is closed
    last_job_t: float = -math.inf  # when its session last had a job decoded
    stretch: _Stretch | None = None  # the stretch the edge streams to it, if one
    advice: bool | None = None  # the advice of its stretch's latest step
    edge: int = 0  # the edge its session is placed on


@dataclass(slots=True)
class _SimEdge:
    """One modelled edge: the jobs that reached it, when its decode ends, its advisor."""

    pending: list[_Job] = field(default_factory=list)
    free_at: float = 0.0
    advisor: StreamAdvisor = field(default_factory=StreamAdvisor)  # a pure class, no I/O
    sessions: int = 0  # sessions placed on it


def place_session(sessions: Sequence[int], *, capacity: int, rtt_ms: float, step_ms: float,
                  rng: random.Random) -> int:
    """The edge (its index) a new session goes to by the devices' own rule
    (``ondevice.edge.placement.rank``: the lowest expected wait, ``rtt + sessions x step``,
    near ties shuffled by ``rng``), for modelled edges alike but for their ``sessions``."""
    loads = [EdgeLoad(url=str(k), sessions=s, capacity=capacity, rtt_ms=rtt_ms,
                      step_ms=step_ms) for k, s in enumerate(sessions)]
    return int(rank(loads, rng=rng)[0].url)


class _FleetSim:
    """The event loop of ``simulate_fleet``: a heap of (time, seq, kind, device) events,
    "draft" (a device decides what to do next) and "arrive"/"edge" (the edge may decode)."""

    def __init__(self, devices: list[_SimDevice], cost: CostModel, scheduler: str,
                 edges: int = 1) -> None:
        self.devices, self.cost, self.scheduler = devices, cost, scheduler
        self.half_rtt = cost.device.rtt_ms / 2e3
        self.events: list[tuple[float, int, str, int]] = []
        self.seq = 0
        self.edges = [_SimEdge() for _ in range(edges)]
        rng = random.Random(0)  # the placement's near-tie shuffle, seeded: a run repeats
        for dev in devices:  # each device opens its session before its first round
            dev.edge = place_session(
                [e.sessions for e in self.edges], capacity=len(devices),
                rtt_ms=cost.device.rtt_ms, step_ms=cost.edge.verify_ms(1), rng=rng)
            self.edges[dev.edge].sessions += 1
            dev.result.placed.append(dev.edge)

    def push(self, t: float, kind: str, dev: int) -> None:
        heapq.heappush(self.events, (t, self.seq, kind, dev))
        self.seq += 1

    def send(self, job: _Job) -> None:
        self.edges[self.devices[job.dev].edge].pending.append(job)
        self.push(job.arrive_t, "arrive", job.dev)

    def run(self) -> list[DeviceResult]:
        for i in range(len(self.devices)):
            self.push(0.0, "draft", i)
        while self.events:
            t, _, kind, i = heapq.heappop(self.events)
            if kind == "draft":
                self.device_step(t, i)
            else:
                self.edge_step(t, i)
        return [d.result for d in self.devices]

    def device_step(self, t: float, i: int) -> None:
        """Device ``i`` closes, asks the edge to stream, or drafts a round and sends it."""
        dev = self.devices[i]
        if dev.start_t is None:
            dev.start_t = t
        if dev.pos >= dev.limit:
            dev.result.seconds = t - dev.start_t
            dev.closed = True
            return
        left = dev.limit - dev.pos
        if dev.policy.mode == "edge-only":  # one generate request, then the edge streams
            self.send(_Job(t + self.half_rtt, i, 0, [], [], t))
            return
        n_stream = min(dev.policy.stream_tokens(left), left)
        if n_stream > 0:  # a stretch: one generate request, then the edge streams
            dev.stretch = _Stretch(dev.pos + n_stream, t, n_stream)
            self.send(_Job(t + self.half_rtt, i, 0, [], [], t))
            return
        ids, ents = draft_round(dev.trace, dev.pos, dev.policy, round_budget(dev.policy, left))
        draft_s = self.cost.draft_s(len(ids), 1)
        self.send(_Job(t + draft_s + self.half_rtt, i, len(ids), ids, ents, t))

    def edge_step(self, t: float, i: int) -> None:
        """If device ``i``'s edge is free and jobs have arrived: one decode of every waiting
        job (``batched``; the first in ``serial``), observed by the edge's advisor, then each
        job's device gets its verdict or streamed token."""
        e = self.devices[i].edge
        edge = self.edges[e]
        ready = [job for job in edge.pending if job.arrive_t <= t + 1e-12]
        if not ready or edge.free_at > t + 1e-12:
            if ready:
                self.push(edge.free_at, "edge", i)
            return
        take = sorted(ready)[: (1 if self.scheduler == "serial" else len(ready))]
        for job in take:
            edge.pending.remove(job)
        batch = sum(job.drafted + 1 for job in take)
        svc = self.cost.edge.verify_ms(batch) / 1e3
        idle_s, edge.free_at = t - edge.free_at, t + svc
        # a round's accepted prefix, known to the edge once it has verified
        accepted = {}
        for job in take:
            dev = self.devices[job.dev]
            if dev.stretch is None and dev.policy.mode != "edge-only":
                accepted[job.dev] = leading_accepts(dev.trace.match, dev.pos, job.drafted)
            dev.last_job_t = edge.free_at
        # serial scheduling never batches: a streamed token is a step of its own
        active = 1 if self.scheduler == "serial" else sum(
            1 for d in self.devices
            if d.edge == e and not d.closed and edge.free_at - d.last_job_t < ACTIVE_S)
        edge.advisor.observe_step(
            compute_s=svc, idle_s=idle_s, tokens=batch, jobs=len(take), active=active,
            rounds=[(job.drafted + 1, accepted[job.dev] + 1) for job in take
                    if job.dev in accepted],
            fit=True)  # every job asks a logits row per token (no prefill here)
        step = _Decode(t, edge.free_at, batch, svc, edge.advisor.advise_stream)
        for job in take:
            dev = self.devices[job.dev]
            if dev.stretch is not None:
                self.stretch_step(dev, job, step)
            elif dev.policy.mode == "edge-only":
                self.edge_only_step(dev, job, step)
            else:
                self.verdict(dev, job, accepted[job.dev], step)
        if edge.pending:
            self.push(edge.free_at, "edge", i)

    def _streamed_token(self, dev: _SimDevice, job: _Job, step: _Decode) -> None:
        dev.pos += 1
        dev.result.count_batch(step.batch, max(step.t - job.arrive_t, 0.0) * 1e3)

    def stretch_step(self, dev: _SimDevice, job: _Job, step: _Decode) -> None:
        """One token of a stretch; after its last, the device observes it and decides."""
        assert dev.stretch is not None
        self._streamed_token(dev, job, step)
        dev.advice = step.advise  # each streamed token's frame carries it
        if dev.pos < dev.stretch.end:
            self.edges[dev.edge].pending.append(job._replace(arrive_t=step.done_t))
            return
        done_t = step.done_t + self.half_rtt
        seconds, n_got = done_t - dev.stretch.start_t, dev.stretch.tokens
        energy = edge_only_energy_j(self.cost, n_got, seconds)
        dev.policy.observe_stream(n_got, seconds, energy, edge_advice=dev.advice)
        dev.result.tally.add_stream(n_got, seconds, energy)
        dev.result.streamed += n_got
        dev.stretch, dev.advice = None, None
        self.push(done_t, "draft", job.dev)

    def edge_only_step(self, dev: _SimDevice, job: _Job, step: _Decode) -> None:
        """One token of an edge-only device; the edge goes on at once, or it is done."""
        self._streamed_token(dev, job, step)
        if dev.pos < dev.limit:
            self.edges[dev.edge].pending.append(job._replace(arrive_t=step.done_t))
            return
        assert dev.start_t is not None
        seconds = step.done_t + self.half_rtt - dev.start_t
        dev.result.seconds = seconds
        dev.result.tally.add_stream(dev.pos, seconds,
                                    edge_only_energy_j(self.cost, dev.pos, seconds))
        dev.closed = True

    def verdict(self, dev: _SimDevice, job: _Job, accepted: int, step: _Decode) -> None:
        """A round's verdict reaches its device, which counts the round and drafts again."""
        produced = min(accepted + 1, dev.limit - dev.pos) if job.drafted else 1
        done_t = step.done_t + self.half_rtt
        queue_s = max(step.t - job.arrive_t, 0.0)
        close_round(dev.result, dev.policy, self.cost, drafted=job.drafted, accepted=accepted,
                    produced=produced, entropies=job.entropies,
                    rtt_s=done_t - job.arrive_t + self.half_rtt, verify_s=step.compute_s,
                    round_s=done_t - job.start_t, queue_s=queue_s, batch=step.batch,
                    advice=step.advise)
        dev.result.count_batch(step.batch, queue_s * 1e3)
        dev.pos += produced
        self.push(done_t, "draft", job.dev)


def simulate_fleet(traces: Sequence[PromptTrace], policy_name: str, n: int, cost: CostModel,
                   n_tokens: int, *, scheduler: str = "batched",
                   power_budget_w: float | None = None, edges: int = 1,
                   make: Callable[..., Policy] = make_policy) -> list[DeviceResult]:
    """N devices and one edge (or ``edges`` alike, each session placed by
    ``place_session``) on a virtual clock. The edge runs one decode at a time; a decode
    takes every pending job (``batched``; one in ``serial``) and lasts
    ``t0 + k * tokens``. Devices draft, send (half the RTT each way plus transfer), wait.
    After each decode the edge's ``StreamAdvisor`` observes it (as ``edge_server._engine``
    does) and its advice reaches the devices in that decode's verdicts and stretches."""
    devices = []
    for i in range(n):  # each device replays one prompt, its draft's speed measured
        policy = make(policy_name, gamma=4, power_budget_w=power_budget_w)
        start_prompt(policy, cost)
        pt = traces[i % len(traces)]
        devices.append(_SimDevice(policy, DeviceResult(i), pt, min(n_tokens, len(pt.tokens) - 1)))
    return _FleetSim(devices, cost, scheduler, edges).run()


__all__ = ["place_session", "simulate_fleet"]
