"""The GELATO bench's targets as records: one frozen dataclass per kind of target.

``evaluate_targets`` (report.py) builds them from the rows and returns each one's `to_json()`:
its fields in declaration order, key for key the JSON object the bench writes under
``"targets"``, so the field order here is the file format. Ratios are GELATO's tokens/s over
another's at equal energy per token; a ratio is None where a figure is missing (no run spends
that little), and so is a ``met`` that has nothing to judge. Pure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A target's record; `to_json()` is its JSON object."""

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON object, in declaration order (dicts and lists copied)."""
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class VsBaseline(Target):
    """GELATO's tokens/s at a baseline's J/token over the baseline's (``gelato_vs_*``)."""

    baseline: str  # the baseline's policy label
    baseline_tokens_per_s: float
    baseline_j_per_token: float
    gelato_tokens_per_s_at_equal_energy: float | None  # None: every GELATO run spends more
    ratio: float | None
    target: float  # the ratio to reach
    read_from: str  # "frontier", or "matched run (+x.x% J/tok)" (the run budgeted there)
    met: bool | None  # ratio >= target


@dataclass(frozen=True, slots=True, kw_only=True)
class VsOracle(Target):
    """GELATO over the hindsight oracle of drafting lengths at GELATO's J/token."""

    ratio: float | None  # the unconstrained run's ("gelato")
    min_over_gelato_runs: float | None
    per_run: dict[str, float | None]  # GELATO policy label -> its ratio
    target: float
    met: bool | None  # ratio >= target


@dataclass(frozen=True, slots=True, kw_only=True)
class NeverBeaten(Target):
    """GELATO's tokens/s over each baseline's, at that baseline's J/token."""

    ratio_at_equal_energy: dict[str, float | None]  # baseline label -> ratio
    min: float | None  # None unless every ratio is known
    target: float  # 1 - the warm-up's tolerance
    met: bool  # every ratio known and min >= target


@dataclass(frozen=True, slots=True, kw_only=True)
class VsOracleActions(Target):
    """Unconstrained GELATO over the fastest hindsight schedule of its own actions."""

    ratio: float | None
    oracle_tokens_per_s: float
    target: float
    met: bool | None  # ratio >= target


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseDrift(Target):
    """The machine's drift between a real run's phases: edge-only run, then rerun."""

    edge_only_tokens_per_s: list[float]  # [first run, rerun]
    drift: float  # |rerun / first run - 1|


@dataclass(frozen=True, slots=True, kw_only=True)
class VSweep(Target):
    """The V sweep's check (``v_sweep_verdict``), its series in V order."""

    v: list[float]  # written as "V"
    tokens_per_s: list[float]
    energy_metric: str  # "mean_w" | "j_per_token": the budgeted quantity
    energy: list[float]  # in energy_metric's unit
    tolerance: float  # steps smaller than this fraction count as flat
    spread_tokens_per_s: float  # max / min - 1
    tokens_per_s_trend: str  # "rising" | "flat" | "reversed"
    energy_trend: str
    met: bool  # tok/s rising and energy not reversed

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON object, in declaration order, ``v`` named ``"V"``."""
        d = asdict(self)
        return {"V": d.pop("v"), **d}


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetHeld(Target):
    """The energy constraint at the binding budgets: long-run average within tolerance."""

    deviation: dict[str, float | None]  # judged run (default V, matched) -> average / budget - 1
    all_binding_runs: dict[str, float | None]  # every binding run -> the same
    tolerance: float
    met: bool | None  # every judged run held it; None when none is judged


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetUse(Target):
    """How much of each binding budget was spent: average / budget, to reach `target`."""

    use: dict[str, float | None]  # judged run -> fraction of the budget spent
    all_binding_runs: dict[str, float | None]
    target: float
    met: bool | None  # every judged run spent at least target; None when none is judged


__all__ = [
    "BudgetHeld",
    "BudgetUse",
    "NeverBeaten",
    "PhaseDrift",
    "Target",
    "VSweep",
    "VsBaseline",
    "VsOracle",
    "VsOracleActions",
]
