"""``ondevice bench fleet``: the replayed devices against a real edge, and the simulated fleet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ondevice.bench._hardware import CostModel, load_profile
from ondevice.bench.fleet import (
    draft_round,
    prompt_traces,
    simulate_fleet,
    summarize,
)
from ondevice.bench.trace import record_trace
from ondevice.common.llama_runtime import LlamaModel
from ondevice.llm.policies import FixedPolicy, RoundStats

PROMPTS = ["Hello world", "The quick brown fox", "Once upon a time", "In the beginning"]


@pytest.fixture(scope="module")
def traces(fixture_models: tuple[Path, Path]) -> list:
    target, draft = fixture_models
    trace = record_trace(target, draft, PROMPTS, max_tokens=40)
    with LlamaModel(target) as m:
        ids = [m.tokenize(p) for p in PROMPTS]
    return prompt_traces(trace, ids)


def test_replayed_draft_follows_the_trace(traces: list) -> None:
    pt = traces[0]
    ids, ents = draft_round(pt, 0, FixedPolicy(6), 6)
    first_miss = next((i for i in range(6) if not pt.match[i]), 6)
    assert ids[:first_miss] == pt.tokens[:first_miss].tolist()  # matched: the target's token
    if first_miss < 6:
        assert ids[first_miss] != int(pt.tokens[first_miss])  # the miss is some other token
    assert len(ids) == 6 and ents == pt.entropy[:6].tolist()


def test_sim_batching_serves_the_fleet(traces: list) -> None:
    cost = CostModel(load_profile("rpi5", "device"), load_profile("edge-gpu-32k", "edge"))
    rows = {}
    for sch in ("batched", "serial"):
        for policy in ("edge-only", "fixed"):
            res = simulate_fleet(traces, policy, 4, cost, 30, scheduler=sch)
            assert all(r.tokens == min(30, len(traces[r.device % 4].tokens) - 1) for r in res)
            rows[policy, sch] = summarize("sim", 4, policy, sch, res, None)
    # Four edge-only devices: every decode carries all four (one token each) when batched,
    # one when serial; batching then serves the fleet faster on this edge's cost model.
    assert rows["edge-only", "batched"].mean_batch == pytest.approx(4.0, abs=0.5)
    assert rows["edge-only", "serial"].mean_batch == 1.0
    assert rows["edge-only", "batched"].aggregate_tps > rows["edge-only", "serial"].aggregate_tps
    assert rows["fixed", "batched"].mean_batch > rows["fixed", "serial"].mean_batch


def test_real_fleet_against_a_real_edge(fixture_models: tuple[Path, Path],
                                        tmp_path: Path) -> None:
    target, draft = fixture_models
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "bench", "fleet", "--mode", "real",
         "--target", str(target), "--draft", str(draft), "--devices", "1,3",
         "--policies", "fixed,edge-only", "--max-tokens", "12", "--n-prompts", "3",
         "--edge-threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "COINFER_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "fleet.json").read_text())
    assert (out / "fleet.png").stat().st_size > 10_000
    rows = data["rows"]
    assert len(rows) == 2 * 2 * 2  # devices x policies x schedulers
    for r in rows:
        assert r["replayed_devices"] == r["devices"] and r["real_devices"] == 0
        assert r["energy_source"] == "modelled" and r["aggregate_tps"] > 0
        assert r["mean_batch"] is not None and r["diverged"] == 0
    three = {(r["policy"], r["scheduler"]): r for r in rows if r["devices"] == 3}
    assert three["edge-only", "batched"]["mean_batch"] > 1.0  # sessions shared decodes
    assert three["edge-only", "serial"]["mean_batch"] == 1.0
    assert "batched/serial aggregate" in done.stdout


def test_sim_fleet_gelato_streams_where_streaming_is_best() -> None:
    """On the shipped Gemma trace, Pi 5 devices against the fast GPU edge: letting the edge
    stream beats every drafting budget, and the fleet's gelato devices find it (most of their
    tokens streamed) and come within 10 % of edge-only's aggregate over a 120-token run (each
    device first streams a prompt's opening, then decides); Jetson devices against the
    long-context edge, where drafting pays, stream less."""
    from ondevice.bench.trace import Trace, shipped_trace

    trace = Trace.load(shipped_trace())
    pts = prompt_traces(trace, [[2]] * trace.n_prompts)
    share = {}
    for device, edge in (("rpi5", "edge-gpu"), ("jetson-orin-nano", "edge-gpu-32k")):
        cost = CostModel(load_profile(device, "device"), load_profile(edge, "edge"))
        g = summarize("sim", 4, "gelato", "batched",
                      simulate_fleet(pts, "gelato", 4, cost, 120), None)
        e = summarize("sim", 4, "edge-only", "batched",
                      simulate_fleet(pts, "edge-only", 4, cost, 120), None)
        share[edge] = g.streamed_share
        if edge == "edge-gpu":
            assert g.streamed_share > 0.5 and g.aggregate_tps >= 0.9 * e.aggregate_tps, (g, e)
    assert share["edge-gpu-32k"] < share["edge-gpu"], share


async def test_real_fleet_device_streams_a_stretch(fixture_models: tuple[Path, Path],
                                                   traces: list) -> None:
    """A replayed device whose policy streams every other turn: the streamed tokens are the
    target's (no divergence from the trace) and the policy hears of each stretch."""
    from _edge import edge_server

    from ondevice.bench.fleet import run_real_device

    class Alternate(FixedPolicy):
        def __init__(self) -> None:
            super().__init__(3)
            self.turn = 0
            self.stretches: list[int] = []

        def stream_tokens(self, left: int | None = None) -> int:
            self.turn += 1
            return 5 if self.turn % 2 else 0

        def observe_stream(self, tokens: int, time_s: float, energy_j: float,
                           edge_advice: bool | None = None) -> None:
            self.stretches.append(tokens)

    cost = CostModel(load_profile("rpi5", "device"), load_profile("edge-gpu", "edge"))
    with LlamaModel(fixture_models[0]) as m:
        vhash = m.vocab_hash()
    policy = Alternate()
    with edge_server(fixture_models[0], "--n-ctx", "256") as e:
        res = await run_real_device(0, e.url, [traces[0]], policy, cost, vhash, 30)
    assert res.tokens == 30 and res.diverged == 0 and res.sessions == 1
    assert policy.stretches and all(n == 5 for n in policy.stretches[:-1])
    assert res.streamed == sum(policy.stretches) and res.rounds > 0


