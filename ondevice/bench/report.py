"""Benchmark rows, the comparisons at equal energy, the targets, and the table/JSON/PNG.

Comparing at equal energy per token: a set of runs of one controller spans a trade-off; any
mixture of two of them (running one for part of the tokens, the other for the rest) is also
achievable, and mixes seconds per token and joules per token linearly. ``tps_at_energy`` is
the best throughput such mixtures reach within a given J/token: the lower convex envelope of
the runs in (J/token, s/token), which is how "GELATO's tokens/s at fixed gamma = 4's J/token"
and "the oracle's tokens/s at GELATO's J/token" are read.

A budget is judged on two separate questions, and every line of the report says which one it
answers: the energy budget is *held* when the long-run average is at most BUDGET_TOLERANCE
over it (the constraint; spending less always holds it), and a binding budget is *used* when
at least BUDGET_USE_TARGET of it is spent (a controller that leaves much of a binding budget
unspent gives away throughput it was allowed).
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ondevice.bench._targets import (
    BudgetHeld,
    BudgetUse,
    NeverBeaten,
    PhaseDrift,
    Target,
    VsBaseline,
    VsOracle,
    VsOracleActions,
    VSweep,
)
from ondevice.common import jsonout
from ondevice.common.budget import BUDGET_TOLERANCE

BUDGET_USE_TARGET = 1.0 - BUDGET_TOLERANCE  # a binding budget is used when >= 97 % is spent
MONOTONE_TOLERANCE = 0.005  # V sweep steps smaller than 0.5 % count as flat, not reversed

# Policies whose text is not the target's: device-only returns the draft's own text. Their
# rows are shown, marked, and left out of every comparison between policies (the lossless
# policies' speed buys the target's text; theirs does not).
LOSSY = {"device-only": "draft's text, not lossless"}

# The issue's targets (issue 5): ratios GELATO must reach.
TARGET_VS_FIXED4 = 1.2
TARGET_VS_ADAPTIVE = 1.0
TARGET_VS_ORACLE = 0.9
# "Never beaten" allows 1 % here (a single cell's table; the held-out rule of
# ``heldout.py`` allows 2 %): GELATO's first stretch of a prompt, its round trips and its
# explorations cost up to about that where streaming is best.
NEVER_BEATEN_TOLERANCE = 0.01
NEVER_BEATEN_BY = ("fixed-1", "fixed-2", "fixed-4", "fixed-8", "adaedl", "hf-heuristic",
                   "edge-only")


@dataclass(slots=True, kw_only=True)
class BenchRow:
    """One policy run over the whole prompt set. Seconds, joules, watts."""

    policy: str  # the row's label, e.g. "fixed-4", "gelato V=2 @0.1 J/tok"
    group: str  # "baseline" | "gelato" | "gelato-sweep" | "gelato-matched" | "oracle" | ...
    tokens: int
    time_s: float
    energy_j: float
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    v: float | None = None
    budget_w: float | None = None
    budget_j_per_token: float | None = None
    energy_source: str = "modelled"  # "modelled" | "measured"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.time_s if self.time_s > 0 else math.nan

    @property
    def j_per_token(self) -> float:
        return self.energy_j / self.tokens if self.tokens else math.nan

    @property
    def mean_w(self) -> float:
        return self.energy_j / self.time_s if self.time_s > 0 else math.nan

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def mean_drafted(self) -> float | None:
        return self.drafted / self.rounds if self.rounds else None

    @property
    def budget_deviation(self) -> float | None:
        """Long-run average over the budget, minus 1 (+0.02 = 2 % over)."""
        if self.budget_w is not None:
            return self.mean_w / self.budget_w - 1.0
        if self.budget_j_per_token is not None:
            return self.j_per_token / self.budget_j_per_token - 1.0
        return None

    @property
    def budget_use(self) -> float | None:
        """Long-run average over the budget: the fraction of the budget spent (1.02 = 102 %)."""
        dev = self.budget_deviation
        return None if dev is None else 1.0 + dev

    @property
    def budget_met(self) -> bool | None:
        """The energy budget held: the long-run average at most BUDGET_TOLERANCE over it
        (spending less holds it; whether enough of it was used is `budget_use`)."""
        dev = self.budget_deviation
        return None if dev is None else dev <= BUDGET_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("tokens_per_s", "j_per_token", "mean_w", "acceptance", "mean_drafted",
                  "budget_deviation", "budget_use", "budget_met"):
            d[k] = getattr(self, k)
        return d


def tps_at_energy(rows: Sequence[BenchRow], j_per_token: float) -> float | None:
    """Best tokens/s of any mixture of ``rows`` spending at most ``j_per_token``; None when
    every row spends more."""
    pts = [(r.j_per_token, 1.0 / r.tokens_per_s) for r in rows
           if r.tokens and r.time_s > 0 and math.isfinite(r.j_per_token)]
    best = math.inf
    x = j_per_token * (1 + 1e-9)
    for ja, sa in pts:
        if ja <= x:
            best = min(best, sa)
            for jb, sb in pts:
                if jb > x:  # mix a (cheaper) and b (dearer) to spend exactly x
                    w = (x - ja) / (jb - ja)
                    best = min(best, (1 - w) * sa + w * sb)
    return None if best == math.inf else 1.0 / best


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b and math.isfinite(b) else None


def _row(rows: Sequence[BenchRow], label: str) -> BenchRow | None:
    return next((r for r in rows if r.policy == label), None)


def gelato_points(rows: Sequence[BenchRow]) -> list[BenchRow]:
    return [r for r in rows if r.group.startswith("gelato")]


def oracle_points(rows: Sequence[BenchRow]) -> list[BenchRow]:
    return [r for r in rows if r.group in ("oracle", "oracle-frontier")]


def _met(ratio: float | None, target: float) -> bool | None:
    """Whether `ratio` reaches `target`; None when there is no ratio. Pure."""
    return None if ratio is None else ratio >= target


def _vs_baseline(rows: Sequence[BenchRow], label: str, target: float) -> VsBaseline | None:
    """GELATO against the row `label` at its J/token: read off GELATO's frontier, or from the
    run budgeted at it (``gelato @label``, if within tolerance) when every GELATO run spends
    more; None without that row or any GELATO run."""
    g_pts = gelato_points(rows)
    base = _row(rows, label)
    if base is None or not g_pts:
        return None
    g = tps_at_energy(g_pts, base.j_per_token)
    how = "frontier"
    matched = _row(rows, f"gelato @{label}")
    if g is None and matched is not None and matched.budget_met:
        # every GELATO run spends more, the one budgeted at this J/token within tolerance
        g, how = matched.tokens_per_s, f"matched run ({matched.budget_deviation:+.1%} J/tok)"
    r = _ratio(g, base.tokens_per_s)
    return VsBaseline(
        baseline=label, baseline_tokens_per_s=base.tokens_per_s,
        baseline_j_per_token=base.j_per_token, gelato_tokens_per_s_at_equal_energy=g,
        ratio=r, target=target, read_from=how, met=_met(r, target),
    )


def _vs_oracle(rows: Sequence[BenchRow]) -> VsOracle | None:
    """Each GELATO run over the oracle's frontier at its J/token, judged on the unconstrained
    run; None without oracle or GELATO runs."""
    g_pts, o_pts = gelato_points(rows), oracle_points(rows)
    if not (o_pts and g_pts):
        return None
    ratios = {r.policy: _ratio(r.tokens_per_s, tps_at_energy(o_pts, r.j_per_token))
              for r in g_pts}
    head = ratios.get("gelato") if _row(rows, "gelato") is not None else None
    known = [v for v in ratios.values() if v is not None]
    return VsOracle(ratio=head, min_over_gelato_runs=min(known) if known else None,
                    per_run=ratios, target=TARGET_VS_ORACLE, met=_met(head, TARGET_VS_ORACLE))


def _never_beaten(rows: Sequence[BenchRow]) -> NeverBeaten | None:
    """GELATO over each of NEVER_BEATEN_BY at its J/token (the frontier or the run budgeted at
    it, whichever is faster); None when none of them ran."""
    g_pts = gelato_points(rows)
    beaten = {}
    for label in NEVER_BEATEN_BY:
        base = _row(rows, label)
        if base is None or not g_pts or not base.tokens:
            continue
        g = tps_at_energy(g_pts, base.j_per_token)
        matched = _row(rows, f"gelato @{label}")
        if matched is not None and matched.budget_met and (
                g is None or matched.tokens_per_s > g):
            g = matched.tokens_per_s
        beaten[label] = _ratio(g, base.tokens_per_s)
    if not beaten:
        return None
    known = [v for v in beaten.values() if v is not None]
    target = 1.0 - NEVER_BEATEN_TOLERANCE
    return NeverBeaten(
        ratio_at_equal_energy=beaten, min=min(known) if len(known) == len(beaten) else None,
        target=target, met=len(known) == len(beaten) and min(known) >= target,
    )


def _vs_oracle_actions(rows: Sequence[BenchRow]) -> VsOracleActions | None:
    """Unconstrained GELATO over the all-actions hindsight oracle; None without either."""
    actions = next((r for r in rows if r.group == "oracle-actions"), None)
    free = _row(rows, "gelato")
    if actions is None or free is None:
        return None
    r = _ratio(free.tokens_per_s, actions.tokens_per_s)
    return VsOracleActions(ratio=r, oracle_tokens_per_s=actions.tokens_per_s,
                           target=TARGET_VS_ORACLE, met=_met(r, TARGET_VS_ORACLE))


def _phase_drift(rows: Sequence[BenchRow]) -> PhaseDrift | None:
    """Edge-only's tokens/s in a real run's two phases (the ``control`` rerun); None in a
    simulation, which has no rerun."""
    control = next((r for r in rows if r.group == "control"), None)
    base = _row(rows, "edge-only")
    if control is None or base is None:
        return None
    # real runs: the same baseline in both phases shows the machine's drift between them
    drift = abs(control.tokens_per_s / base.tokens_per_s - 1.0)
    return PhaseDrift(edge_only_tokens_per_s=[base.tokens_per_s, control.tokens_per_s],
                      drift=drift)


def _v_sweep(rows: Sequence[BenchRow], tolerance: float) -> VSweep | None:
    """The ``gelato-sweep`` runs in V order judged by `v_sweep_verdict` within `tolerance`;
    None with fewer than two."""
    sweep = sorted((r for r in rows if r.group == "gelato-sweep" and r.v is not None),
                   key=lambda r: r.v or 0.0)
    if len(sweep) < 2:
        return None
    tps = [r.tokens_per_s for r in sweep]
    # "more energy": the budgeted quantity, mean power under a power budget
    by_power = sweep[0].budget_w is not None
    spend = [r.mean_w if by_power else r.j_per_token for r in sweep]
    return VSweep(
        v=[r.v for r in sweep if r.v is not None], tokens_per_s=tps,
        energy_metric="mean_w" if by_power else "j_per_token", energy=spend,
        tolerance=tolerance, spread_tokens_per_s=max(tps) / min(tps) - 1.0,
        **v_sweep_verdict(tps, spend, tolerance),
    )


def _binding_runs(rows: Sequence[BenchRow], default_v: float) -> tuple[list[BenchRow],
                                                                        list[BenchRow]]:
    """The GELATO runs whose budget binds (below what unconstrained GELATO spends, or every
    budgeted run without it), and of those the ones judged: matched or at `default_v`."""
    free = _row(rows, "gelato")
    binding = [r for r in gelato_points(rows) if r.budget_deviation is not None and (
        free is None or _binds(r, free))]
    judged = [r for r in binding if r.group == "gelato-matched" or r.v == default_v]
    return binding, judged


def _budget_held(binding: Sequence[BenchRow], judged: Sequence[BenchRow]) -> BudgetHeld:
    """The energy constraint (module doc): every judged run within BUDGET_TOLERANCE."""
    return BudgetHeld(
        deviation={r.policy: r.budget_deviation for r in judged},
        all_binding_runs={r.policy: r.budget_deviation for r in binding},
        tolerance=BUDGET_TOLERANCE,
        met=all(bool(r.budget_met) for r in judged) if judged else None,
    )


def _budget_use(binding: Sequence[BenchRow], judged: Sequence[BenchRow]) -> BudgetUse:
    """The budget used (module doc): every judged run spent at least BUDGET_USE_TARGET."""
    return BudgetUse(
        use={r.policy: r.budget_use for r in judged},
        all_binding_runs={r.policy: r.budget_use for r in binding},
        target=BUDGET_USE_TARGET,
        met=all((r.budget_use or 0.0) >= BUDGET_USE_TARGET for r in judged)
        if judged else None,
    )


def evaluate_targets(rows: Sequence[BenchRow], *, default_v: float = 2.0) -> dict[str, Any]:
    """The issue's targets, computed from the rows; each entry has its value and ``met``.

    Budget compliance is judged on the runs at ``default_v`` (the sweep's point and the
    matched runs): drift-plus-penalty meets a budget in the long run for any V, but its queue
    grows as O(V), so at a large V a finite run ends before the queue has caught up; the
    other sweep points' deviations are listed too.

    Each entry is a record of ``_targets`` as its `to_json()`, in this order, and only where
    its rows ran: ``gelato_vs_fixed-4``, ``gelato_vs_adaedl``, ``gelato_vs_hf-heuristic``,
    ``gelato_vs_best_fixed``, ``gelato_vs_oracle``, ``never_beaten``,
    ``gelato_vs_oracle_actions``, ``phase_drift``, ``v_sweep_monotone``, ``budget_held``,
    ``budget_use``."""
    found: dict[str, Target | None] = {
        "gelato_vs_fixed-4": _vs_baseline(rows, "fixed-4", TARGET_VS_FIXED4),
        "gelato_vs_adaedl": _vs_baseline(rows, "adaedl", TARGET_VS_ADAPTIVE),
        "gelato_vs_hf-heuristic": _vs_baseline(rows, "hf-heuristic", TARGET_VS_ADAPTIVE),
    }
    fixed = [r for r in rows if r.policy.startswith("fixed-")]
    if fixed:
        best = max(fixed, key=lambda r: r.tokens_per_s)
        found["gelato_vs_best_fixed"] = _vs_baseline(rows, best.policy, 1.0)
    found["gelato_vs_oracle"] = _vs_oracle(rows)
    found["never_beaten"] = _never_beaten(rows)
    found["gelato_vs_oracle_actions"] = _vs_oracle_actions(rows)
    drift = found["phase_drift"] = _phase_drift(rows)
    tolerance = MONOTONE_TOLERANCE if drift is None else max(MONOTONE_TOLERANCE, drift.drift)
    found["v_sweep_monotone"] = _v_sweep(rows, tolerance)
    binding, judged = _binding_runs(rows, default_v)
    if binding:
        # two questions (module doc): the constraint held, and the budget used
        found["budget_held"] = _budget_held(binding, judged)
        found["budget_use"] = _budget_use(binding, judged)
    return {key: t.to_json() for key, t in found.items() if t is not None}


def trend(xs: Sequence[float], tolerance: float) -> str:
    """How a series ordered by V moves: ``"reversed"`` when some step falls by more than
    `tolerance` (a fraction), else ``"rising"`` when the last value is more than `tolerance`
    above the first, else ``"flat"``. Pure."""
    if any(b < a * (1 - tolerance) for a, b in itertools.pairwise(xs)):
        return "reversed"
    return "rising" if xs[-1] > xs[0] * (1 + tolerance) else "flat"


def v_sweep_verdict(tps: Sequence[float], spend: Sequence[float],
                    tolerance: float) -> dict[str, Any]:
    """The V sweep's check, in V order: a larger V weighs throughput more against energy
    (drift-plus-penalty), so tok/s must rise over the sweep and never fall, and the energy
    spent must not fall (at a binding budget it may stay flat: every V holds it). A flat
    tok/s is not met: the sweep then shows no trade-off at all. Pure."""
    t_tps, t_spend = trend(tps, tolerance), trend(spend, tolerance)
    return {"tokens_per_s_trend": t_tps, "energy_trend": t_spend,
            "met": t_tps == "rising" and t_spend != "reversed"}


def _binds(r: BenchRow, free: BenchRow) -> bool:
    """Whether ``r``'s budget is below what unconstrained GELATO spends."""
    if r.budget_w is not None:
        return free.mean_w > r.budget_w * (1 + BUDGET_TOLERANCE)
    assert r.budget_j_per_token is not None
    return free.j_per_token > r.budget_j_per_token * (1 + BUDGET_TOLERANCE)


