"""``ondevice bench fleet``: many devices, one edge; batched against serial edge scheduling;
and a fleet across several edges.

Eight real drafts cannot share two cores with the edge, so each device *replays* a recorded
draft trace (``bench.trace``: along the target's greedy path, whether the draft's argmax
matched and its entropy, from the real pair) at the speed of a device hardware profile
(``_fleet_device``: the replayed device, its rounds priced and counted as every loop counts
them). Real mode (``_fleet_real``) runs one real ``edge-server`` on loopback (Gemma 3 270M by
default) and the N devices in this process, sending it real frames; sim mode (``_fleet_sim``)
runs the same devices and policies against an event-driven model of a batching edge on a
virtual clock. Device energy is modelled from the profile, labelled modelled.

The trace holds only along the path it was recorded on. Where the edge's greedy token is not
the trace's (a near-tie that the edge's float sums, which depend on the batch a step carries
and on where its sequence's cells lie in the KV pool, resolve otherwise than the recording
did), the session's context has left the trace, and a device that kept drafting it would
draft a path the edge never takes. So a drafting device ends that session at the verdict that
shows it and goes on with the next prompt in a new session (``diverged`` counts these); it
also moves on when a prompt's trace runs out.

Per (N, policy, scheduler): aggregate tokens/s, per-device tokens/s (median, p5), per-device
J/token (modelled), mean edge batch (tokens per decode, from the verdicts), edge RSS. Here:
the rows (``FleetRow``, ``summarize``), the runs (``run_fleet_real``, ``run_fleet_sim``) and
the report (table, ratios, figure).

Across edges: sim mode runs each (edges, N) with that many modelled edges, sessions placed by
the devices' placement rule (``_fleet_sim``), and reports the scaling against one edge
(``_fleet_edges_report``); real mode with ``--edges N`` runs N real edges and the phases of
``_fleet_edges`` (steady, a drain, a kill).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.bench._fleet_device import (
    DeviceResult,
    PromptTrace,
    draft_round,
    edge_only_energy_j,
    prompt_traces,
)
from ondevice.bench._fleet_edges import EdgesConfig, run_fleet_edges_real
from ondevice.bench._fleet_edges_report import (
    PHASE_HEADER,
    PhaseRow,
    build_scaling_figure,
    build_timeline_figure,
    format_phase,
    format_scaling,
    phase_rows,
    phase_series,
    scaling,
    sim_mode,
)
from ondevice.bench._fleet_real import edge_rss_mib, run_real_device, run_real_fleet
from ondevice.bench._fleet_sim import simulate_fleet
from ondevice.bench._hardware import CostModel

FLEET_POLICIES = ("gelato", "fixed", "edge-only")


@dataclass(slots=True)
class FleetRow:
    """One (devices, policy, scheduler) cell of the table."""

    mode: str
    devices: int
    policy: str
    scheduler: str
    aggregate_tps: float
    median_tps: float
    p5_tps: float
    j_per_token: float | None  # mean over devices, modelled
    mean_batch: float | None
    mean_queue_ms: float | None
    edge_rss_mib: float | None
    acceptance: float | None
    diverged: int  # sessions whose edge path left the trace (real mode)
    sessions: int = 0  # sessions the devices opened (real mode: one per trace replayed)
    real_devices: int = 0  # devices running a real draft (this benchmark: none, all replay)
    replayed_devices: int = 0
    streamed_share: float | None = None  # of the tokens, those the edge streamed alone
    energy_source: str = "modelled"
    edges: int = 1  # edges sharing the devices (sim mode: alike, sessions placed)
    sessions_per_edge: list[int] | None = None  # the balance: sessions placed on each edge

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(mode: str, n: int, policy: str, scheduler: str, results: Sequence[DeviceResult],
              rss_mib: float | None, *, edges: int = 1) -> FleetRow:
    """The row of one run from its devices' results; ``edges``: how many shared them."""
    tps = sorted(r.tokens_per_s for r in results)
    t0 = min(r.t_start_s for r in results)
    t1 = max(r.t_start_s + r.seconds for r in results)
    jpt = [r.j_per_token for r in results if r.j_per_token is not None]
    batches = sum(r.batch_sum for r in results)
    nb = sum(r.batch_n for r in results)
    drafted = sum(r.drafted for r in results)
    return FleetRow(
        mode=mode, devices=n, policy=policy, scheduler=scheduler,
        aggregate_tps=sum(r.tokens for r in results) / max(t1 - t0, 1e-9),
        median_tps=statistics.median(tps),
        p5_tps=float(np.percentile(tps, 5)),
        j_per_token=statistics.fmean(jpt) if jpt else None,
        mean_batch=batches / nb if nb else None,
        mean_queue_ms=sum(r.queue_ms_sum for r in results) / nb if nb else None,
        edge_rss_mib=rss_mib,
        acceptance=sum(r.accepted for r in results) / drafted if drafted else None,
        diverged=sum(r.diverged for r in results),
        sessions=sum(r.sessions for r in results),
        replayed_devices=n,
        streamed_share=(sum(r.streamed for r in results) / max(sum(r.tokens for r in results), 1)),
        edges=edges, sessions_per_edge=sessions_per_edge(results, edges),
    )


