"""Real mode of ``ondevice bench fleet``: replayed devices against a real edge.

Each device opens real sessions on a real ``edge-server`` and sends real ``round`` frames of
the tokens it replays from its trace (``_fleet_device``), after sleeping the profile's
drafting time; the edge does all its real work (prefill, batched verification with the
rejection sampler, edge-only generation). Where the edge's greedy token is not the trace's,
the session has left the trace (``fleet``'s docstring says why): a drafting device ends it
there (``diverged``) and goes on with the next prompt in a new session, as it does when a
prompt's trace runs out.

A prompt's replay is a ``Leg``: the tokens the edge has committed along it, in order, as the
device received them. A session that ends early (an edge that drains or dies,
``_fleet_edges``) resumes on another edge from there: a new session whose prompt is the
prompt plus those tokens; a round whose verdict never came commits nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
from ondevice.llm.policies import Policy, make_policy


@dataclass(slots=True)
class Leg:
    """One prompt's replay across the sessions it takes: its trace, the token ids the edge
    committed along it (in order, as received), where the first of them left the trace, and
    where sessions resumed it."""

    pt: PromptTrace
    committed: list[int] = field(default_factory=list)
    first_off: int | None = None  # the position of the first committed token not the trace's
    resumed_at: list[int] = field(default_factory=list)  # positions where a session resumed it

    @property
    def pos(self) -> int:
        """The trace position the next token is at."""
        return len(self.committed)

    @property
    def left_trace(self) -> bool:
        """The edge left the trace: past ``first_off`` the trace no longer applies."""
        return self.first_off is not None

    def context(self) -> list[int]:
        """What a session resuming the leg opens with: the prompt and the committed tokens."""
        return [*self.pt.ids, *self.committed]

    def resume(self) -> None:
        """A new session takes the leg on from ``pos``."""
        self.resumed_at.append(self.pos)

    def commit(self, ids: Sequence[int]) -> bool:
        """Count ``ids`` as committed; True once the leg has left the trace."""
        for tok in ids:
            if self.first_off is None and tok != int(self.pt.tokens[self.pos]):
                self.first_off = self.pos
            self.committed.append(tok)
        return self.left_trace

    def lost(self) -> int:
        """Tokens a resume lost or repeated, as far as the trace tells: where the leg left the
        trace at a resume, with the trace's previous or next token (one repeated or
        skipped), every token from there. Off the trace anywhere else, or with another
        token, the edge took its own path (a near-tie, ``diverged``), past which the trace
        says nothing; where the edge never leaves the trace (the tests' models), a token
        lost, repeated or out of order anywhere shows as a leg off the trace, so both
        counts together are the strict check."""
        p = self.first_off
        if p is None or p not in self.resumed_at:
            return 0
        near = {int(self.pt.tokens[q]) for q in (p - 1, p + 1) if 0 <= q < len(self.pt.tokens)}
        return len(self.committed) - p if self.committed[p] in near else 0


async def run_real_device(index: int, url: str, pts: Sequence[PromptTrace], policy: Policy,
                          cost: CostModel, vocab_hash: str, n_tokens: int,
                          start_delay_s: float = 0.0) -> DeviceResult:
    """One replayed device against a real edge (module docstring): ``n_tokens`` tokens over
    one socket, replaying ``pts[0]``, then ``pts[1]``, ... in turn (a new session each) when a
    trace runs out or the edge's greedy path leaves it (``diverged``)."""
    from ondevice.edge.client import EdgeClient

    await asyncio.sleep(start_delay_s)
    res = DeviceResult(index, t_start_s=time.monotonic())
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
            leg = Leg(pt)
            await replay_leg(edge, leg, min(n_tokens - res.tokens, len(pt.tokens) - 1),
                             policy, cost, res)
            if leg.pos == 0:  # the edge ended the prompt at once (end of generation)
                break
    res.seconds = time.monotonic() - res.t_start_s
    return res


async def _stream(edge: Any, leg: Leg, n: int, res: DeviceResult,
                  stop: asyncio.Event | None) -> bool | None:
    """Let the edge generate ``n`` tokens along ``leg``, each committed as it comes (a stream
    cut short keeps what arrived), asking it to stop early once ``stop`` is set; the edge's
    last advice."""
    advice = None
    async for chunk in edge.async_generate(n):
        if stop is not None and stop.is_set():
            await edge.async_stop()
        ids = chunk.ids.tolist()
        leg.commit(ids)
        res.token_log.append((time.monotonic(), len(ids)))
        res.count_batch(chunk.batch, chunk.queue_ms)
        advice = chunk.advise if chunk.advise is not None else advice
    return advice


async def _stretch(edge: Any, leg: Leg, n: int, policy: Policy | None, cost: CostModel,
                   res: DeviceResult, stop: asyncio.Event | None) -> int:
    """A stretch of at most ``n`` tokens the edge streams, counted in the tally even when it
    is cut short; ``policy`` (None: edge-only) observes it when it ends. Its tokens."""
    t0, pos0, advice = time.monotonic(), leg.pos, None
    try:
        advice = await _stream(edge, leg, n, res, stop)
    finally:
        got, seconds = leg.pos - pos0, time.monotonic() - t0
        energy = edge_only_energy_j(cost, got, seconds)
        res.tally.add_stream(got, seconds, energy)
        if policy is not None:
            res.streamed += got
    if policy is not None:
        policy.observe_stream(got, seconds, energy, edge_advice=advice)
    return got


async def replay_leg(edge: Any, leg: Leg, end: int, policy: Policy, cost: CostModel,
                     res: DeviceResult, *, stop: asyncio.Event | None = None) -> None:
    """Replay ``leg`` in the session open on ``edge``, from its committed position up to
    trace position ``end``. Drafting policies stop the leg where the edge's token is not the
    trace's (``leg.left_trace``, counted in ``diverged``): past it the trace no longer
    describes the session's context (a near-tie that the edge's batch resolved the other
    way, or a path recorded with other float sums). Raises what the client raises; what was
    committed before stays in ``leg``. Once ``stop`` is set it ends after the round or
    stretch in progress."""
    if policy.mode == "edge-only":  # the tokens' values do not change its cost: no early stop
        await _stretch(edge, leg, end - leg.pos, None, cost, res, stop)
        res.diverged += int(leg.left_trace)
        return
    if leg.pos == 0:
        start_prompt(policy, cost)
    while leg.pos < end and not (stop is not None and stop.is_set()):
        r0 = time.monotonic()
        pos = leg.pos
        n_stream = min(policy.stream_tokens(end - pos), end - pos)
        if n_stream > 0:  # the stream action: the edge generates a stretch alone
            got = await _stretch(edge, leg, n_stream, policy, cost, res, stop)
            if leg.left_trace or got == 0:
                res.diverged += int(leg.left_trace)
                break
            continue
        ids, ents = draft_round(leg.pt, pos, policy, round_budget(policy, end - pos))
        await asyncio.sleep(cost.draft_s(len(ids), 1))  # the profile's device drafting time
        s0 = time.monotonic()
        n = len(ids)
        verdict = await edge.async_round(
            np.asarray(ids, np.int32), np.asarray(ids, np.int32).reshape(n, 1),
            np.ones((n, 1), np.float32))
        r1 = time.monotonic()
        stats = close_round(
            res, policy, cost, drafted=n, accepted=verdict.accepted,
            produced=verdict.accepted + 1, entropies=ents, rtt_s=r1 - s0,
            verify_s=verdict.verify_ms / 1e3, round_s=r1 - r0,
            queue_s=None if verdict.queue_ms is None else verdict.queue_ms / 1e3,
            batch=verdict.batch, advice=verdict.advise)
        res.count_batch(verdict.batch, verdict.queue_ms)
        res.token_log.append((r1, stats.produced))
        if leg.commit([*ids[:verdict.accepted], int(verdict.token)]):  # the edge left it
            res.diverged += 1
            break


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


def edge_rss_mib(pid: int) -> float | None:
    """Resident memory of the edge process (Linux /proc), MiB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


__all__ = ["Leg", "edge_rss_mib", "replay_leg", "run_real_device", "run_real_fleet"]
