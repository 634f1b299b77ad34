"""The contract between a generation loop and a drafting policy, and what a round reports.

A policy is a small state object with no I/O. The generation loop asks it, every round, for a
budget (``round_budget``), asks it after every drafted token whether to draft one more
(``keep_drafting``, the per-token inner loop), and tells it what happened (``observe``). The
transport never looks inside a policy, so GELATO and AdaEDL plug in here without touching it.
The policies themselves are in ``policies`` (and GELATO's in ``_gelato_policy``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

from ondevice.llm.acceptance import TokenFeatures

Mode = Literal["speculative", "device-only", "edge-only"]


@dataclass(frozen=True, slots=True)
class RoundStats:
    """What one draft-verify round did. Times in seconds, energy in joules."""

    drafted: int
    accepted: int
    produced: int  # tokens committed by the round (accepted + 1, less any cut at the end)
    draft_s: float
    rtt_s: float  # send of the round frame to receipt of the verdict
    verify_s: float  # the edge's batched target evaluation, as it reports
    round_s: float  # whole round, wall clock
    energy_j: float  # device energy over the round (from the meter)
    draft_energy_j: float = 0.0  # of which while drafting
    entropies: list[float] = field(default_factory=list)  # per drafted token, nats (if asked)
    features: list[TokenFeatures] = field(default_factory=list)  # per drafted token (if asked)
    # Committed tokens the draft evaluated at the round's start beyond the one it drafts from
    # (0 or 1 after a drafted round; more after rounds that drafted nothing, or the prompt):
    # that catch-up is in draft_s but is not the cost of the tokens drafted.
    catchup_tokens: int = 0
    # Of draft_s, the round's first draft evaluation: the catch-up batch and the first drafted
    # token (None when not measured apart): with it, t_draft is measured on rounds after a
    # stretch too, from the tokens after the first.
    sync_s: float | None = None
    # The edge's load, as its verdict reports it (None from an edge that does not): time the
    # round waited for a batch, and the tokens of the batched decode that verified it.
    queue_s: float | None = None
    batch_tokens: int | None = None
    # The edge's advice to stream (``advise`` in its verdict; None from an edge that does not
    # give it): it is the fleet's bottleneck and drafting costs it more per token.
    edge_advice: bool | None = None
    # Drafting ahead: ``predrafted`` of this round's drafted tokens were drafted during the
    # previous round's flight (no draft time now); ``ahead`` tokens were drafted during this
    # round's flight, taking ``ahead_s`` and ``ahead_energy_j`` of its wait, and
    # ``ahead_hit`` says whether they head the next round (every drafted token accepted and
    # the edge's own next token equal to the first of them) or were dropped.
    predrafted: int = 0
    ahead: int = 0
    ahead_hit: bool = False
    ahead_s: float = 0.0
    ahead_energy_j: float = 0.0


class Policy(ABC):
    """Decides drafting; ``mode`` says which path of the generation loop runs."""

    name: str = "policy"
    mode: Mode = "speculative"
    needs_entropy: bool = False  # whether keep_drafting wants the draft's entropy
    # whether keep_drafting also wants each token's TokenFeatures, as a third argument
    needs_features: bool = False

    @abstractmethod
    def round_budget(self) -> int:
        """Most tokens to draft this round (the loop also caps it by what is left to generate)."""

    def keep_drafting(self, drafted: int, entropy_nats: float | None) -> bool:
        """After ``drafted`` tokens this round (the last with this entropy), draft another?"""
        return True

    def observe(self, stats: RoundStats) -> None:  # noqa: B027 - optional hook
        """Learn from a finished round (default: nothing to learn)."""

    def begin_prompt(self) -> None:  # noqa: B027 - optional hook
        """A new prompt starts (the draft's cache holds nothing of what was streamed for the
        last one): called by every generation loop before its first round."""

    def wants_draft_time(self) -> bool:
        """Whether the policy would use a measurement of one drafted token's time before its
        first round (``calibrate``); the loops ask once per prompt."""
        return False

    def calibrate(self, draft_s: float, draft_energy_j: float) -> None:  # noqa: B027
        """One drafted token's time and device energy, measured before any round (a draft
        evaluation timed while the model loads, or a profile's in the simulator)."""

    def stream_tokens(self, left: int | None = None) -> int:
        """Before a round: let the edge generate this many tokens alone first (0: draft).
        ``left``: tokens the prompt may still produce, when the caller knows (a stretch is
        cut there anyway; a policy may plan with it)."""
        return 0

    def observe_stream(self, tokens: int, time_s: float, energy_j: float,  # noqa: B027
                       edge_advice: bool | None = None, verify_s: float | None = None) -> None:
        """Learn from a streamed stretch (``tokens`` the edge generated alone; the edge's
        advice to stream in its last ``tokens`` frame, None if it gave none; the edge's
        compute for the stretch as it reports, None if it does not)."""

    def ahead_tokens(self, drafted: int) -> int:
        """After drafting a round of ``drafted`` tokens, before it is sent: draft up to this
        many more while it is in flight, on the bet that all of it is accepted (0: do not)."""
        return 0

    def describe(self) -> dict[str, object]:
        """Settings to put in the report."""
        return {}


__all__ = ["Mode", "Policy", "RoundStats"]
