"""The report of a fleet across edges: the simulator's scaling (aggregate tokens/s per
(edges, devices) against one edge) and the real run's phases (balance, and what a drain and a
kill of one edge cost: the dip of the fleet's tokens/s, the time to recover, tokens lost).

Pure: the runs (``fleet.run_fleet_sim``, ``_fleet_edges.run_fleet_edges_real``) hand their
results in; tables are strings, figures matplotlib Figures not attached to pyplot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ondevice.bench._fleet_device import DeviceResult

if TYPE_CHECKING:
    from ondevice.bench.fleet import FleetRow

WINDOW_S = 1.0  # s: the sliding window of the fleet's tokens/s (its dip is this window's min)
STEP_S = 0.1  # s between windows
PRE_S = 2.0  # s: the rate before an event is the mean over this long before it
RECOVERED = 0.9  # back within 10 % of the rate before the event: recovered


def sim_mode(edge_profile: str, edges: int) -> str:
    """A sim row's mode: ``sim:PROFILE``, ``sim:KxPROFILE`` for K > 1 edges alike."""
    return f"sim:{edge_profile}" if edges == 1 else f"sim:{edges}x{edge_profile}"


def one_edge_mode(row: FleetRow) -> str:
    """The mode of the row's one-edge counterpart (``sim:2xedge-gpu`` -> ``sim:edge-gpu``)."""
    return row.mode.replace(f"{row.edges}x", "", 1) if row.edges > 1 else row.mode


def balance_text(counts: Sequence[float | None] | None) -> str:
    """Sessions per edge as ``4/4`` (means as ``4.1/3.9``; ``-`` for an edge that did not
    answer)."""
    if not counts:
        return "-"
    return "/".join("-" if c is None else f"{c:g}" if float(c).is_integer() else f"{c:.1f}"
                    for c in counts)


# -- sim: scaling with the edges ---------------------------------------------------------------

def scaling(rows: Sequence[FleetRow]) -> list[dict[str, Any]]:
    """Per row: its aggregate tokens/s and its ratio to the same (mode, scheduler, policy,
    devices) on one edge (None where the run had no one-edge row), with its balance."""
    one = {(r.mode, r.scheduler, r.policy, r.devices): r.aggregate_tps
           for r in rows if r.edges == 1}
    out = []
    for r in rows:
        base = one.get((one_edge_mode(r), r.scheduler, r.policy, r.devices))
        out.append({"mode": one_edge_mode(r), "scheduler": r.scheduler, "policy": r.policy,
                    "devices": r.devices, "edges": r.edges, "aggregate_tps": r.aggregate_tps,
                    "vs_one_edge": r.aggregate_tps / base if base else None,
                    "sessions_per_edge": r.sessions_per_edge})
    return out


def format_scaling(cells: Sequence[dict[str, Any]]) -> list[str]:
    """The fleet-across-edges table: a line per (mode, scheduler, policy, devices), a column
    per edge count: aggregate tokens/s, its ratio to one edge, sessions per edge."""
    edges = sorted({c["edges"] for c in cells})
    lines = [f"{'mode':<16} {'sched':<8} {'policy':<10} {'N':>3} "
             + " ".join(f"{f'{k} edge' + ('s' if k > 1 else ''):>24}" for k in edges)]
    by: dict[tuple[str, str, str, int], dict[int, dict[str, Any]]] = {}
    for c in cells:
        by.setdefault((c["mode"], c["scheduler"], c["policy"], c["devices"]), {})[c["edges"]] = c
    policies = list(dict.fromkeys(c["policy"] for c in cells))
    for (mode, sch, policy, n), per in sorted(
            by.items(), key=lambda kv: (kv[0][0], kv[0][1], policies.index(kv[0][2]), kv[0][3])):
        parts = []
        for k in edges:
            c = per.get(k)
            if c is None:
                parts.append(f"{'-':>24}")
                continue
            x = "" if c["vs_one_edge"] is None else f" {c['vs_one_edge']:.2f}x"
            parts.append(f"{c['aggregate_tps']:.1f}{x} {balance_text(c['sessions_per_edge'])}"
                         .rjust(24))
        lines.append(f"{mode:<16} {sch:<8} {policy:<10} {n:>3} " + " ".join(parts))
    return lines


