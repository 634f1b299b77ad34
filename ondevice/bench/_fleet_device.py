"""The replayed device of ``ondevice bench fleet``, what its two modes share: the trace it
replays (``PromptTrace``), what it drafts from it (``draft_round``), how a round is priced and
counted (``close_round``, through ``ondevice.llm.round_account``), and its result.

A replayed device drafts the trace's tokens (a matched token is the target's, the first
unmatched one any other token, later ones filler the edge rejects anyway) at the speed of a
device hardware profile. Its energy is modelled from the profile (``CostModel``: drafting,
radio) with waiting power for the time its rounds and stretches really (real mode) or
virtually (sim mode) took. The draft's catch-up on committed tokens is not modelled here: a
round is priced as if the draft's cache were current (``CostModel.round(n)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ondevice.bench._hardware import CostModel, RoundCost
from ondevice.bench.trace import Trace
from ondevice.llm.policies import Policy, RoundStats
from ondevice.llm.round_account import RoundTally

FILLER = 1  # a token id for drafted positions after the first mismatch (rejected anyway)
ROUND_CAP = 32  # most tokens a replayed round drafts: the edge's default --max-draft


@dataclass(slots=True)
class DeviceResult:
    """One device's run. Seconds, joules (modelled), tokens."""

    device: int
    seconds: float = 0.0  # from its start to its last token
    t_start_s: float = 0.0
    # its rounds and stretches, counted as every loop counts them (``round_account``)
    tally: RoundTally = field(default_factory=RoundTally)
    batch_sum: float = 0.0  # sum over rounds/steps of the edge's decode size
    batch_n: int = 0
    queue_ms_sum: float = 0.0
    diverged: int = 0  # sessions whose edge path left the trace (next prompt followed)
    streamed: int = 0  # tokens the edge generated alone at the policy's choice (stream action)
    sessions: int = 0  # sessions opened (a new one per trace, real mode)
    b_history: list[int] = field(default_factory=list)  # gelato's budget per round
    placed: list[int] = field(default_factory=list)  # the edge of each session it opened
    # (monotonic s, tokens) per verdict or streamed chunk, where a run times its windows
    token_log: list[tuple[float, int]] = field(default_factory=list)
    lost: int = 0  # committed tokens not the trace's in order (lost, repeated, wrong)
    moved: int = 0  # sessions resumed on another edge (a move, a refusal, a lost edge)

    @property
    def tokens(self) -> int:
        return self.tally.tokens

    @property
    def energy_j(self) -> float:
        return self.tally.energy_j

    @property
    def rounds(self) -> int:
        return self.tally.rounds

    @property
    def drafted(self) -> int:
        return self.tally.drafted

    @property
    def accepted(self) -> int:
        return self.tally.accepted

    def count_batch(self, batch: int | None, queue_ms: float | None) -> None:
        """One edge frame (a verdict, a streamed token) and the decode it came from: ``batch``
        tokens after ``queue_ms`` of queueing (None: the edge did not say)."""
        if batch is not None:
            self.batch_sum += batch
            self.batch_n += 1
            self.queue_ms_sum += queue_ms or 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def j_per_token(self) -> float | None:
        return self.energy_j / self.tokens if self.tokens else None


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


def round_budget(policy: Policy, left: int) -> int:
    """Tokens a replayed round may draft with ``left`` tokens still to produce: the policy's
    budget, less one for the edge's own token, at most ``ROUND_CAP``."""
    return max(0, min(policy.round_budget(), left - 1, ROUND_CAP))


def start_prompt(policy: Policy, cost: CostModel) -> None:
    """A device begins a prompt: a policy that wants one is told the drafting time and energy
    of one token (the replayed draft's are the profile's)."""
    d = cost.device
    if policy.wants_draft_time():
        policy.calibrate(d.draft_ms_per_token / 1e3, d.draft_ms_per_token / 1e3 * d.draft_w)
    policy.begin_prompt()


def round_energy_j(cost: CostModel, rc: RoundCost, round_s: float) -> float:
    """Device energy (modelled) of a replayed round that took ``round_s`` seconds: the
    profile's drafting and radio energy for ``rc``, and waiting power for the rest of the
    round's measured (or simulated) time instead of the profile's."""
    d = cost.device
    return rc.draft_energy_j + d.wait_w * (round_s - rc.draft_s) + (
        rc.energy_j - rc.draft_energy_j - d.wait_w * (rc.round_s - rc.draft_s))


def close_round(res: DeviceResult, policy: Policy, cost: CostModel, *, drafted: int,
                accepted: int, produced: int, entropies: list[float], rtt_s: float,
                verify_s: float, round_s: float, queue_s: float | None, batch: int | None,
                advice: bool | None) -> RoundStats:
    """A replayed round's verdict is in (either mode): its energy priced by
    ``round_energy_j``, counted in the device's tally, observed by its policy."""
    rc = cost.round(drafted)
    stats = res.tally.add_round(RoundStats(
        drafted=drafted, accepted=accepted, produced=produced, draft_s=rc.draft_s,
        rtt_s=rtt_s, verify_s=verify_s, round_s=round_s,
        energy_j=round_energy_j(cost, rc, round_s), draft_energy_j=rc.draft_energy_j,
        entropies=entropies, queue_s=queue_s, batch_tokens=batch, edge_advice=advice))
    res.b_history.append(drafted)
    policy.observe(stats)
    return stats


def edge_only_energy_j(cost: CostModel, tokens: int, seconds: float) -> float:
    """Device energy (modelled) of receiving ``tokens`` streamed tokens over ``seconds``: the
    radio's per-frame cost from the profile plus waiting power for the measured time."""
    s_model, e_model = cost.edge_only(tokens)
    return e_model - cost.device.wait_w * s_model + cost.device.wait_w * seconds


__all__ = ["FILLER", "ROUND_CAP", "DeviceResult", "PromptTrace", "close_round", "draft_round",
           "edge_only_energy_j", "prompt_traces", "round_budget", "round_energy_j",
           "start_prompt"]