async def test_real_fleet_device_leaves_a_trace_the_edge_left(fixture_models: tuple[Path, Path],
                                                              traces: list) -> None:
    """Where the edge's greedy path is not the trace's (here: a trace corrupted at position
    8 and marked matched, so the device drafts the wrong token there), the device ends that
    session at the verdict that shows it and goes on with the next prompt; without this it
    would draft a stale path for the rest of the run (every verdict off the trace)."""
    from dataclasses import replace

    from _edge import edge_server

    from ondevice.bench.fleet import run_real_device

    good = traces[0]
    tokens = good.tokens.copy()
    tokens[8] = (int(tokens[8]) + 1) % 200 + 3
    match = good.match.copy()
    match[:12] = True
    bad = replace(good, tokens=tokens, match=match)
    cost = CostModel(load_profile("rpi5", "device"), load_profile("edge-gpu", "edge"))
    with LlamaModel(fixture_models[0]) as m:
        vhash = m.vocab_hash()
    with edge_server(fixture_models[0], "--n-ctx", "256") as e:
        res = await run_real_device(0, e.url, [bad, traces[1]], FixedPolicy(4), cost, vhash,
                                    40)
    assert res.diverged == 1 and res.sessions == 2 and res.tokens == 40
    assert res.accepted >= 8  # the matched positions before the corruption were accepted


# -- the edge's advice in the simulated fleet --------------------------------------------------

# A CPU edge (the real fleet's: Gemma 3 270M on two threads): every position costs about a
# step of its own, so once the edge is the bottleneck its advice is to stream.
CPU_EDGE_MS = (3.0, 8.0)  # step ms = 3 + 8 per token


def _cpu_cost(device: str) -> CostModel:
    from ondevice.bench._hardware import EdgeProfile

    t0, k = CPU_EDGE_MS
    return CostModel(load_profile(device, "device"),
                     EdgeProfile(name="edge-cpu", verify_t0_ms=t0, verify_ms_per_token=k))


def _shipped_pts() -> list:
    from ondevice.bench.trace import Trace, shipped_trace

    trace = Trace.load(shipped_trace())
    return prompt_traces(trace, [[2]] * trace.n_prompts)


