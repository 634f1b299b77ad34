"""Which policy runs a GELATO benchmark compares, shared by the sim and real modes.

A run is a ``PolicySpec`` (how to build a fresh policy, and how to label it). The benchmark
runs the baselines and unconstrained GELATO first, then GELATO under a binding energy budget:
a V sweep at one budget, and "matched" runs whose energy-per-token budget is a baseline's
measured J/token (the direct "at equal energy per token" comparison).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ondevice.bench.report import BenchRow
from ondevice.llm.policies import DEFAULT_V, POLICIES, Policy, make_policy

DEFAULT_GAMMAS = (1, 2, 4, 8)
DEFAULT_V_SWEEP = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # J per token
MATCHED_AGAINST = ("fixed-4", "adaedl", "hf-heuristic", "edge-only")  # gelato matched to
AUTO_BUDGET_FRACTION = 0.5  # auto power budget: this far from the least mean power of any
# run (the device waiting, nothing drafted) toward unconstrained GELATO's, so it binds and
# stays feasible


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    """What a ``bench gelato`` run compares. Budgets: W or J/token; None means automatic."""

    policies: tuple[str, ...] = POLICIES
    gammas: tuple[int, ...] = DEFAULT_GAMMAS
    v: float = DEFAULT_V
    v_sweep: tuple[float, ...] = DEFAULT_V_SWEEP
    power_budget_w: float | None = None
    energy_per_token_j: float | None = None
    matched: bool = True
    reference: bool = True  # sim: the hindsight-tuned entropy-threshold row
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        unknown = set(self.policies) - set(POLICIES)
        if unknown:
            raise ValueError(f"unknown policies {sorted(unknown)}; choose from "
                             f"{', '.join(POLICIES)}")
        if self.power_budget_w is not None and self.energy_per_token_j is not None:
            raise ValueError("give at most one of a power budget and an energy-per-token budget")
        if any(v <= 0 for v in (self.v, *self.v_sweep)) or any(g < 1 for g in self.gammas):
            raise ValueError("V values must be > 0 and gammas >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySpec:
    """A policy run: ``make()`` builds a fresh policy; ``label`` names its row."""

    label: str
    group: str  # "baseline" | "gelato" | "gelato-sweep" | "gelato-matched"
    name: str
    gamma: int = 4
    v: float = DEFAULT_V
    power_budget_w: float | None = None
    energy_per_token_j: float | None = None

    def make(self) -> Policy:
        return make_policy(self.name, gamma=self.gamma, v=self.v,
                           power_budget_w=self.power_budget_w,
                           energy_per_token_j=self.energy_per_token_j)


def first_specs(cfg: BenchConfig) -> list[PolicySpec]:
    """Phase one: every baseline and GELATO at its default V without a budget."""
    out: list[PolicySpec] = []
    for name in cfg.policies:
        if name == "fixed":
            out += [PolicySpec(label=f"fixed-{g}", group="baseline", name="fixed", gamma=g)
                    for g in cfg.gammas]
        elif name == "gelato":
            out.append(PolicySpec(label="gelato", group="gelato", name="gelato", v=cfg.v))
        else:
            out.append(PolicySpec(label=name, group="baseline", name=name))
    return out


def auto_power_budget(rows: Sequence[BenchRow]) -> tuple[float, float] | None:
    """(budget W, floor W): a power budget between the least mean power of the phase-one
    runs (the device mostly waiting) and unconstrained GELATO's, so that it binds whenever
    GELATO drafts at all. None without a ``gelato`` row."""
    free = next((r for r in rows if r.policy == "gelato"), None)
    if free is None:
        return None
    floor = min(r.mean_w for r in rows if math.isfinite(r.mean_w))
    return floor + AUTO_BUDGET_FRACTION * (free.mean_w - floor), floor


def budget_label(power_w: float | None, j_per_token: float | None) -> str:
    if power_w is not None:
        return f"{power_w:.3g} W"
    if j_per_token is not None:
        return f"{j_per_token:.3g} J/tok"
    return "-"


def second_specs(
    cfg: BenchConfig, *, sweep_power_w: float | None, sweep_j_per_token: float | None,
    matched_j_per_token: dict[str, float],
) -> list[PolicySpec]:
    """Phase two: the V sweep at one budget, and GELATO matched to baselines' J/token."""
    if "gelato" not in cfg.policies:
        return []
    out = []
    if sweep_power_w is not None or sweep_j_per_token is not None:
        b = budget_label(sweep_power_w, sweep_j_per_token)
        out += [PolicySpec(label=f"gelato V={v:g} @{b}", group="gelato-sweep", name="gelato",
                           v=v, power_budget_w=sweep_power_w,
                           energy_per_token_j=sweep_j_per_token) for v in cfg.v_sweep]
    if cfg.matched:
        out += [PolicySpec(label=f"gelato @{base}", group="gelato-matched", name="gelato",
                           v=cfg.v, energy_per_token_j=j)
                for base, j in matched_j_per_token.items()]
    return out


def matched_budgets(
    rows: Sequence[BenchRow], *, free_j_per_token: float | None,
) -> dict[str, float]:
    """Baselines (of MATCHED_AGAINST) whose J/token is below unconstrained GELATO's: the
    budgets at which GELATO is rerun to compare at equal energy per token."""
    out = {}
    for r in rows:
        if r.policy in MATCHED_AGAINST and math.isfinite(r.j_per_token) and (
            free_j_per_token is None or r.j_per_token < free_j_per_token
        ):
            out[r.policy] = r.j_per_token
    return out


def choose_budgets(rows: Sequence[BenchRow], cfg: BenchConfig) -> dict[str, Any]:
    """The phase-two budgets from the phase-one rows: the sweep's (``cfg``'s, else an automatic
    power budget) and the matched energy-per-token budgets."""
    info: dict[str, Any] = {"sweep_power_w": cfg.power_budget_w,
                            "sweep_j_per_token": cfg.energy_per_token_j, "auto_budget": False}
    auto = auto_power_budget(rows)
    if auto is not None and cfg.power_budget_w is None and cfg.energy_per_token_j is None:
        info.update(sweep_power_w=auto[0], auto_budget=True, floor_w=auto[1])
    free = next((r for r in rows if r.policy == "gelato"), None)
    info["matched_j_per_token"] = matched_budgets(
        rows, free_j_per_token=free.j_per_token if free else None)
    return info


__all__ = ["DEFAULT_GAMMAS", "DEFAULT_V_SWEEP", "BenchConfig", "PolicySpec",
           "auto_power_budget", "budget_label", "choose_budgets", "first_specs", "matched_budgets",
           "second_specs"]
