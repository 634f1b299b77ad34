"""Drafting policies: how many tokens the device drafts per round, and whether to use the edge.

A policy is a small state object with no I/O. The generation loop asks it, every round, for a
budget (``round_budget``), asks it after every drafted token whether to draft one more
(``keep_drafting``, the per-token inner loop), and tells it what happened (``observe``). The
transport never looks inside a policy, so GELATO and AdaEDL plug in here without touching it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

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


class Policy(ABC):
    """Decides drafting; ``mode`` says which path of the generation loop runs."""

    name: str = "policy"
    mode: Mode = "speculative"
    needs_entropy: bool = False  # whether keep_drafting wants the draft's entropy

    @abstractmethod
    def round_budget(self) -> int:
        """Most tokens to draft this round (the loop also caps it by what is left to generate)."""

    def keep_drafting(self, drafted: int, entropy_nats: float | None) -> bool:
        """After ``drafted`` tokens this round (the last with this entropy), draft another?"""
        return True

    def observe(self, stats: RoundStats) -> None:  # noqa: B027 - optional hook
        """Learn from a finished round (default: nothing to learn)."""

    def describe(self) -> dict[str, object]:
        """Settings to put in the report."""
        return {}


class FixedPolicy(Policy):
    """Draft exactly ``gamma`` tokens per round (distributed SD as in DSSD)."""

    name = "fixed"

    def __init__(self, gamma: int) -> None:
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        self.gamma = gamma

    def round_budget(self) -> int:
        return self.gamma

    def describe(self) -> dict[str, object]:
        return {"gamma": self.gamma}


class DeviceOnlyPolicy(Policy):
    """The draft model generates alone; the edge is never contacted."""

    name = "device-only"
    mode: Mode = "device-only"

    def round_budget(self) -> int:
        return 0


class EdgeOnlyPolicy(Policy):
    """The edge's target generates alone and streams tokens back."""

    name = "edge-only"
    mode: Mode = "edge-only"

    def round_budget(self) -> int:
        return 0


POLICIES = ("fixed", "device-only", "edge-only")


def make_policy(name: str, *, gamma: int = 4) -> Policy:
    """Build a policy by its ``--policy`` name."""
    if name == "fixed":
        return FixedPolicy(gamma)
    if name == "device-only":
        return DeviceOnlyPolicy()
    if name == "edge-only":
        return EdgeOnlyPolicy()
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
