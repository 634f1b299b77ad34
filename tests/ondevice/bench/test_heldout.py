"""The held-out evaluation (``ondevice/bench/heldout.py``): the rule on hand-made rows, thinning
a trace to a stated acceptance, the large-target profiles, and the rule on every shipped trace
and profile pair (the check CI runs: every pair on the tuning trace and on one held-out trace,
the held-out traces taken in turn, so that each is judged on a quarter of the pairs; the whole
matrix is ``ondevice bench gelato --mode sim``, about 8 minutes on two cores, and
docs/results-gelato-heldout.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ondevice.bench._hardware import EdgeProfile, load_profile, profile_names
from ondevice.bench.gelato_sim import acceptance_outcomes
from ondevice.bench.heldout import (
    BASELINES,
    PAPER_ENERGY_CHANGE,
    PAPER_THROUGHPUT_GAIN,
    TARGET_ORACLE_ELSE,
    CellSpec,
    comparison,
    format_pair_table,
    format_summary,
    judge,
    run_matrix,
)
from ondevice.bench.report import BenchRow
from ondevice.bench.trace import TUNING_SET, Trace, shipped_trace, shipped_traces


def _row(label: str, tps: float, jpt: float, group: str = "baseline", *,
         budget_j: float | None = None, budget_w: float | None = None) -> BenchRow:
    return BenchRow(policy=label, group=group, tokens=1000, time_s=1000 / tps,
                    energy_j=1000 * jpt, budget_j_per_token=budget_j, budget_w=budget_w)


def _cell(gelato: tuple[float, float], **over: tuple[float, float]) -> list[BenchRow]:
    base = {"fixed-1": (20, 0.5), "fixed-2": (22, 0.5), "fixed-4": (25, 0.6),
            "fixed-8": (21, 0.8), "adaedl": (24, 0.55), "hf-heuristic": (20, 0.7),
            "edge-only": (18, 0.3)}
    base.update(over)
    rows = [_row(k, *v) for k, v in base.items()]
    rows.append(_row("gelato", *gelato, group="gelato"))
    rows.append(_row("oracle (all actions)", 40, 0.3, group="oracle-actions"))
    return rows


def test_judge_reads_the_rule_from_the_rows() -> None:
    rows = _cell((35, 0.5))
    rows.append(_row("gelato @edge-only", 19, 0.3, "gelato-matched", budget_j=0.3))
    v = judge(rows)
    assert v["regime"] == "paper" and v["oracle_over_edge_only"] == pytest.approx(40 / 18)
    assert v["vs_oracle"] == pytest.approx(35 / 40)
    # fixed-4 spends 0.6 J/token, gelato 0.5: read at fixed-4's energy, 35 / 25
    assert v["vs_fixed4_at_equal_energy"] == pytest.approx(35 / 25)
    # edge-only against gelato's runs at its J/token (+2 %): the matched run, mixed a little
    # with the unconstrained one, so a bit above 19 tok/s
    assert 0.9 < v["baseline_over_gelato_at_its_energy"]["edge-only"] < 18 / 19
    assert v["passed"]


def test_a_cheaper_and_faster_baseline_beats_gelato() -> None:
    # edge-only at 0.3 J/token and 36 tok/s: gelato's only run spends more and is slower
    v = judge(_cell((35, 0.5), **{"edge-only": (36, 0.3)}))
    assert not v["checks"]["never_beaten"] and v["hardest_baseline"] == "edge-only"
    # 2 % faster is within the tolerance
    assert judge(_cell((35, 0.5), **{"edge-only": (35.5, 0.3)}))["checks"]["never_beaten"]
    # cheaper but slower: not beaten
    assert judge(_cell((35, 0.5), **{"edge-only": (30, 0.3)}))["checks"]["never_beaten"]


def test_streaming_regime_needs_the_oracle_and_budgets_must_hold() -> None:
    rows = _cell((39.5, 0.3), **{"edge-only": (39, 0.3)})
    v = judge(rows)
    assert v["regime"] == "streaming" and "vs_fixed4" not in v["checks"]
    assert v["checks"]["vs_oracle"] == (TARGET_ORACLE_ELSE <= 39.5 / 40)
    over = [*rows, _row("gelato V=8 @2 W", 30, 0.2, "gelato-sweep", budget_w=2.0)]
    over[-1].energy_j *= 1.5  # spends 3 W against 2 W: not held
    assert not judge(over)["checks"]["budgets_held"]


def test_comparison_has_its_sign_and_the_papers_headline() -> None:
    comp = comparison(_cell((35, 0.5)))
    assert comp["fixed-4"]["throughput_change"] == pytest.approx(35 / 25 - 1)
    assert comp["fixed-4"]["energy_change"] == pytest.approx(0.5 / 0.6 - 1)
    best = comp["best distributed SD"]
    assert best["baseline"] == "fixed-4"  # the fastest of fixed-gamma, AdaEDL, HF
    assert best["paper_throughput_change"] == PAPER_THROUGHPUT_GAIN == 0.6498
    assert best["paper_energy_change"] == PAPER_ENERGY_CHANGE == -0.4747


def test_thinning_lowers_acceptance_to_the_stated_value() -> None:
    trace = Trace.load(shipped_trace("facts"))
    own = trace.greedy_acceptance()
    thin = acceptance_outcomes(trace, sampling=False, acceptance=0.7)
    assert thin.mean() == pytest.approx(0.7, abs=0.03)
    assert not np.any(thin & ~trace.match)  # only accepted positions are dropped
    sampled = acceptance_outcomes(trace, sampling=True, acceptance=0.6, seed=1)
    assert sampled.mean() == pytest.approx(0.6, abs=0.03)
    with pytest.raises(ValueError, match="thinning only lowers"):
        acceptance_outcomes(trace, sampling=False, acceptance=own + 0.05)


def test_large_target_profiles_price_a_pass_from_a_published_table() -> None:
    assert {"edge-gpu-70b", "agx-orin-8b", "agx-orin-70b"} <= set(profile_names("edge"))
    assert {"jetson-orin-nano-1b", "rpi5-1b"} <= set(profile_names("device"))
    a100 = load_profile("edge-gpu-70b", "edge")
    assert isinstance(a100, EdgeProfile) and a100.verify_ms(1) == pytest.approx(38.94)
    # 5 positions 1.28x one (llama.cpp PR 5625), 9 positions the kernel switch, 3.88x
    assert a100.verify_ms(5) / a100.verify_ms(1) == pytest.approx(1.28)
    assert a100.verify_ms(9) / a100.verify_ms(1) == pytest.approx(3.88)
    assert a100.verify_ms(11) == pytest.approx(38.94 * (3.88 + 2 * 0.107))
    for name in profile_names("edge"):
        e = load_profile(name, "edge")
        assert all(e.verify_ms(b + 1) >= e.verify_ms(b) for b in range(1, 17)), name  # type: ignore[union-attr]
        assert "source" in next(iter(e.sources.values())), name
    with pytest.raises(ValueError, match="verify_rel"):
        EdgeProfile(name="bad", verify_1_ms=10.0, verify_rel=(1.0, 0.9))


# The rule on every shipped trace x every built-in pair, as CI runs it. The targets
# for the paper's regime (GELATO >= 1.2x fixed-4 at equal J/token and >= 0.85x the all-actions
# oracle) are not reached in every cell, nor is the budget held at V = 16 in every one (up to
# 5.6 % over in a run of ~10 000 tokens); docs/gelato.md gives the table and why. This test
# holds what is reached, so that a change cannot lose it: never beaten in any cell (2 %),
# >= 0.97 of the oracle wherever streaming is about the best there is, every binding budget
# held at every V of the sweep up to 8 (and within 8 % at 16), and in the paper's regime at
# least these floors.
PAPER_FLOOR_VS_ORACLE = 0.72
PAPER_FLOOR_VS_FIXED4 = 1.0
V16_BUDGET_SLACK = 0.08
# ... and against the Bayes reference (the best plan knowing each position's calibrated
# acceptance probability in advance; 0.809-0.987 measured in the paper's regime), which
# itself stays below the hindsight oracle.
PAPER_FLOOR_VS_BAYES = 0.80


def _rotation() -> list[CellSpec]:
    """Every pair on the tuning trace and on one held-out trace, the held-out ones in turn."""
    traces = shipped_traces()
    held_out = sorted(t for t in traces if t != TUNING_SET)
    pairs = [(d, e) for d in profile_names("device") for e in profile_names("edge")]
    return [CellSpec(device=d, edge=e, trace=t, trace_path=str(traces[t]))
            for i, (d, e) in enumerate(pairs) for t in (TUNING_SET, held_out[i % len(held_out)])]


def test_the_rotation_judges_every_pair_and_every_trace() -> None:
    specs = _rotation()
    pairs = {(s.device, s.edge) for s in specs}
    assert len(pairs) == len(profile_names("device")) * len(profile_names("edge"))
    assert {s.trace for s in specs} == set(shipped_traces())
    for pair in pairs:
        assert {s.trace for s in specs if (s.device, s.edge) == pair} >= {TUNING_SET}


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 40 cells: about 3 minutes on two quiet cores
def test_every_shipped_trace_on_every_pair() -> None:
    cells = run_matrix(_rotation(), jobs=2)
    print("\n" + format_summary(cells))
    for pair in dict.fromkeys(c.pair for c in cells):
        print(f"\n{pair}\n" + format_pair_table([c for c in cells if c.pair == pair]))
    problems = []
    for c in cells:
        v, where = c.verdict, f"{c.pair} on {c.spec.trace}"
        worst = max(v["baseline_over_gelato_at_its_energy"].values())
        if not v["checks"]["never_beaten"]:
            problems.append(f"{where}: beaten by {v['hardest_baseline']} ({worst:.3f}x)")
        for run, dev in v["budget_deviation_at_binding_v"].items():
            if dev > (V16_BUDGET_SLACK if run.startswith("gelato V=16 ") else 0.03):
                problems.append(f"{where}: {run} spent {dev:+.1%} of its budget")
        if v["regime"] == "streaming" and not v["checks"]["vs_oracle"]:
            problems.append(f"{where}: {v['vs_oracle']:.3f} of the oracle")
        if v["regime"] == "paper":  # fixed-4's J/token may be below every gelato run: None
            f4 = v["vs_fixed4_at_equal_energy"]
            if v["vs_oracle"] < PAPER_FLOOR_VS_ORACLE or (
                    f4 is not None and f4 < PAPER_FLOOR_VS_FIXED4):
                problems.append(f"{where}: {v['vs_oracle']:.3f} of the oracle, "
                                f"{f4 if f4 is None else round(f4, 3)}x fixed-4")
            if v["vs_bayes"] < PAPER_FLOOR_VS_BAYES:
                problems.append(f"{where}: {v['vs_bayes']:.3f} of the Bayes reference")
        if v["bayes_vs_oracle"] > 1.0 + 1e-9:
            problems.append(f"{where}: the Bayes reference beat the hindsight oracle")
    assert not problems, "\n".join(problems)
    assert {c.verdict["regime"] for c in cells} == {"paper", "streaming"}
    assert any(c.spec.trace == TUNING_SET for c in cells) and len(
        {c.spec.trace for c in cells}) == 5
    assert all(math.isfinite(c.verdict["vs_oracle"]) for c in cells)
    assert set(BASELINES) <= {r.policy for r in cells[0].rows}