def build_scaling_figure(cells: Sequence[dict[str, Any]]) -> Any:
    """Aggregate tokens/s against devices, one line per edge count, a panel per (mode,
    scheduler, policy); device counts as plain ticks on a log-2 axis."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

    panels: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in cells:
        panels.setdefault((c["mode"], c["scheduler"], c["policy"]), []).append(c)
    ncol = min(len(panels), 3)
    nrow = -(-len(panels) // ncol)
    fig = Figure(figsize=(5.0 * ncol, 4.2 * nrow), dpi=110)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    counts = sorted({c["devices"] for c in cells})
    for ax, ((mode, sch, policy), cs) in zip(axes, panels.items(), strict=False):
        for k in sorted({c["edges"] for c in cs}):
            line = sorted((c for c in cs if c["edges"] == k), key=lambda c: c["devices"])
            ax.plot([c["devices"] for c in line], [c["aggregate_tps"] for c in line],
                    marker="o", label=f"{k} edge{'s' if k > 1 else ''}")
        ax.set(title=f"{mode} {policy} ({sch})", xlabel="devices", ylabel="aggregate tokens/s")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(counts))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


# -- real: the phases --------------------------------------------------------------------------

@dataclass(slots=True)
class PhaseRun:
    """One phase of the real run: monotonic times, the devices' results, the mean devices
    per edge slot before its event (the balance), and its event (the edge's slot, its exit
    status)."""

    name: str
    t0: float
    t_ramped: float  # the last device has started
    t_stop: float  # the devices were told to stop
    t_event: float | None
    results: list[DeviceResult]
    balance: list[float | None]
    event_slot: int | None = None
    exit_status: int | None = None


@dataclass(slots=True)
class PhaseRow:
    """A line of the fleet-across-edges table (real mode). Rates in tokens/s, the phase's
    from when its last device had started to its end; ``dip`` the fraction of the steady
    rate the worst 1 s window lost; ``recover_s`` None: not recovered by the phase's end."""

    phase: str
    edges: int
    devices: int
    policy: str
    seconds: float
    tokens: int
    aggregate_tps: float
    balance: list[float | None]  # mean devices per edge before the event
    sessions_per_edge: list[int]
    moved: int
    lost: int
    diverged: int
    pre_tps: float | None = None
    min_tps: float | None = None
    dip: float | None = None
    recover_s: float | None = None
    post_tps: float | None = None  # the rate it settled at after the event
    settle_s: float | None = None  # from the event until back within 10 % of ``post_tps``
    event_edge: int | None = None
    exit_status: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merged_log(results: Sequence[DeviceResult]) -> np.ndarray:
    """Every device's (t, tokens), time-ordered. [k, 2]"""
    log = [e for r in results for e in r.token_log]
    arr = np.asarray(log, dtype=np.float64).reshape(-1, 2)
    return arr[np.argsort(arr[:, 0], kind="stable")]


def tokens_between(log: np.ndarray, t0: float | np.ndarray, t1: float | np.ndarray) -> Any:
    """Tokens logged in (t0, t1] (elementwise for arrays). ``log`` [k, 2] time-ordered."""
    cum = np.concatenate([[0.0], np.cumsum(log[:, 1])])
    return (cum[np.searchsorted(log[:, 0], t1, side="right")]
            - cum[np.searchsorted(log[:, 0], t0, side="right")])


def rate_series(log: np.ndarray, t0: float, t1: float, *, window_s: float = WINDOW_S,
                step_s: float = STEP_S) -> tuple[np.ndarray, np.ndarray]:
    """(times [m], tokens/s [m]): the rate over the window (t - window_s, t] at t = t0 +
    window_s, then every ``step_s`` up to t1."""
    times = np.arange(t0 + window_s, t1 + 1e-9, step_s)
    return times, tokens_between(log, times - window_s, times) / window_s


