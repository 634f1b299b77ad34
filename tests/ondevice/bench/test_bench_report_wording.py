"""How GELATO's and ENACHI's reports word a budget, and what their plots show.

A budget is two questions (ondevice/bench/report.py): the energy budget *held* (long-run
average at most 3 % over it) and the budget *used* (at least 97 % of a binding one spent). The
table and the summary must answer them the same way and say which one each line answers, in
particular for a run that held its budget by spending well under it.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from ondevice.bench._enachi_report import Row, evaluate
from ondevice.bench._enachi_report import format_table as enachi_table
from ondevice.bench.report import (
    ORACLE_ACTIONS_LABEL,
    ORACLE_FRONTIER_LABEL,
    BenchRow,
    evaluate_targets,
    format_table,
    format_targets,
    trend,
)

pytest.importorskip("matplotlib")


def _row(label: str, tps: float, jpt: float, group: str = "baseline", **kw: Any) -> BenchRow:
    return BenchRow(policy=label, group=group, tokens=1000, time_s=1000 / tps,
                    energy_j=1000 * jpt, **kw)


def _real_like_rows() -> list[BenchRow]:
    """Real mode's shape: a power-budget V sweep and runs matched to baselines' J/token, one of
    them 12.3 % under its budget (held, not used), one 9 % over (not held)."""
    return [
        _row("gelato", 13.6, 0.55, "gelato", v=2.0),
        _row("fixed-1", 9.3, 0.45), _row("fixed-4", 7.0, 0.63), _row("adaedl", 9.3, 0.4502),
        _row("hf-heuristic", 6.1, 0.75), _row("edge-only", 14.0, 0.235),
        _row("gelato V=0.5 @3.34 W", 15.5, 0.2186, "gelato-sweep", v=0.5, budget_w=3.34),
        _row("gelato V=2 @3.34 W", 15.9, 0.2147, "gelato-sweep", v=2.0, budget_w=3.34),
        _row("gelato @adaedl", 12.0, 0.48 * 0.877, "gelato-matched", v=2.0,
             budget_j_per_token=0.48),
        _row("gelato @fixed-4", 11.0, 0.5 * 1.09, "gelato-matched", v=2.0,
             budget_j_per_token=0.5),
        _row("oracle", 16.0, 0.2, "oracle"), _row("oracle l=1", 15.0, 0.18, "oracle-frontier"),
    ]  # fmt: skip


def _table_cells(table: str, policy: str) -> dict[str, str]:
    """The columns of a budgeted run's line in GELATO's table, by header name."""
    head, _, *lines = table.splitlines()
    line = next(x for x in lines if x.startswith(policy + "  "))
    cells = line[len(policy):].split()  # the budget cell is two words ("3.34 W")
    cells = [*cells[:5], " ".join(cells[5:7]), *cells[7:]]
    names = ["tok/s", "J/tok", "mean W", "accept", "drafted", "budget", "spent", "held",
             "/fixed*", "/oracle@E"]
    assert head.split()[1:] == [w for n in names for w in n.split()]
    return dict(zip(names, cells, strict=True))


def test_gelato_table_and_summary_agree_on_a_held_but_unused_budget() -> None:
    rows = _real_like_rows()
    table, summary = format_table(rows), format_targets(evaluate_targets(rows))
    head = table.splitlines()[0].split()
    assert "held" in head and "spent" in head and "met" not in head
    adaedl = _table_cells(table, "gelato @adaedl")
    assert adaedl["held"] == "yes" and adaedl["spent"] == "87.7%"
    fixed4 = _table_cells(table, "gelato @fixed-4")
    assert fixed4["held"] == "NO" and fixed4["spent"] == "109.0%"
    held = next(x for x in summary.splitlines() if x.startswith("energy budget"))
    use = next(x for x in summary.splitlines() if x.startswith("budget use"))
    # each line names its question; the run under budget is held, and not used enough
    assert "held = long-run average at most 3 % over" in held
    assert "gelato @adaedl spent 12.3 % under;" in held
    assert "gelato @fixed-4 spent 9.0 % over, NOT held" in held
    assert held.split(": ", 1)[1].startswith("NOT held")  # one of the judged runs is over
    assert "target >= 97 % of the budget" in use and ": MISSED" in use
    assert "gelato @adaedl 87.7 %" in use
    assert "MISSED within" not in summary and "within 3%" not in summary


def test_gelato_budget_held_and_used_by_every_judged_run() -> None:
    rows = [r for r in _real_like_rows() if r.policy != "gelato @fixed-4"]
    rows = [_row("gelato @adaedl", 12.0, 0.48 * 0.99, "gelato-matched", v=2.0,
                 budget_j_per_token=0.48) if r.policy == "gelato @adaedl" else r for r in rows]
    t = evaluate_targets(rows)
    assert t["budget_held"]["met"] and t["budget_use"]["met"]
    summary = format_targets(t)
    assert "held = long-run average at most 3 % over): held (" in summary
    assert ": met (gelato V=2 @3.34 W" in summary
    assert format_table(rows).count(" yes ") == 3  # two sweep runs and the matched one


def _enachi_rows(mean_w: float) -> list[Row]:
    def r(policy: str, part: str, deadline: float, acc: float, mj: float, **kw: Any) -> Row:
        return Row(model="digits-cnn", part=part, policy=policy, deadline_ms=deadline, tasks=16,
                   accuracy=acc, miss_rate=0.0, j_per_task=mj / 1e3, mean_w=0.03,
                   compute_j=0.01, radio_j=0.0, mean_fraction=1.0, splits={"raw": 10, "s2": 6},
                   energy_source="modelled", **kw)

    rows = [r(p, "deadline", d, acc, mj) for d in (20.0, 60.0) for p, acc, mj in (
        ("enachi", 0.9, 1.2), ("no-progressive", 0.8, 1.4), ("edge-only", 0.5, 1.1),
        ("device-only", 1.0, 1.5), ("fixed-split s1", 0.0, 2.0), ("fixed-split s3", 0.7, 4.0))]
    budget = r("enachi", "budget", 60.0, 0.94, 1.0, budget_w=0.1)
    budget.mean_w = mean_w
    rows.append(budget)
    rows += [r("enachi", "users", 60.0, 1.0, mj, users=n, user=i, budget_w=0.05)
             for n, mjs in ((1, (1.9,)), (2, (1.8, 2.1))) for i, mj in enumerate(mjs)]
    return rows


def test_enachi_budget_lines_say_held_and_use_apart() -> None:
    rows = _enachi_rows(mean_w=0.0823)  # 17.7 % under the 0.1 W budget
    targets = evaluate(rows)
    b = targets["digits-cnn"]["budget"]
    assert b["held"] is True and b["use_met"] is False
    assert b["use"] == pytest.approx(0.823)
    text = enachi_table(rows, targets)
    assert "energy budget: held (spent 17.7 % under)" in text
    assert "budget use: 82.3 % (target >= 97 %) [MISSED]" in text
    assert "MISSED within 3%" not in text
    over = enachi_table(rows := _enachi_rows(mean_w=0.105), evaluate(rows))
    assert "energy budget: NOT held (spent 5.0 % over)" in over
    assert "budget use: 105.0 % (target >= 97 %) [met]" in over


# -- the plots ------------------------------------------------------------------------------


def test_gelato_plot_draws_budgets_frontier_on_top_and_merges_coinciding_labels() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ondevice.bench.report import build_figure

    fig = build_figure(_real_like_rows(), title="t")
    (ax,) = fig.axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    power = next(ln for name, ln in lines.items() if "power budget 3.34 W" in name)
    for x, y in zip(power.get_xdata(), power.get_ydata(), strict=True):
        assert x * y == pytest.approx(3.34)  # every point on it draws 3.34 W
    matched = [ln for ln in ax.get_lines() if list(ln.get_xdata()) in ([0.48, 0.48],
                                                                        [0.5, 0.5])]
    assert len(matched) == 2  # a vertical line at each matched run's J/token budget
    assert "matched runs' energy budget (J/token)" in lines
    frontier = lines[ORACLE_FRONTIER_LABEL]
    others = [ln for ln in ax.get_lines() if ln is not frontier]
    assert frontier.get_zorder() > max(ln.get_zorder() for ln in others)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert ORACLE_FRONTIER_LABEL in legend
    # fixed-1 and adaedl coincide: one label names both; no two point labels overlap
    texts = [t for t in ax.texts if t.get_text() and not t.get_text().endswith("budget")]
    both = [t.get_text() for t in texts if "fixed-1" in t.get_text()]
    assert both == ["fixed-1 = adaedl"]
    assert sum("adaedl" in t.get_text() and "@" not in t.get_text() for t in texts) == 1
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    boxes = [t.get_window_extent(renderer) for t in texts]
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[:i]):
            assert not a.overlaps(b), (texts[i].get_text(), texts[j].get_text())


def test_gelato_plot_draws_a_j_per_token_budget_as_a_vertical_line() -> None:
    from ondevice.bench.report import build_figure

    rows = [_row("fixed-4", 7.0, 0.63), _row("gelato", 13.6, 0.55, "gelato", v=2.0),
            _row("gelato V=1 @0.3 J/tok", 15.0, 0.29, "gelato-sweep", v=1.0,
                 budget_j_per_token=0.3),
            _row("gelato V=4 @0.3 J/tok", 15.2, 0.31, "gelato-sweep", v=4.0,
                 budget_j_per_token=0.3)]  # fmt: skip
    (ax,) = build_figure(rows, title="t").axes
    budget = [ln for ln in ax.get_lines() if "energy budget (J/token)" in ln.get_label()]
    assert len(budget) == 1 and list(budget[0].get_xdata()) == [0.3, 0.3]


def test_gelato_plot_without_budgets_draws_none() -> None:
    from ondevice.bench.report import build_figure

    (ax,) = build_figure([_row("fixed-4", 7.0, 0.63), _row("gelato", 13.6, 0.55, "gelato")],
                         title="t").axes
    assert not [ln for ln in ax.get_lines() if re.search("(power|energy) budget", ln.get_label())]
    assert all(math.isfinite(v) for v in ax.get_xlim())


def test_enachi_plot_names_its_series_as_the_table_does() -> None:
    from ondevice.bench._enachi_report import build_figure

    rows = _enachi_rows(mean_w=0.09)
    table = enachi_table(rows, evaluate(rows)).splitlines()
    start = table.index(next(x for x in table if x.startswith("policy")))
    names = [re.split(r"\s{2,}", x)[0] for x in table[start + 1:start + 7]]
    assert names[-2:] == ["fixed-split s1", "fixed-split s3"]
    acc, energy, users = build_figure(rows).axes
    assert [t.get_text() for t in acc.get_legend().get_texts()] == names
    assert [ln.get_label() for ln in energy.get_lines()] == names
    assert "best fixed-split" not in str([t.get_text() for t in acc.get_legend().get_texts()])
    # the third panel says what it plots, and every series in it is in its legend
    assert "under a budget" not in users.get_title()
    assert "energy per device vs devices" in users.get_title()
    assert users.get_xlabel() == "devices sharing one edge"
    legend = users.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["mean over the devices", "one device"]
    assert "budget 0.05 W" in legend.get_title().get_text()
    series = [*users.get_lines(), *users.collections]
    assert all(not s.get_label().startswith("_") for s in series)


# -- what a reader is told: the V sweep's check, the oracles, lossy rows, legends ------------

def _sweep(tps: list[float], watts: list[float]) -> list[BenchRow]:
    return [_row(f"gelato V={v:g} @3 W", t, w / t, "gelato-sweep", v=v, budget_w=3.0)
            for v, t, w in zip((0.5, 2.0, 8.0), tps, watts, strict=True)]


def test_v_sweep_trend_tells_rising_flat_and_reversed_apart() -> None:
    assert trend([10.0, 10.02, 10.01], 0.005) == "flat"
    assert trend([10.0, 10.5, 11.0], 0.005) == "rising"
    assert trend([10.0, 11.0, 10.5], 0.005) == "reversed"
    assert trend([10.0, 9.98, 10.1], 0.005) == "rising"  # a step within the tolerance


def test_a_flat_v_sweep_is_not_met_and_says_flat() -> None:
    flat = evaluate_targets(_sweep([15.0, 15.01, 15.02], [3.0, 3.0, 3.0]))["v_sweep_monotone"]
    assert flat["met"] is False and flat["tokens_per_s_trend"] == "flat"
    line = next(x for x in format_targets({"v_sweep_monotone": flat}).splitlines()
                if x.startswith("V sweep"))
    assert "MISSED" in line and "tok/s flat" in line and "rises with V" in line
    rising = evaluate_targets(_sweep([14.0, 15.0, 15.5], [3.0, 3.0, 3.01]))["v_sweep_monotone"]
    assert rising["met"] is True and rising["energy_trend"] == "flat"
    cheaper = evaluate_targets(_sweep([14.0, 15.0, 15.5], [3.0, 2.8, 2.6]))["v_sweep_monotone"]
    assert cheaper["met"] is False and cheaper["energy_trend"] == "reversed"


def test_device_only_is_marked_lossy_and_compared_with_nothing() -> None:
    rows = [*_real_like_rows(), _row("device-only", 30.0, 0.9)]
    table = format_table(rows)
    line = next(x for x in table.splitlines() if x.startswith("device-only"))
    assert line.startswith("device-only (draft's text, not lossless)")
    assert line.split()[-2:] == ["-", "-"]  # no /fixed* nor /oracle@E ratio
    assert "device-only: draft's text, not lossless: compared with no policy" in table
    (ax,) = _figure(rows).axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "device-only: the draft's text, not lossless" in legend
    assert "device-only (not lossless)" in [t.get_text() for t in ax.texts]


def _figure(rows: list[BenchRow]) -> Any:
    from ondevice.bench.report import build_figure

    return build_figure(rows, title="t")


def test_gelato_plot_names_each_oracle_for_what_it_schedules() -> None:
    rows = [*_real_like_rows(), _row("oracle (all actions)", 17.0, 0.3, "oracle-actions")]
    (ax,) = _figure(rows).axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert "drafting lengths only (no streaming" in ORACLE_FRONTIER_LABEL
    assert "upper bound" not in ORACLE_FRONTIER_LABEL
    bound = lines[ORACLE_ACTIONS_LABEL]  # the fastest schedule of every action: a ceiling
    assert list(bound.get_ydata()) == [17.0, 17.0]


def test_plot_legends_sit_off_the_data() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ondevice.bench._enachi_report import build_figure as enachi_figure

    for fig in (_figure(_real_like_rows()), enachi_figure(_enachi_rows(mean_w=0.09))):
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), (
                    [t.get_text() for t in legend.get_texts()], ax.get_title())