# -- the table ------------------------------------------------------------------------------

def spent_words(deviation: float) -> str:
    """How a long-run average compares with its budget, e.g. 'spent 12.3 % under'. Pure."""
    if abs(deviation) < 0.0005:
        return "spent the budget"
    return f"spent {pct(abs(deviation))} {'under' if deviation < 0 else 'over'}"


def pct(x: float, digits: int = 1) -> str:
    """A fraction as a percentage in prose: 0.123 -> '12.3 %'. Pure."""
    return f"{x * 100:.{digits}f} %"


def held_words(deviation: float, tolerance: float = BUDGET_TOLERANCE) -> str:
    """'held (spent 12.3 % under)' or 'NOT held (spent 5.1 % over)': the energy constraint,
    held while the long-run average is at most `tolerance` over the budget. Pure."""
    return f"{'held' if deviation <= tolerance else 'NOT held'} ({spent_words(deviation)})"


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def shown_name(policy: str) -> str:
    """A row's name as tables and plots print it: a lossy policy marked as such. Pure."""
    return f"{policy} ({LOSSY[policy]})" if policy in LOSSY else policy


def format_table(rows: Sequence[BenchRow]) -> str:
    """The printed table, one line per run (oracle frontier points left out). A lossy
    policy (``LOSSY``) is marked and gets no ratio to the lossless ones."""
    shown = [r for r in rows if r.group != "oracle-frontier"]
    fixed = [r for r in rows if r.policy.startswith("fixed-")]
    best_fixed = max(fixed, key=lambda r: r.tokens_per_s) if fixed else None
    o_pts = oracle_points(rows)
    w = max([len(shown_name(r.policy)) for r in shown] + [6])
    head = (f"{'policy':<{w}}  {'tok/s':>7}  {'J/tok':>7}  {'mean W':>6}  {'accept':>6}  "
            f"{'drafted':>7}  {'budget':>13}  {'spent':>7}  {'held':>4}  {'/fixed*':>7}  "
            f"{'/oracle@E':>9}")
    lines = [head, "-" * len(head)]
    for r in shown:
        budget = ("-" if r.budget_deviation is None else
                  f"{r.budget_w:.3g} W" if r.budget_w is not None else
                  f"{r.budget_j_per_token:.3g} J/tok")
        spent = _f(r.budget_use, ".1%")
        held = "-" if r.budget_met is None else ("yes" if r.budget_met else "NO")
        lossy = r.policy in LOSSY
        to_fixed = (_ratio(r.tokens_per_s, best_fixed.tokens_per_s)
                    if best_fixed and not lossy else None)
        to_oracle = (_ratio(r.tokens_per_s, tps_at_energy(o_pts, r.j_per_token))
                     if o_pts and not lossy else None)
        lines.append(
            f"{shown_name(r.policy):<{w}}  {r.tokens_per_s:7.2f}  {r.j_per_token:7.4f}  "
            f"{r.mean_w:6.2f}  "
            f"{_f(r.acceptance, '.3f'):>6}  {_f(r.mean_drafted, '.2f'):>7}  {budget:>13}  "
            f"{spent:>7}  {held:>4}  {_f(to_fixed, '.2f'):>7}  {_f(to_oracle, '.2f'):>9}")
    if any(r.policy in LOSSY for r in shown):
        lines.append("(" + "; ".join(f"{p}: {why}: compared with no policy"
                                     for p, why in LOSSY.items()
                                     if any(r.policy == p for r in shown)) + ")")
    return "\n".join(lines)