def event_figures(log: np.ndarray, t_event: float, t_end: float, steady_tps: float, *,
                  t_from: float | None = None) -> dict[str, float | None]:
    """What an event cost: ``pre_tps`` (the mean rate over ``PRE_S`` before it, from
    ``t_from`` at the earliest: when the last device had started), ``min_tps``
    (the worst 1 s window ending after it, up to ``t_end``), ``dip`` (the fraction of
    ``steady_tps`` that window lost), ``recover_s`` (from the event until a window after the
    worst is back within 10 % of ``pre_tps``; 0 when none fell below that, None when none
    came back by ``t_end``), ``post_tps`` (the rate the fleet settles at once the event is
    over: the median window of the second half of the time after the worst one) and
    ``settle_s`` (from the event until a window after the worst is within 10 % of
    ``post_tps``). With one edge fewer the fleet may never get back to ``pre_tps``; it
    settles at what the edges left can serve, and ``settle_s`` is how long that took."""
    a = t_event - PRE_S if t_from is None else min(max(t_from, t_event - PRE_S), t_event - 0.1)
    pre = float(tokens_between(log, a, t_event)) / (t_event - a)
    times, rates = rate_series(log, t_event - WINDOW_S, t_end)
    after = times > t_event
    times, rates = times[after], rates[after]
    if not len(rates):
        return {"pre_tps": pre, "min_tps": None, "dip": None, "recover_s": None,
                "post_tps": None, "settle_s": None}
    worst = int(np.argmin(rates))
    low = float(rates[worst])
    recover: float | None = 0.0
    if low < RECOVERED * pre:
        back = np.nonzero(rates[worst:] >= RECOVERED * pre)[0]
        recover = float(times[worst + back[0]] - t_event) if len(back) else None
    tail = rates[worst + (len(rates) - worst) // 2:]
    post = float(np.median(tail))
    settled = np.nonzero(rates[worst:] >= RECOVERED * post)[0]
    settle = float(times[worst + settled[0]] - t_event) if len(settled) else None
    return {"pre_tps": pre, "min_tps": low,
            "dip": 1.0 - low / steady_tps if steady_tps > 0 else None, "recover_s": recover,
            "post_tps": post, "settle_s": settle}


def phase_rows(phases: Sequence[PhaseRun], edges: int, policy: str) -> list[PhaseRow]:
    """The table's rows; the first phase's rate is the steady rate the dips are against."""
    rows: list[PhaseRow] = []
    steady = None
    for ph in phases:
        log = merged_log(ph.results)
        seconds = ph.t_stop - ph.t_ramped
        tps = float(tokens_between(log, ph.t_ramped, ph.t_stop)) / seconds
        steady = tps if steady is None else steady
        placed = [0] * edges
        for r in ph.results:
            for slot in r.placed:
                placed[slot] += 1
        row = PhaseRow(
            phase=ph.name, edges=edges, devices=len(ph.results), policy=policy,
            seconds=seconds, tokens=sum(r.tokens for r in ph.results), aggregate_tps=tps,
            balance=ph.balance, sessions_per_edge=placed,
            moved=sum(r.moved for r in ph.results), lost=sum(r.lost for r in ph.results),
            diverged=sum(r.diverged for r in ph.results), event_edge=ph.event_slot,
            exit_status=ph.exit_status)
        if ph.t_event is not None:
            figs = event_figures(log, ph.t_event, ph.t_stop, steady, t_from=ph.t_ramped)
            row.pre_tps, row.min_tps = figs["pre_tps"], figs["min_tps"]
            row.dip, row.recover_s = figs["dip"], figs["recover_s"]
            row.post_tps, row.settle_s = figs["post_tps"], figs["settle_s"]
        rows.append(row)
    return rows


PHASE_HEADER = (f"{'phase':<7} {'agg tok/s':>9} {'balance':>8} {'opened':>8} {'pre tok/s':>9} "
                f"{'min 1s':>7} {'dip':>5} {'recover s':>13} {'post tok/s':>10} {'settle s':>8} "
                f"{'moved':>5} {'lost':>4} "
                f"{'diverged':>8} {'event':>12}")


def format_phase(r: PhaseRow) -> str:
    def f(x: float | None, spec: str, width: int) -> str:
        return f"{'-':>{width}}" if x is None else format(x, f">{width}{spec}")
    recover = ("-" if r.pre_tps is None else
               "not recovered" if r.recover_s is None else f"{r.recover_s:.1f}")
    event = "-" if r.event_edge is None else f"edge {r.event_edge}: {r.exit_status}"
    return (f"{r.phase:<7} {r.aggregate_tps:>9.1f} {balance_text(r.balance):>8} "
            f"{balance_text(r.sessions_per_edge):>8} {f(r.pre_tps, '.1f', 9)} "
            f"{f(r.min_tps, '.1f', 7)} {f(r.dip, '.0%', 5)} {recover:>13} "
            f"{f(r.post_tps, '.1f', 10)} {f(r.settle_s, '.1f', 8)} {r.moved:>5} "
            f"{r.lost:>4} {r.diverged:>8} {event:>12}")


def phase_series(phases: Sequence[PhaseRun]) -> list[dict[str, Any]]:
    """Per phase, the fleet's 1 s tokens/s over time since the phase began (for the JSON
    and the figure), with the event's time."""
    out = []
    for ph in phases:
        times, rates = rate_series(merged_log(ph.results), ph.t0, ph.t_stop)
        out.append({"phase": ph.name, "t_s": (times - ph.t0).round(2).tolist(),
                    "tokens_per_s": rates.round(2).tolist(),
                    "event_s": None if ph.t_event is None else round(ph.t_event - ph.t0, 2)})
    return out


def build_timeline_figure(series: Sequence[dict[str, Any]], rows: Sequence[PhaseRow],
                          drain_timeout_s: float) -> Any:
    """The fleet's tokens/s (1 s window) over each phase, the drain and the kill marked (the
    drain's deadline too), the steady rate dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * len(series), 4.2), dpi=110)
    axes = np.atleast_1d(fig.subplots(1, len(series), sharey=True, squeeze=False)).ravel()
    steady = rows[0].aggregate_tps if rows else None
    for ax, s, r in zip(axes, series, rows, strict=True):
        ax.plot(s["t_s"], s["tokens_per_s"], color="tab:blue", label="tokens/s (1 s window)")
        if steady:
            ax.axhline(steady, color="grey", ls="--", lw=1, label="steady rate")
        if s["event_s"] is not None:
            what = "drain" if s["phase"] == "drain" else "SIGKILL"
            ax.axvline(s["event_s"], color="tab:red", lw=1.5,
                       label=f"{what} of edge {r.event_edge}")
            if s["phase"] == "drain":
                ax.axvline(s["event_s"] + drain_timeout_s, color="tab:orange", ls=":",
                           label="drain deadline")
        lost = f", {r.lost} tokens lost"
        ax.set(title=f"{s['phase']}: {r.aggregate_tps:.1f} tok/s{lost}",
               xlabel="s since the phase began")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
                  frameon=False)
    axes[0].set_ylabel("fleet tokens/s")
    top = max([v for s in series for v in s["tokens_per_s"]] + [steady or 0.0, 1.0])
    axes[0].set_ylim(0, 1.1 * top)  # shared by the panels
    fig.tight_layout()
    return fig


__all__ = ["PHASE_HEADER", "PhaseRow", "PhaseRun", "balance_text", "build_scaling_figure",
           "build_timeline_figure", "event_figures", "format_phase", "format_scaling",
           "merged_log", "one_edge_mode", "phase_rows", "phase_series", "rate_series",
           "scaling", "sim_mode", "tokens_between"]