def test_sim_fleet_devices_hear_the_advice_the_edge_would_give() -> None:
    """The modelled edge feeds its decodes to the edge's own ``StreamAdvisor`` and every
    verdict and stretch carries its advice to the device, as the real frames do: each
    gelato device is told the advice (never ``None``), and where a batched edge is the
    bottleneck it says stream, and the devices follow it."""
    from ondevice.llm.policies import make_policy

    heard: list[list[bool | None]] = []

    def recording(name: str, **kw: object):  # type: ignore[no-untyped-def]
        policy = make_policy(name, **kw)  # type: ignore[arg-type]
        seen: list[bool | None] = []
        heard.append(seen)
        observe, observe_stream = policy.observe, policy.observe_stream

        def obs(stats: RoundStats) -> None:
            seen.append(stats.edge_advice)
            observe(stats)

        def obs_stream(*a: object, edge_advice: bool | None = None, **k: object) -> None:
            seen.append(edge_advice)
            observe_stream(*a, edge_advice=edge_advice, **k)  # type: ignore[arg-type]

        policy.observe, policy.observe_stream = obs, obs_stream  # type: ignore[method-assign]
        return policy

    res = simulate_fleet(_shipped_pts(), "gelato", 4, _cpu_cost("rpi5"), 200, make=recording)
    assert len(heard) == 4 and all(seen for seen in heard)
    assert all(a is not None for seen in heard for a in seen)  # the edge always says
    assert any(a for seen in heard for a in seen)  # and here it says stream
    assert sum(r.streamed for r in res) > 0.9 * sum(r.tokens for r in res)


@pytest.mark.parametrize("device", ["rpi5", "jetson-orin-nano"])
def test_sim_fleet_gelato_on_the_edges_advice_keeps_up_with_edge_only(device: str) -> None:
    """Four devices on the CPU edge, batched, the shipped trace: the edge is the bottleneck
    and advises streaming; followed, gelato's aggregate tokens/s is within 3 % of
    edge-only's and its J/token at most 3 % above (without the advice: rpi5 0.93x the
    throughput at 1.17x the J/token, Jetson 1.05x the J/token)."""
    pts, cost = _shipped_pts(), _cpu_cost(device)
    g = summarize("sim", 4, "gelato", "batched", simulate_fleet(pts, "gelato", 4, cost, 200),
                  None)
    e = summarize("sim", 4, "edge-only", "batched",
                  simulate_fleet(pts, "edge-only", 4, cost, 200), None)
    assert g.aggregate_tps >= 0.97 * e.aggregate_tps, (g, e)
    assert g.j_per_token is not None and e.j_per_token is not None
    assert g.j_per_token <= 1.03 * e.j_per_token, (g, e)


# -- what the fleet benchmark prints and draws -------------------------------------------------

def _fleet_rows() -> list:
    from ondevice.bench.fleet import FleetRow

    rows = []
    for mode in ("sim:edge-gpu", "sim:edge-gpu-32k"):
        for policy in ("gelato", "fixed", "edge-only"):
            for sch in ("batched", "serial"):
                for n in (1, 2, 4, 8):
                    tps = 10.0 * n + len(policy)
                    rows.append(FleetRow(
                        mode=mode, devices=n, policy=policy, scheduler=sch, aggregate_tps=tps,
                        median_tps=tps / n, p5_tps=tps / n * 0.9, j_per_token=0.3,
                        mean_batch=float(n), mean_queue_ms=1.0, edge_rss_mib=None,
                        acceptance=None, diverged=0))
    return rows


def test_fleet_plot_draws_every_series_its_own_way() -> None:
    from ondevice.bench.fleet import build_figure

    fig = build_figure(_fleet_rows())
    for ax in fig.axes:
        styles = [(ln.get_color(), ln.get_marker(), ln.get_linestyle()) for ln in ax.get_lines()]
        assert len(styles) == 12 and len(set(styles)) == 12, styles


def test_fleet_plot_legend_covers_no_panel_and_ticks_are_plain_counts() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ondevice.bench.fleet import build_figure

    fig = build_figure(_fleet_rows())
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert len(legends) == 1 and len(legends[0].get_texts()) == 12
    box = legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer))
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert labels == ["1", "2", "4", "8"], labels


def test_bench_fleet_prints_its_table_once(tmp_path: Path,
                                           fixture_models: tuple[Path, Path]) -> None:
    """The real command on the fixture pair (its trace recorded into a cache of its own)."""
    import os

    from ondevice.bench import fleet

    target, draft = fixture_models
    done = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "bench", "fleet", "--mode", "sim", "--devices",
         "1,2", "--policies", "edge-only,fixed", "--scheduler", "batched", "--edge-profile",
         "edge-gpu", "--max-tokens", "16", "--n-prompts", "2", "--target", str(target),
         "--draft", str(draft), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "COINFER_CACHE": str(tmp_path / "cache")})
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, err
    both = out + err
    assert both.count(fleet.HEADER) == 1
    rows = [ln for ln in out.splitlines() if ln.startswith("sim:edge-gpu ")]
    assert len(rows) == 4 and all(both.count(ln) == 1 for ln in rows)