def format_targets(targets: dict[str, Any]) -> str:
    """The targets, one line each, with met/MISSED."""

    def mark(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    lines = []
    for key in ("fixed-4", "adaedl", "hf-heuristic"):
        t = targets.get(f"gelato_vs_{key}")
        if t:
            lines.append(f"gelato vs {key} at equal J/token: {_f(t['ratio'], '.2f')}x "
                         f"(target >= {t['target']}x) {mark(t['met'])}"
                         + (f" [{t['read_from']}]" if t["read_from"] != "frontier" else ""))
    bf = targets.get("gelato_vs_best_fixed")
    if bf:
        lines.append(f"gelato vs best fixed gamma ({bf['baseline']}) at equal J/token: "
                     f"{_f(bf['ratio'], '.2f')}x")
    o = targets.get("gelato_vs_oracle")
    if o:
        lines.append(f"gelato vs hindsight oracle of drafting lengths only (no streaming, no "
                     f"drafting ahead) at equal J/token: {_f(o['ratio'], '.3f')} "
                     f"(min over gelato runs {_f(o['min_over_gelato_runs'], '.3f')}; target >= "
                     f"{o['target']}) {mark(o['met'])}")
    a = targets.get("gelato_vs_oracle_actions")
    if a:
        lines.append(f"gelato (no budget) vs the fastest hindsight schedule of its own actions "
                     f"(draft lengths, streams, drafting ahead): {_f(a['ratio'], '.3f')} "
                     f"(target >= {a['target']}) {mark(a['met'])}")
    nb = targets.get("never_beaten")
    if nb:
        lines.append("gelato's tok/s over each baseline's at that baseline's J/token: "
                     + ", ".join(f"{k} {_f(v, '.2f')}x"
                                 for k, v in nb["ratio_at_equal_energy"].items())
                     + f" (never beaten: >= {nb['target']:.2f}x, the warm-up's 1 %) "
                     f"{mark(nb['met'])}")
    d = targets.get("phase_drift")
    if d:
        a, b = d["edge_only_tokens_per_s"]
        lines.append(f"machine drift between phases (edge-only rerun): {a:.2f} -> {b:.2f} tok/s"
                     f" ({d['drift']:.1%}); the sweep's monotonicity is judged within it")
    v = targets.get("v_sweep_monotone")
    if v:
        what = "W" if v["energy_metric"] == "mean_w" else "J/token"
        lines.append(f"V sweep (tok/s rises with V and never falls, {what} never falls; steps "
                     f"within {v['tolerance']:.1%} count as flat): {mark(v['met'])}: tok/s "
                     f"{v['tokens_per_s_trend']}, {what} {v['energy_trend']} (tok/s "
                     + " ".join(f"{x:.1f}" for x in v["tokens_per_s"]) + f"; {what} "
                     + " ".join(f"{x:.3g}" for x in v["energy"]) + ")")
    held, use = targets.get("budget_held"), targets.get("budget_use")
    if held and use:
        tol = held["tolerance"]
        verdict = "n/a" if held["met"] is None else "held" if held["met"] else "NOT held"
        runs = "; ".join(f"{k} {spent_words(d)}" + ("" if d <= tol else ", NOT held")
                         for k, d in held["deviation"].items())
        lines.append(f"energy budget at the binding budgets (default V; held = long-run average "
                     f"at most {pct(tol, 0)} over): {verdict} ({runs})")
        runs = ", ".join(f"{k} {pct(u)}" for k, u in use["use"].items())
        lines.append(f"budget use (binding budgets, default V; target >= {pct(use['target'], 0)}"
                     f" of the budget): {mark(use['met'])} ({runs})")
    else:
        lines.append("energy budget and budget use: n/a (no budget binds: unconstrained "
                     "GELATO already spends less)")
    return "\n".join(lines)


def calibration_lines(rows: Sequence[BenchRow]) -> str:
    """GELATO's acceptance-model calibration: Brier score of the AdaEDL prior vs learned."""
    lines = []
    for r in gelato_points(rows):
        prior, learned = (r.settings.get("acceptance_brier_prior"),
                          r.settings.get("acceptance_brier_learned"))
        if isinstance(prior, float) and isinstance(learned, float):
            lines.append(f"{r.policy}: Brier prior {prior:.4f} -> learned {learned:.4f}")
    return "\n".join(lines)


# -- files ----------------------------------------------------------------------------------

def write_json(path: Path, rows: Sequence[BenchRow], targets: dict[str, Any],
               meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "rows": [r.to_dict() for r in rows], "targets": targets}
    path.write_text(jsonout.dumps(data, indent=1, default=_json_default) + "\n")


def _json_default(x: object) -> object:
    if hasattr(x, "item"):  # numpy scalars
        return x.item()  # type: ignore[attr-defined]
    return str(x)


# Plot styles per row group: marker, colour, size, legend text.
_MARKERS: dict[str, tuple[str, str, float, str]] = {
    "gelato": ("*", "tab:red", 14, "gelato (no budget)"),
    "gelato-matched": ("D", "tab:orange", 7, "gelato at a baseline's J/token (matched)"),
    "baseline": ("o", "tab:blue", 7, "baselines"),
    "oracle-matches": ("x", "0.3", 8, "oracle-matches (hindsight)"),
    "oracle-actions": ("P", "0.2", 9, "oracle, all of gelato's actions (hindsight)"),
    "reference": ("s", "tab:green", 7, "entropy-threshold* (hindsight-tuned)"),
    "reference-bayes": ("v", "tab:cyan", 8,
                        "bayes: told each position's calibrated P(accept) in advance"),
    "control": ("o", "0.6", 6, "edge-only rerun (drift control)"),
    "lossy": ("X", "tab:purple", 8, "device-only: the draft's text, not lossless"),
}
# the legend's entry for each hindsight oracle line: say exactly which actions it schedules
ORACLE_FRONTIER_LABEL = ("hindsight oracle frontier, drafting lengths only (no streaming, "
                         "no drafting ahead)")
ORACLE_ACTIONS_LABEL = "fastest hindsight schedule of all gelato's actions (tok/s upper bound)"
_SAME_POINT = 0.012  # points closer than this fraction of both axes' spans share one label
_FONT_PT = 7.0  # label font size; a label is taken as 0.6 em per character by 1.1 em
# Where a label may go relative to its point, in points, tried in order: right below, right
# above, left below, left above, then further down and up, right and left.
_LABEL_SPOTS = [(4, -9, "left"), (4, 4, "left"), (-4, -9, "right"), (-4, 4, "right"),
                *((dx, dy * k, ha) for k in range(2, 6) for dy in (-9, 8)
                  for dx, ha in ((4, "left"), (-4, "right")))]


def _label_clusters(points: list[tuple[float, float, str]], span: tuple[float, float]
                    ) -> list[tuple[float, float, str]]:
    """Merge the labels of points that coincide on the plot: ``(x, y, label)`` -> one
    ``(x, y, "a = b = c")`` per group of points within _SAME_POINT of the group's first point
    (in fractions of the axes' spans `span`); V sweep labels merge as "V=0.5, 8". Order kept.
    Pure."""
    groups: list[tuple[float, float, list[str]]] = []
    for x, y, label in points:
        for gx, gy, labels in groups:
            if (abs(x - gx) <= _SAME_POINT * span[0] and abs(y - gy) <= _SAME_POINT * span[1]
                    and label not in labels):
                labels.append(label)
                break
        else:
            groups.append((x, y, [label]))
    out = []
    for x, y, labels in groups:
        if len(labels) > 1 and all(t.startswith("V=") for t in labels):
            out.append((x, y, "V=" + ", ".join(t[2:] for t in labels)))
        else:
            out.append((x, y, " = ".join(labels)))
    return out


def build_figure(rows: Sequence[BenchRow], *, title: str) -> Any:
    """The throughput-energy trade-off as a matplotlib Figure (not attached to pyplot).

    The GELATO V sweep as a line, every other run as a point labelled with its policy (points
    that coincide share one label, "a = b"; a label goes to the first spot around its point
    where it overlaps no other label or point and stays inside the axes), the
    drafting-only hindsight oracle frontier drawn over everything else, the fastest hindsight
    schedule of all of GELATO's actions as a horizontal line (no run can be faster), and each
    budget that was set: a J/token budget as a vertical line, a power budget P as the curve
    tokens/s = P / (J/token) on which every point spends exactly P. A lossy policy
    (``LOSSY``) has a marker of its own and its mark in its label. The legend sits right of
    the axes, off the data.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5.5), dpi=110)
    ax = fig.add_subplot()
    sweep = sorted((r for r in rows if r.group == "gelato-sweep"), key=lambda r: r.v or 0)
    oracle = sorted(oracle_points(rows), key=lambda r: r.j_per_token)
    marked = [r for r in rows if r.group in _MARKERS or r.policy in LOSSY]
    pts = [(r.j_per_token, r.tokens_per_s) for r in [*sweep, *oracle, *marked]
           if math.isfinite(r.j_per_token) and math.isfinite(r.tokens_per_s)]
    xs, ys = [p[0] for p in pts] or [0.0, 1.0], [p[1] for p in pts] or [0.0, 1.0]
    span = (max(max(xs) - min(xs), 1e-12), max(max(ys) - min(ys), 1e-12))
    xlim = (min(xs) - 0.05 * span[0], max(xs) + 0.12 * span[0])
    ylim = (min(ys) - 0.08 * span[1], max(ys) + 0.08 * span[1])
    labels: list[tuple[float, float, str]] = []
    if sweep:
        ax.plot([r.j_per_token for r in sweep], [r.tokens_per_s for r in sweep], "o-",
                color="tab:red", zorder=3, label="gelato, V sweep at the budget")
        ends = [(r.j_per_token, r.tokens_per_s, f"V={r.v:g}") for r in (sweep[0], sweep[-1])]
        _draw_budget(ax, sweep[0], xlim, ylim, "tab:red", "the V sweep's")
    matched = [r for r in rows if r.group == "gelato-matched" and r.budget_j_per_token]
    for i, r in enumerate(matched):
        _draw_budget(ax, r, xlim, ylim, "tab:orange", "matched runs'" if i == 0 else None)
    used: set[str] = set()
    for r in marked:
        group = "lossy" if r.policy in LOSSY else r.group
        m, c, s, legend = _MARKERS[group]
        z = 5 if group == "gelato" else 4 if group == "gelato-matched" else 3
        ax.plot(r.j_per_token, r.tokens_per_s, m, color=c, ms=s, zorder=z,
                label=None if group in used else legend)
        used.add(group)
        labels.append((r.j_per_token, r.tokens_per_s,
                       f"{r.policy} (not lossless)" if r.policy in LOSSY else r.policy))
        if group == "oracle-actions" and math.isfinite(r.tokens_per_s):
            ax.axhline(r.tokens_per_s, color="0.2", ls="-.", lw=1.0, zorder=2,
                       label=ORACLE_ACTIONS_LABEL)
    if oracle:  # on top of every marker, so that points on it do not hide it
        ax.plot([r.j_per_token for r in oracle], [r.tokens_per_s for r in oracle], "--",
                color="black", lw=1.6, marker="d", ms=4, zorder=10,
                label=ORACLE_FRONTIER_LABEL)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("device energy per token (J)")
    ax.set_ylabel("tokens per second")
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    ax.grid(alpha=0.3)
    # beside the axes, where it covers no point (tight_layout makes room for it)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()  # first: it moves the axes, and labels are placed in points
    boxes: list[tuple[float, float, float, float]] = []
    if sweep:  # the sweep's ends first, preferably above-left: the line runs to the right
        _place_labels(ax, _label_clusters(ends, span), pts, fig.dpi, boxes,
                      spots=[_LABEL_SPOTS[3], _LABEL_SPOTS[2], *_LABEL_SPOTS], color="tab:red")
    _place_labels(ax, _label_clusters(labels, span), pts, fig.dpi, boxes)
    return fig


def _place_labels(ax: Any, labels: list[tuple[float, float, str]],
                  points: list[tuple[float, float]], dpi: float,
                  boxes: list[tuple[float, float, float, float]], *,
                  spots: Sequence[tuple[int, int, str]] = _LABEL_SPOTS,
                  color: str = "black") -> None:
    """Annotate each ``(x, y, text)`` at the first of `spots` where its (estimated) box stays
    inside the axes and overlaps neither a box in `boxes` (labels placed before; each new one
    is appended) nor a plotted point of `points` other than its own."""
    to_pt = 72.0 / dpi

    def at(x: float, y: float) -> tuple[float, float]:
        px, py = ax.transData.transform((x, y))
        return px * to_pt, py * to_pt

    marks = [at(x, y) for x, y in points]
    frame = ax.get_window_extent()
    inside = (frame.x0 * to_pt, frame.y0 * to_pt, frame.x1 * to_pt, frame.y1 * to_pt)
    for x, y, text in labels:
        ax_, ay = at(x, y)
        w, h = 0.6 * _FONT_PT * len(text), 1.1 * _FONT_PT
        spot, box = spots[0], (0.0, 0.0, 0.0, 0.0)
        for dx, dy, ha in spots:
            x0 = ax_ + dx if ha == "left" else ax_ + dx - w
            box = (x0, ay + dy - 2, x0 + w, ay + dy - 2 + h)
            outside = (box[0] < inside[0] or box[2] > inside[2] or box[1] < inside[1]
                       or box[3] > inside[3])
            clash = outside or any(
                b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3]
                for b in boxes) or any(
                box[0] - 3 < mx < box[2] + 3 and box[1] - 3 < my < box[3] + 3
                and (abs(mx - ax_) > 1 or abs(my - ay) > 1) for mx, my in marks)
            if not clash:
                spot = (dx, dy, ha)
                break
        else:
            x0 = ax_ + spot[0] if spot[2] == "left" else ax_ + spot[0] - w
            box = (x0, ay + spot[1] - 2, x0 + w, ay + spot[1] - 2 + h)
        boxes.append(box)
        ax.annotate(text, (x, y), fontsize=_FONT_PT, xytext=spot[:2], color=color,
                    textcoords="offset points", ha=spot[2], zorder=11)


def _draw_budget(ax: Any, r: BenchRow, xlim: tuple[float, float], ylim: tuple[float, float],
                 color: str, whose: str | None) -> None:
    """`r`'s budget as a line: vertical at a J/token budget, the curve y = P / x for a power
    budget P (tokens/s x J/token = W). `whose` None: no legend entry."""
    if r.budget_j_per_token is not None:
        b = r.budget_j_per_token
        label = None if whose is None else f"{whose} energy budget (J/token)"
        ax.axvline(b, color=color, ls=":", lw=1.2, zorder=2, label=label)
        if r.group == "gelato-matched":
            ax.annotate(f"{r.policy.removeprefix('gelato ')} budget", (b, ylim[0]), fontsize=6,
                        color=color, rotation=90, va="bottom", ha="right",
                        xytext=(-1, 2), textcoords="offset points")
    elif r.budget_w is not None:
        p = r.budget_w
        lo = max(xlim[0], p / ylim[1], 1e-12)
        n = 200
        x = [lo + (xlim[1] - lo) * i / (n - 1) for i in range(n)]
        ax.plot(x, [p / v for v in x], ":", color=color, lw=1.2, zorder=2, scalex=False,
                scaley=False, label=None if whose is None else
                f"{whose} power budget {p:.3g} W (tok/s x J/tok = {p:.3g} W)")


def write_png(path: Path, rows: Sequence[BenchRow], *, title: str) -> None:
    """`build_figure(rows, title=title)` saved as a PNG at `path` (directories made)."""
    fig = build_figure(rows, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


__all__ = ["BenchRow", "build_figure", "calibration_lines", "evaluate_targets", "format_table",
           "format_targets", "held_words", "spent_words", "tps_at_energy", "write_json",
           "write_png"]
