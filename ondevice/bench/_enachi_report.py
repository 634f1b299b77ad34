"""``bench enachi``'s rows, the issue's targets, the table, JSON and PNG. Pure apart from files.

Targets (issue 7), per model:

- under the tightest benchmarked deadline where device-only misses (most of its tasks late),
  enachi's accuracy against the best fixed-split and no-progressive runs (ratio > 1 wanted),
  and its energy per task against edge-only's (ratio < 1 wanted); the paper reports +43 %
  accuracy and -62 % energy against its baselines;
- with the budget binding, two questions reported apart: the energy budget held (long-run
  mean power at most 3 % over it; spending less holds it) and the budget used (at least 97 %
  of it spent: a binding budget left unspent is accuracy given away);
- energy per device per task within 10 % from 1 to N users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ondevice.bench.report import BUDGET_USE_TARGET, held_words, pct
from ondevice.common import jsonout
from ondevice.common.budget import BUDGET_TOLERANCE
from ondevice.dnn.run import format_splits

USERS_TOLERANCE = 0.10
PAPER = {"accuracy_gain": 0.4312, "energy_reduction": 0.6213}


@dataclass(slots=True, kw_only=True)
class Row:
    """One run (one device). ms, J, W."""

    model: str
    part: str  # "deadline" | "budget" | "users"
    policy: str
    deadline_ms: float | None
    tasks: int
    accuracy: float
    miss_rate: float
    j_per_task: float
    mean_w: float
    compute_j: float
    radio_j: float
    mean_fraction: float
    splits: dict[str, int]
    energy_source: str
    budget_w: float | None = None
    budget_tail_w: float | None = None  # mean power over the run's second half
    users: int | None = None
    user: int | None = None
    mean_share: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        d = "-" if self.deadline_ms is None else f"{self.deadline_ms:g} ms"
        return (f"{self.model} {self.part} {self.policy} @ {d}: acc {self.accuracy:.3f}, "
                f"miss {self.miss_rate:.0%}, {self.j_per_task * 1e3:.2f} mJ/task, "
                f"{self.mean_w:.3f} W, splits {format_splits(self.splits)}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def evaluate(rows: Sequence[Row]) -> dict[str, Any]:
    """The targets per model (module doc)."""
    out: dict[str, Any] = {}
    for model in sorted({r.model for r in rows}):
        mine = [r for r in rows if r.model == model]
        t: dict[str, Any] = {}
        dl = [r for r in mine if r.part == "deadline"]
        missed = sorted(r.deadline_ms for r in dl if r.policy == "device-only"
                        and r.miss_rate > 0.5 and r.deadline_ms is not None)
        per_deadline = []
        for d in sorted({r.deadline_ms for r in dl if r.deadline_ms is not None}):
            at = {r.policy: r for r in dl if r.deadline_ms == d}
            fixed = [r for p, r in at.items() if p.startswith("fixed-split")]
            best_fixed = max(fixed, key=lambda r: (r.accuracy, -r.j_per_task), default=None)
            e, npg, eo = at.get("enachi"), at.get("no-progressive"), at.get("edge-only")
            per_deadline.append({
                "deadline_ms": d,
                "device_only_misses": d in missed,
                "best_fixed_split": best_fixed.policy if best_fixed else None,
                "acc_enachi": e.accuracy if e else None,
                "acc_best_fixed": best_fixed.accuracy if best_fixed else None,
                "acc_no_progressive": npg.accuracy if npg else None,
                "acc_ratio_vs_best_fixed": _ratio(e.accuracy if e else None,
                                                  best_fixed.accuracy if best_fixed else None),
                "acc_ratio_vs_no_progressive": _ratio(e.accuracy if e else None,
                                                      npg.accuracy if npg else None),
                "energy_ratio_vs_edge_only": _ratio(e.j_per_task if e else None,
                                                    eo.j_per_task if eo else None),
                "energy_ratio_vs_best_fixed": _ratio(e.j_per_task if e else None,
                                                     best_fixed.j_per_task if best_fixed
                                                     else None),
                # energy per right answer: what a task that fails still costs, spread over
                # the ones that succeed (None when a policy got nothing right)
                "j_per_correct": {p: (r.j_per_task / r.accuracy if r.accuracy > 0 else None)
                                  for p, r in at.items()},
            })
        t["per_deadline"] = per_deadline
        tight = next((p for p in per_deadline if p["device_only_misses"]), None)
        if tight is None:
            t["tight"] = {"note": "device-only meets every benchmarked deadline"}
        else:
            ok_acc = all((tight[k] is not None and tight[k] > 1.0) or (
                tight[k] is None and tight["acc_enachi"] and tight["acc_enachi"] > 0)
                for k in ("acc_ratio_vs_best_fixed", "acc_ratio_vs_no_progressive"))
            er = tight["energy_ratio_vs_edge_only"]
            t["tight"] = {**tight, "accuracy_met": ok_acc,
                          "energy_met": er is not None and er < 1.0, "paper": PAPER}
        b = next((r for r in mine if r.part == "budget"), None)
        if b is not None and b.budget_w:
            dev = b.mean_w / b.budget_w - 1.0
            tail = None if b.budget_tail_w is None else b.budget_tail_w / b.budget_w - 1.0
            t["budget"] = {"budget_w": b.budget_w, "mean_w": b.mean_w, "deviation": dev,
                           "second_half_w": b.budget_tail_w, "second_half_deviation": tail,
                           "tolerance": BUDGET_TOLERANCE, "held": dev <= BUDGET_TOLERANCE,
                           "use": 1.0 + dev, "use_target": BUDGET_USE_TARGET,
                           "use_met": 1.0 + dev >= BUDGET_USE_TARGET, "tasks": b.tasks,
                           "deadline_ms": b.deadline_ms, "accuracy": b.accuracy}
        us = [r for r in mine if r.part == "users" and r.users]
        if us:
            per_n = {}
            for n in sorted({r.users for r in us if r.users}):
                rs = [r for r in us if r.users == n]
                per_n[n] = {"j_per_task": sum(r.j_per_task for r in rs) / len(rs),
                            "accuracy": sum(r.accuracy for r in rs) / len(rs),
                            "miss_rate": sum(r.miss_rate for r in rs) / len(rs),
                            "mean_share": _mean([r.mean_share for r in rs])}
            js = [v["j_per_task"] for v in per_n.values()]
            spread = max(js) / min(js) - 1.0 if min(js) > 0 else None
            t["users"] = {"per_users": per_n, "spread": spread,
                          "met": spread is not None and spread <= USERS_TOLERANCE}
        out[model] = t
    return out


def _mean(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return sum(v) / len(v) if v else None


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(rows: Sequence[Row], targets: dict[str, Any]) -> str:
    """The deadline table per model, the budget and users lines, and the targets."""
    out = []
    for model in sorted({r.model for r in rows}):
        dl = [r for r in rows if r.model == model and r.part == "deadline"]
        deadlines = sorted({r.deadline_ms for r in dl if r.deadline_ms is not None})
        policies = deadline_policies(rows, model)
        out.append(f"== {model}: accuracy (right and on time) / mJ per task / deadline misses")
        out.append(f"{'policy':<22}" + "".join(f"{f'{d:g} ms':>26}" for d in deadlines))
        for p in policies:
            cells = []
            for d in deadlines:
                r = next((x for x in dl if x.policy == p and x.deadline_ms == d), None)
                cells.append("-" if r is None else
                             f"{r.accuracy:.3f} {r.j_per_task * 1e3:8.2f} {r.miss_rate:4.0%}")
            out.append(f"{p:<22}" + "".join(f"{c:>26}" for c in cells))
        t = targets.get(model, {})
        tight = t.get("tight", {})
        if "note" in tight:
            out.append(f"tight deadline: {tight['note']}")
        elif tight:
            out.append(
                f"tight deadline {tight['deadline_ms']:g} ms (device-only misses): enachi "
                f"accuracy x{_f(tight['acc_ratio_vs_best_fixed'], '.2f')} vs best fixed-split "
                f"({tight['best_fixed_split']}), x{_f(tight['acc_ratio_vs_no_progressive'], '.2f')}"
                f" vs no-progressive [{'met' if tight['accuracy_met'] else 'MISSED'}]; energy "
                f"x{_f(tight['energy_ratio_vs_edge_only'], '.2f')} of edge-only "
                f"[{'met' if tight['energy_met'] else 'MISSED'}] (paper: +43% accuracy, -62% "
                "energy)")
        b = t.get("budget")
        if b:
            out.extend(budget_lines(b))
        u = t.get("users")
        if u:
            parts = ", ".join(f"{n}: {v['j_per_task'] * 1e3:.2f} mJ (acc {v['accuracy']:.2f}, "
                              f"share {_f(v['mean_share'], '.2f')})"
                              for n, v in u["per_users"].items())
            out.append(f"energy per device vs users: {parts}; spread {_f(u['spread'], '.1%')} "
                       f"[{'met' if u['met'] else 'MISSED'} within 10%]")
        out.append("")
    return "\n".join(out)


def budget_lines(b: dict[str, Any]) -> list[str]:
    """The budget run's three lines: what ran, whether the energy budget held, how much of it
    was used (each line names the question it answers). `b` is evaluate()'s "budget"."""
    at = "" if b.get("deadline_ms") is None else f" at {b['deadline_ms']:g} ms"
    half = b["second_half_deviation"]
    half_text = "" if half is None else f", second half {pct(1.0 + half)} of the budget"
    return [
        f"budget {b['budget_w']:.4g} W, enachi, {b['tasks']} tasks{at}: mean {b['mean_w']:.4g} W"
        f"{half_text}, accuracy {b['accuracy']:.3f}",
        f"  energy budget: {held_words(b['deviation'], b['tolerance'])}; held = long-run mean "
        f"at most {pct(b['tolerance'], 0)} over",
        f"  budget use: {pct(b['use'])} (target >= {pct(b['use_target'], 0)}) "
        f"[{'met' if b['use_met'] else 'MISSED'}]",
    ]