def sessions_per_edge(results: Sequence[DeviceResult], edges: int) -> list[int] | None:
    """Sessions placed on each of ``edges`` edges (None when the devices recorded none)."""
    if not any(r.placed for r in results):
        return None
    counts = [0] * edges
    for r in results:
        for e in r.placed:
            counts[e] += 1
    return counts


# -- the benchmark: orchestration --------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class FleetConfig:
    """What ``ondevice bench fleet`` runs."""

    mode: str  # "real" | "sim"
    devices: tuple[int, ...]
    policies: tuple[str, ...]
    schedulers: tuple[str, ...]
    device_profile: str = "rpi5"
    edge_profiles: tuple[str, ...] = ("edge-gpu",)  # sim mode
    max_tokens: int = 48  # per device
    power_budget_w: float | None = None  # for gelato
    edge_threads: int = 2
    join_every_s: float = 0.0  # > 0: one extra run where gelato devices join one by one
    join_tokens: int = 400  # per device in the joining run (the budget is a long-run one)
    edges: tuple[int, ...] = (1,)  # sim: edge counts to compare; real: one count


async def _info(url: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(url + wire_info_path()) as resp:
        return await resp.json()


def wire_info_path() -> str:
    from ondevice.common import wire

    return wire.INFO_PATH


async def run_fleet_real(cfg: FleetConfig, target: Path, traces: Sequence[PromptTrace],
                         vocab_hash: str, say: Callable[[str], None],
                         on_row: Callable[[FleetRow], None] = lambda row: None) -> tuple[
                             list[FleetRow], dict[str, Any]]:
    """Every (scheduler, N, policy) against a real edge on loopback; plus the joining run.
    ``on_row`` gets each row as it is measured, ``say`` what else there is to tell."""
    from ondevice.bench._hardware import load_profile
    from ondevice.edge.local import edge_child

    cost = CostModel(load_profile(cfg.device_profile, "device"),  # type: ignore[arg-type]
                     load_profile("edge-gpu", "edge"))  # type: ignore[arg-type]
    rows: list[FleetRow] = []
    join: dict[str, Any] = {}
    n_max = max(cfg.devices)
    for sch in cfg.schedulers:
        args = ["--model", str(target), "--host", "127.0.0.1", "--port", "0", "--no-advertise",
                "--max-sessions", str(n_max), "--max-sessions-per-client", str(n_max),
                "--scheduler", sch, "--threads", str(cfg.edge_threads), "--n-ctx", "1024"]
        async with edge_child(args, quiet=True) as url:
            for n in cfg.devices:
                for policy in cfg.policies:
                    before = await _info(url)
                    results = await run_real_fleet(url, traces, policy, n, cost, vocab_hash,
                                                   cfg.max_tokens,
                                                   power_budget_w=cfg.power_budget_w)
                    after = await _info(url)
                    rss = after.get("engine", {}).get("rss_mib")
                    row = summarize("real", n, policy, sch, results, rss)
                    rows.append(row)
                    on_row(row)
                    del before
            if cfg.join_every_s > 0 and sch == "batched":
                say(f"joining run: {n_max} gelato devices, one every {cfg.join_every_s:g} s")
                results = await run_real_fleet(
                    url, traces, "gelato", n_max, cost, vocab_hash, cfg.join_tokens,
                    power_budget_w=cfg.power_budget_w, join_every_s=cfg.join_every_s)
                join = joining_summary(results, cfg.power_budget_w)
    return rows, join


def joining_summary(results: Sequence[DeviceResult], budget_w: float | None) -> dict[str, Any]:
    """Per device of the joining run: when it joined, its mean drafted budget, its mean power
    against the budget (modelled), and device 0's budget round by round."""
    devices = []
    for r in results:
        power = r.energy_j / r.seconds if r.seconds else None
        devices.append({
            "device": r.device, "joined_s": r.t_start_s - results[0].t_start_s,
            "tokens": r.tokens, "tokens_per_s": r.tokens_per_s,
            "mean_drafted": r.drafted / r.rounds if r.rounds else None,
            "mean_power_w": power,
            "budget_w": budget_w,
            "budget_ratio": power / budget_w if power is not None and budget_w else None,
            "mean_batch": r.batch_sum / r.batch_n if r.batch_n else None,
        })
    return {"devices": devices, "device0_drafted_per_round": results[0].b_history}


def run_fleet_sim(cfg: FleetConfig, traces: Sequence[PromptTrace],
                  on_row: Callable[[FleetRow], None] = lambda row: None) -> list[FleetRow]:
    """Every (edge profile, scheduler, N, policy) on the virtual clock; ``on_row`` gets each
    row as it is computed."""
    from ondevice.bench._hardware import load_profile

    rows = []
    device = load_profile(cfg.device_profile, "device")
    for edge in cfg.edge_profiles:
        cost = CostModel(device, load_profile(edge, "edge"))  # type: ignore[arg-type]
        for k in cfg.edges:
            for sch in cfg.schedulers:
                for n in cfg.devices:
                    for policy in cfg.policies:
                        results = simulate_fleet(traces, policy, n, cost, cfg.max_tokens,
                                                 scheduler=sch, edges=k,
                                                 power_budget_w=cfg.power_budget_w)
                        row = summarize(sim_mode(edge, k), n, policy, sch, results, None,
                                        edges=k)
                        rows.append(row)
                        on_row(row)
    return rows


# -- the report --------------------------------------------------------------------------------

HEADER = (f"{'mode':<16} {'N':>3} {'policy':<10} {'sched':<8} {'agg tok/s':>9} "
          f"{'med tok/s':>9} {'p5 tok/s':>8} {'J/token':>8} {'batch':>6} {'queue ms':>8} "
          f"{'RSS MiB':>7}")


def _f(x: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if x is None else format(x, f">{width}{spec}")


def format_row(r: FleetRow) -> str:
    return (f"{r.mode:<16} {r.devices:>3} {r.policy:<10} {r.scheduler:<8} "
            f"{r.aggregate_tps:>9.1f} {r.median_tps:>9.1f} {r.p5_tps:>8.1f} "
            f"{_f(r.j_per_token, '.4f', 8)} {_f(r.mean_batch, '.1f', 6)} "
            f"{_f(r.mean_queue_ms, '.1f', 8)} {_f(r.edge_rss_mib, '.0f', 7)}")


def ratios(rows: Sequence[FleetRow]) -> list[str]:
    """Batched against serial, per (mode, N, policy), measured side by side in one run; and
    gelato against batched edge-only at each N."""
    out = []
    by = {(r.mode, r.devices, r.policy, r.scheduler): r for r in rows}
    for (mode, n, policy, sch), r in sorted(by.items()):
        if sch != "batched":
            continue
        s = by.get((mode, n, policy, "serial"))
        if s is not None and s.aggregate_tps > 0:
            out.append(f"{mode} N={n} {policy}: batched/serial aggregate "
                       f"{r.aggregate_tps / s.aggregate_tps:.2f}x, p5/median "
                       f"{r.p5_tps / r.median_tps if r.median_tps else 0:.2f}")
        e = by.get((mode, n, "edge-only", "batched"))
        if policy == "gelato" and e is not None and e.aggregate_tps > 0:
            jr = (f", J/token {r.j_per_token / e.j_per_token:.2f}x"
                  if r.j_per_token and e.j_per_token else "")
            out.append(f"{mode} N={n} gelato/edge-only (batched) aggregate "
                       f"{r.aggregate_tps / e.aggregate_tps:.2f}x{jr}")
    return out


_MODE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_SCHEDULER_LINES = {"batched": "-", "serial": "--"}


def series_styles(keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str],
                                                                tuple[str, str, str]]:
    """(colour, marker, linestyle) for each (mode, policy, scheduler) series: the colour
    says the policy, the marker the mode (edge profile), the line the scheduler (solid
    batched, dashed serial), so that no two series look alike. Pure."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    policies = list(dict.fromkeys(k[1] for k in keys))
    modes = list(dict.fromkeys(k[0] for k in keys))
    scheds = list(dict.fromkeys(k[2] for k in keys))
    cmap = colormaps["tab10" if len(policies) <= 10 else "tab20"]
    colour = {p: to_hex(cmap(i % cmap.N)) for i, p in enumerate(policies)}
    marker = {m: _MODE_MARKERS[i % len(_MODE_MARKERS)] for i, m in enumerate(modes)}
    spare = iter(ls for ls in ("-.", ":") if ls not in _SCHEDULER_LINES.values())
    line = {s: _SCHEDULER_LINES.get(s) or next(spare, ":") for s in scheds}
    return {k: (colour[k[1]], marker[k[0]], line[k[2]]) for k in keys}


def build_figure(rows: Sequence[FleetRow]) -> Any:
    """Aggregate and per-device (median, p5 band) tokens/s and J/token against N, one line per
    (mode, policy, scheduler) styled by ``series_styles``, the legend below the panels and the
    device counts as plain integer ticks on a log-2 axis. A matplotlib Figure (not attached
    to pyplot)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

    fig = Figure(figsize=(15, 5.5), dpi=110)
    axes = fig.subplots(1, 3)
    series: dict[tuple[str, str, str], list[FleetRow]] = {}
    for r in rows:
        series.setdefault((r.mode, r.policy, r.scheduler), []).append(r)
    styles = series_styles(sorted(series))
    for key, rs in sorted(series.items()):
        mode, policy, sch = key
        rs = sorted(rs, key=lambda r: r.devices)
        n = [r.devices for r in rs]
        colour, marker, ls = styles[key]
        style = {"color": colour, "marker": marker, "ls": ls, "ms": 6}
        axes[0].plot(n, [r.aggregate_tps for r in rs], label=f"{mode} {policy} {sch}", **style)
        axes[1].plot(n, [r.median_tps for r in rs], **style)
        axes[1].fill_between(n, [r.p5_tps for r in rs], [r.median_tps for r in rs],
                             color=colour, alpha=0.10)
        axes[2].plot(n, [r.j_per_token if r.j_per_token is not None else np.nan for r in rs],
                     **style)
    axes[0].set(title="aggregate tokens/s (all devices)", xlabel="devices sharing the edge",
                ylabel="tokens/s")
    axes[1].set(title="per-device tokens/s: median, band down to p5",
                xlabel="devices sharing the edge", ylabel="tokens/s")
    axes[2].set(title="per-device J/token (modelled)", xlabel="devices sharing the edge",
                ylabel="J/token")
    counts = sorted({r.devices for r in rows})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(counts))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(alpha=0.3)
    ncol = min(len(series), 4)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=ncol,
               fontsize=8, title="colour: policy; marker: mode; solid: batched, dashed: serial",
               title_fontsize=8, frameon=False)
    rows_of_legend = -(-len(series) // ncol) + 1  # entries' rows plus the title
    fig.tight_layout(rect=(0.0, min(0.05 * rows_of_legend, 0.5), 1.0, 1.0))
    return fig


def write_png(rows: Sequence[FleetRow], path: Path) -> None:
    """``build_figure(rows)`` saved as a PNG at ``path``."""
    build_figure(rows).savefig(path)


__all__ = ["FLEET_POLICIES", "HEADER", "PHASE_HEADER", "DeviceResult", "EdgesConfig",
           "FleetConfig", "FleetRow", "PhaseRow", "PromptTrace", "build_figure",
           "build_scaling_figure", "build_timeline_figure", "draft_round", "edge_only_energy_j",
           "edge_rss_mib", "format_phase", "format_row", "format_scaling", "joining_summary",
           "phase_rows", "phase_series", "prompt_traces", "ratios", "run_fleet_edges_real",
           "run_fleet_real", "run_fleet_sim", "run_real_device", "run_real_fleet", "scaling",
           "series_styles", "sessions_per_edge", "simulate_fleet", "summarize", "write_png"]
