"""Real mode of ``ondevice bench fleet``: replayed devices against a real edge.

Each device opens real sessions on a real ``edge-server`` and sends real ``round`` frames of
the tokens it replays from its trace (``_fleet_device``), after sleeping the profile's
drafting time; the edge does all its real work (prefill, batched verification with the
rejection sampler, edge-only generation). Where the edge's greedy token is not the trace's,
the session has left the trace (``fleet``'s docstring says why): a drafting device ends it
there (``diverged``) and goes on with the next prompt in a new session, as it does when a
prompt's trace runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Sequence
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
            room = min(n_tokens - res.tokens, len(pt.tokens) - 1)
            got = await _replay_leg(edge, pt, room, policy, cost, res)
            if got == 0:  # the edge ended the prompt at once (end of generation)
                break
    res.seconds = time.monotonic() - res.t_start_s
    return res


async def _stream(edge: Any, pt: PromptTrace, pos: int, n: int, res: DeviceResult
                  ) -> tuple[int, bool, bool | None]:
    """Let the edge generate ``n`` tokens from trace position ``pos``; (tokens, whether one of
    them left the trace, the edge's last advice)."""
    got, left, advice = 0, False, None
    async for chunk in edge.async_generate(n):
        for tok in chunk.ids.tolist():
            left = left or tok != int(pt.tokens[pos + got])
            got += 1
        res.count_batch(chunk.batch, chunk.queue_ms)
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
        seconds = time.monotonic() - t0
        res.diverged += int(left)
        res.tally.add_stream(got, seconds, edge_only_energy_j(cost, got, seconds))
        return got
    pos = 0
    start_prompt(policy, cost)
    while pos < room:
        r0 = time.monotonic()
        n_stream = min(policy.stream_tokens(room - pos), room - pos)
        if n_stream > 0:  # the stream action: the edge generates a stretch alone
            got, left, advice = await _stream(edge, pt, pos, n_stream, res)
            seconds = time.monotonic() - r0
            energy = edge_only_energy_j(cost, got, seconds)
            policy.observe_stream(got, seconds, energy, edge_advice=advice)
            res.tally.add_stream(got, seconds, energy)
            res.streamed += got
            pos += got
            if left or got == 0:
                res.diverged += int(left)
                break
            continue
        ids, ents = draft_round(pt, pos, policy, round_budget(policy, room - pos))
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
        pos += stats.produced
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


def edge_rss_mib(pid: int) -> float | None:
    """Resident memory of the edge process (Linux /proc), MiB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


__all__ = ["edge_rss_mib", "run_real_device", "run_real_fleet"]