def write_json(path: Path, rows: Sequence[Row], targets: dict[str, Any],
               meta: dict[str, Any]) -> None:
    path.write_text(jsonout.dumps({"meta": meta, "targets": targets,
                                "rows": [r.to_dict() for r in rows]}, indent=1) + "\n")


def deadline_policies(rows: Sequence[Row], model: str) -> list[str]:
    """The policies of `model`'s deadline part in the order the table prints them (also the
    plot's series and legend names). Pure."""
    return list(dict.fromkeys(r.policy for r in rows if r.model == model
                              and r.part == "deadline"))


def build_figure(rows: Sequence[Row]) -> Any:
    """One row of three panels per model, as a matplotlib Figure (not attached to pyplot):
    accuracy on time and mJ per task against the deadline, one series per table row (named as
    the table names them; fixed-split points dashed), and energy per task per device against
    the number of devices sharing one edge (the users part: enachi under its budget), the mean
    over devices as a line and each device as a dot."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    models = sorted({r.model for r in rows})
    fig = Figure(figsize=(15, 5.6 * len(models)))
    axes = fig.subplots(len(models), 3, squeeze=False)
    for ax_row, model in zip(axes, models, strict=True):
        dl = [r for r in rows if r.model == model and r.part == "deadline"]
        policies = deadline_policies(rows, model)
        fixed = [p for p in policies if p.startswith("fixed-split")]
        shades = colormaps["viridis"]
        for i, name in enumerate(policies):
            rs = sorted((r for r in dl if r.policy == name), key=lambda r: r.deadline_ms or 0)
            xs = [r.deadline_ms for r in rs]
            if name in fixed:
                k = fixed.index(name)
                style: dict[str, Any] = {"ls": "--", "lw": 1.0, "marker": ".",
                                         "color": shades(k / max(len(fixed) - 1, 1) * 0.9)}
            else:
                style = {"marker": "o", "color": f"C{i % 10}"}
            ax_row[0].plot(xs, [r.accuracy for r in rs], label=name, **style)
            ax_row[1].plot(xs, [r.j_per_task * 1e3 for r in rs], label=name, **style)
        ax_row[0].set(title=f"{model}: accuracy (right and on time)", xlabel="deadline (ms)",
                      ylabel="accuracy")
        ax_row[1].set(title=f"{model}: energy per task", xlabel="deadline (ms)",
                      ylabel="mJ per task", yscale="log")
        ax_row[1].yaxis.set_major_formatter(ScalarFormatter())
        ax_row[1].yaxis.set_minor_formatter(ScalarFormatter())
        # below the panel, off the data (a legend "best" placed still covered points)
        ax_row[0].legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                         borderaxespad=0.0, frameon=False)
        _users_panel(ax_row[2], [r for r in rows if r.model == model and r.part == "users"
                                 and r.users], model)
    fig.tight_layout()
    return fig


def _users_panel(ax: Any, us: list[Row], model: str) -> None:
    """mJ per task per device against the number of devices on one edge (enachi)."""
    ns = sorted({r.users for r in us if r.users})
    budgets = sorted({r.budget_w for r in us if r.budget_w})
    deadlines = sorted({r.deadline_ms for r in us if r.deadline_ms is not None})
    how = ", ".join(["enachi", *(f"budget {b:.3g} W" for b in budgets),
                     *(f"deadline {d:g} ms" for d in deadlines)])
    ax.set(title=f"{model}: energy per device vs devices", xlabel="devices sharing one edge",
           ylabel="mJ per task, per device")
    if not ns:
        ax.text(0.5, 0.5, "no users part in this run", ha="center", va="center",
                transform=ax.transAxes)
        return
    mean = [sum(r.j_per_task for r in us if r.users == n)
            / sum(1 for r in us if r.users == n) * 1e3 for n in ns]
    ax.plot(ns, mean, marker="o", color="C0", label="mean over the devices")
    xs = [r.users for r in us]
    ax.scatter(xs, [r.j_per_task * 1e3 for r in us], s=12, color="0.5", zorder=3,
               label="one device")
    ax.set_xticks(ns)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, title=how, title_fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.16), borderaxespad=0.0, frameon=False, ncol=2)


def write_png(path: Path, rows: Sequence[Row]) -> None:
    """`build_figure(rows)` saved as a PNG at `path`."""
    build_figure(rows).savefig(path, dpi=100)
