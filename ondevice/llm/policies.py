"""Drafting policies: how many tokens the device drafts per round, and whether to use the edge.

The contract (``Policy``, ``RoundStats``) is in ``_policy``; GELATO in ``_gelato_policy``; the
baselines here, with ``make_policy`` that builds any of them by its ``--policy`` name, and
``PolicyConfig``, the same arguments as one record (what ``Device`` takes).
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

from ondevice.llm import gelato
from ondevice.llm._gelato_policy import GelatoPolicy
from ondevice.llm._policy import Mode, Policy, RoundStats
from ondevice.llm.policy_names import DEFAULT_V, POLICIES


class FixedPolicy(Policy):
    """Draft exactly ``gamma`` tokens per round (distributed SD as in DSSD)."""

    name = "fixed"

    def __init__(self, gamma: int, *, ahead: int = 0) -> None:
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0, got {ahead}")
        self.gamma = gamma
        self.ahead = ahead  # tokens drafted ahead of every round in flight

    def round_budget(self) -> int:
        return self.gamma

    def ahead_tokens(self, drafted: int) -> int:
        return self.ahead if drafted else 0

    def describe(self) -> dict[str, object]:
        return {"gamma": self.gamma, **({"ahead": self.ahead} if self.ahead else {})}


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


class AdaEdlPolicy(Policy):
    """AdaEDL: stop drafting once the entropy bound 1 - sqrt(c H) drops below ``threshold``;
    no energy control. Capped at ``cap`` tokens per round."""

    name = "adaedl"
    needs_entropy = True

    def __init__(self, *, threshold: float = 0.5, c: float = gelato.ADAEDL_C, cap: int = 16):
        self.threshold, self.c, self.cap = threshold, c, cap

    def round_budget(self) -> int:
        return self.cap

    def keep_drafting(self, drafted: int, entropy_nats: float | None) -> bool:
        assert entropy_nats is not None
        return gelato.adaedl_bound(entropy_nats, self.c) >= self.threshold

    def describe(self) -> dict[str, object]:
        return {"threshold": self.threshold, "c": self.c, "cap": self.cap}


class HfHeuristicPolicy(Policy):
    """Hugging Face's assisted-generation schedule: +2 after a fully accepted round, else -1."""

    name = "hf-heuristic"

    def __init__(self, *, start: int = 4, cap: int = 16) -> None:
        self.gamma, self.cap = start, cap
        self._sum = 0
        self._rounds = 0

    def round_budget(self) -> int:
        return self.gamma

    def observe(self, stats: RoundStats) -> None:
        if stats.drafted and stats.accepted == stats.drafted:
            self.gamma = min(self.gamma + 2, self.cap)
        elif stats.drafted:
            self.gamma = max(self.gamma - 1, 1)
        self._sum += stats.drafted
        self._rounds += 1

    def describe(self) -> dict[str, object]:
        return {"final_gamma": self.gamma, "cap": self.cap}


def make_policy(
    name: str, *, gamma: int = 4, v: float = DEFAULT_V, power_budget_w: float | None = None,
    energy_per_token_j: float | None = None, draft_ahead: int | None = None,
) -> Policy:
    """Build a policy by its ``--policy`` name. ``draft_ahead``: None, gelato decides (fixed
    drafts none ahead); 0, never; N > 0, fixed drafts N ahead of every round (gelato: allowed,
    it decides how far). Other policies take no ``draft_ahead`` but None or 0."""
    if draft_ahead is not None and draft_ahead < 0:
        raise ValueError(f"draft_ahead must be >= 0, got {draft_ahead}")
    if draft_ahead and name not in ("gelato", "fixed"):
        raise ValueError("drafting ahead is for the gelato and fixed policies")
    if name == "gelato":
        budget = None
        if power_budget_w is not None or energy_per_token_j is not None:
            budget = gelato.Budget(power_w=power_budget_w, j_per_token=energy_per_token_j)
        return GelatoPolicy(v=v, budget=budget, ahead=draft_ahead != 0)
    if name == "fixed":
        return FixedPolicy(gamma, ahead=draft_ahead or 0)
    if name == "adaedl":
        return AdaEdlPolicy()
    if name == "hf-heuristic":
        return HfHeuristicPolicy()
    if name == "device-only":
        return DeviceOnlyPolicy()
    if name == "edge-only":
        return EdgeOnlyPolicy()
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """A drafting policy by its ``--policy`` name and the settings ``make_policy`` takes:
    ``gamma`` tokens per round (fixed); ``v`` GELATO's throughput-vs-energy weight (J per
    token); at most one budget, ``power_budget_w`` (W, long-run mean device power) or
    ``energy_per_token_j`` (J per generated token), for gelato only; ``draft_ahead`` as in
    ``make_policy``. A record of settings: ``make()`` builds a fresh policy each call.

    Raises ValueError when a budget is given to a policy other than gelato; ``make()`` raises
    what ``make_policy`` does (an unknown name, both budgets, a bad ``draft_ahead``).
    """

    name: str = "gelato"
    _: KW_ONLY
    gamma: int = 4
    v: float = DEFAULT_V
    power_budget_w: float | None = None
    energy_per_token_j: float | None = None
    draft_ahead: int | None = None

    def __post_init__(self) -> None:
        if self.name != "gelato" and (self.power_budget_w is not None
                                      or self.energy_per_token_j is not None):
            raise ValueError("power_budget_w/energy_per_token_j are for policy 'gelato'")

    def make(self) -> Policy:
        return make_policy(self.name, gamma=self.gamma, v=self.v,
                           power_budget_w=self.power_budget_w,
                           energy_per_token_j=self.energy_per_token_j,
                           draft_ahead=self.draft_ahead)


__all__ = ["DEFAULT_V", "POLICIES", "AdaEdlPolicy", "DeviceOnlyPolicy", "EdgeOnlyPolicy",
           "FixedPolicy", "GelatoPolicy", "HfHeuristicPolicy", "Mode", "Policy",
           "PolicyConfig", "RoundStats", "make_policy"]
