"""``ondevice bench fleet`` across edges: the simulator's scaling and placement, the report's
figures against hand-computed cases, and the real phases (steady, drain, kill) on loopback
and in network namespaces."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ondevice.bench._fleet_edges_report import (
    event_figures,
    format_scaling,
    rate_series,
    scaling,
)
from ondevice.bench._fleet_sim import place_session
from ondevice.bench._hardware import CostModel, load_profile
from ondevice.bench.fleet import prompt_traces, simulate_fleet, summarize
from ondevice.edge.placement import EdgeLoad, rank


def _shipped_pts() -> list:
    from ondevice.bench.trace import Trace, shipped_trace

    trace = Trace.load(shipped_trace())
    return prompt_traces(trace, [[2]] * trace.n_prompts)


def _strict(text: str) -> dict:
    def bad(token: str) -> None:
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=bad)


# -- sim ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["edge-only", "gelato"])
def test_sim_two_edges_serve_sixteen_devices_faster_than_one(policy: str) -> None:
    """16 rpi5 devices on the edge-gpu profile, 48 tokens each: two edges alike give more
    than 1.5x one edge's aggregate (the profiles say 1.62-1.63x: one edge is the
    bottleneck at 16 devices, two halve its batches)."""
    cost = CostModel(load_profile("rpi5", "device"), load_profile("edge-gpu", "edge"))
    pts = _shipped_pts()
    one = summarize("sim", 16, policy, "batched", simulate_fleet(pts, policy, 16, cost, 48),
                    None)
    two = summarize("sim", 16, policy, "batched",
                    simulate_fleet(pts, policy, 16, cost, 48, edges=2), None, edges=2)
    assert two.aggregate_tps > 1.5 * one.aggregate_tps, (one.aggregate_tps, two.aggregate_tps)
    assert two.sessions_per_edge == [8, 8] and one.sessions_per_edge == [16]


def test_sim_balance_at_eight_devices_on_two_edges() -> None:
    cost = CostModel(load_profile("rpi5", "device"), load_profile("edge-gpu-32k", "edge"))
    res = simulate_fleet(_shipped_pts(), "gelato", 8, cost, 24, edges=2)
    counts = summarize("sim", 8, "gelato", "batched", res, None, edges=2).sessions_per_edge
    assert counts is not None and sum(counts) == 8 and abs(counts[0] - counts[1]) <= 1, counts
    assert all(r.tokens == 24 for r in res)


def test_sim_one_edge_is_the_one_edge_run() -> None:
    """``edges=1`` is the simulator as it was: the same results as leaving it out."""
    cost = CostModel(load_profile("rpi5", "device"), load_profile("edge-gpu", "edge"))
    pts = _shipped_pts()
    a = simulate_fleet(pts, "gelato", 4, cost, 30)
    b = simulate_fleet(pts, "gelato", 4, cost, 30, edges=1)
    assert [(r.tokens, r.seconds, r.energy_j, r.b_history) for r in a] == [
        (r.tokens, r.seconds, r.energy_j, r.b_history) for r in b]


def test_sim_placement_is_the_devices_rule() -> None:
    """``place_session`` picks what ``placement.rank`` ranks first: the fewest sessions, and
    among equal edges each about as often (the near-tie shuffle)."""
    rng = random.Random(1)
    kw = {"capacity": 32, "rtt_ms": 20.0, "step_ms": 25.0}
    assert place_session([3, 1, 2], rng=rng, **kw) == 1
    picks = [place_session([2, 2, 5], rng=rng, **kw) for _ in range(2000)]
    assert 0.45 < picks.count(0) / 2000 < 0.55 and 5 not in picks
    loads = [EdgeLoad(url=str(k), sessions=s, capacity=32, rtt_ms=20.0, step_ms=25.0)
             for k, s in enumerate([4, 0, 9])]
    assert rank(loads, rng=random.Random(0))[0].url == "1"
    assert place_session([4, 0, 9], rng=random.Random(0), **kw) == 1


def test_scaling_table_against_one_edge() -> None:
    from ondevice.bench.fleet import FleetRow

    def row(mode: str, edges: int, n: int, tps: float, per: list[int]) -> FleetRow:
        return FleetRow(mode=mode, devices=n, policy="gelato", scheduler="batched",
                        aggregate_tps=tps, median_tps=1.0, p5_tps=1.0, j_per_token=None,
                        mean_batch=None, mean_queue_ms=None, edge_rss_mib=None,
                        acceptance=None, diverged=0, edges=edges, sessions_per_edge=per)
    cells = scaling([row("sim:edge-gpu", 1, 8, 100.0, [8]),
                     row("sim:2xedge-gpu", 2, 8, 150.0, [4, 4]),
                     row("sim:4xedge-gpu", 4, 16, 300.0, [4, 4, 4, 4])])
    assert [c["vs_one_edge"] for c in cells] == [1.0, 1.5, None]
    assert {c["mode"] for c in cells} == {"sim:edge-gpu"}
    text = "\n".join(format_scaling(cells))
    assert "150.0 1.50x 4/4" in text and "300.0 4/4/4/4" in text


# -- the report's figures, hand-computed -------------------------------------------------------

def _log(*stretches: tuple[float, float, float]) -> np.ndarray:
    """One token every 1/rate s over each (start, end, rate). [k, 2]"""
    out = []
    for a, b, rate in stretches:
        out += [(t, 1) for t in np.arange(a, b, 1 / rate)[1:]]
    return np.asarray(out, dtype=np.float64)


def test_event_figures_dip_and_recovery() -> None:
    """100 tok/s, an event at 5 s, 50 tok/s for 2 s, then 100 again: the worst 1 s window is
    50 (a dip of half the steady 100); a window (t - 1, t] holding x s of the slow stretch
    runs at 100 - 50 x, within 10 % of 100 once x <= 0.2, at t = 7.8: 2.8 s after the
    event."""
    log = _log((0.0, 5.0, 100), (5.0, 7.0, 50), (7.0, 10.0, 100))
    figs = event_figures(log, 5.0, 10.0, 100.0)
    assert figs["pre_tps"] == pytest.approx(100, abs=1.5)
    assert figs["min_tps"] == pytest.approx(50, abs=1.5)
    assert figs["dip"] == pytest.approx(0.5, abs=0.015)
    assert figs["recover_s"] == pytest.approx(2.8, abs=0.11)


def test_event_figures_not_recovered_and_no_dip() -> None:
    slow = event_figures(_log((0.0, 4.0, 100), (4.0, 8.0, 60)), 4.0, 8.0, 100.0)
    assert slow["recover_s"] is None and slow["min_tps"] == pytest.approx(60, abs=1.5)
    flat = event_figures(_log((0.0, 8.0, 100)), 4.0, 8.0, 100.0)
    assert flat["recover_s"] == 0.0 and abs(flat["dip"]) < 0.03


def test_event_figures_settle_at_a_lower_rate() -> None:
    """100 tok/s, an event at 4 s, nothing for 1 s (the moved sessions' prefills), then 60
    (one edge fewer): never back to 100, but settled at 60; a window (t - 1, t] holding x s of
    the stall runs at 60 (1 - x), within 10 % of 60 once x <= 0.1, at t = 5.9."""
    log = _log((0.0, 4.0, 100), (5.0, 12.0, 60))
    figs = event_figures(log, 4.0, 12.0, 100.0)
    assert figs["recover_s"] is None and figs["min_tps"] == pytest.approx(0, abs=1.5)
    assert figs["post_tps"] == pytest.approx(60, abs=1.5)
    assert figs["settle_s"] == pytest.approx(1.9, abs=0.11)


def test_rate_series_against_a_naive_count() -> None:
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 10, 500))
    log = np.stack([t, rng.integers(1, 5, 500)], axis=1).astype(np.float64)
    times, rates = rate_series(log, 0.0, 10.0, window_s=1.0, step_s=0.25)
    for tt, r in zip(times, rates, strict=True):
        naive = sum(n for s, n in log if tt - 1.0 < s <= tt)
        assert r == pytest.approx(naive)


def test_leg_counts_a_token_repeated_at_a_resume_as_lost() -> None:
    """A leg resumed at position 3 whose next token repeats the trace's token 2 has lost its
    place: the tokens from there are lost. Off the trace mid-session (a near-tie), or at a
    resume with an unrelated token, the edge took its own path: not lost."""
    from ondevice.bench._fleet_device import PromptTrace
    from ondevice.bench._fleet_real import Leg

    pt = PromptTrace([1, 2], np.array([10, 11, 12, 13, 14, 15]), np.ones(6, bool), np.zeros(6))
    leg = Leg(pt)
    leg.commit([10, 11, 12])
    leg.resume()
    assert leg.context() == [1, 2, 10, 11, 12]
    leg.commit([12, 13])  # 12 again
    assert leg.left_trace and leg.first_off == 3 and leg.lost() == 2
    near_tie = Leg(pt)
    near_tie.commit([10, 11, 99, 13])
    assert near_tie.left_trace and near_tie.lost() == 0
    clean = Leg(pt)
    clean.commit([10, 11])
    clean.resume()
    clean.commit([12, 13, 14])
    assert not clean.left_trace and clean.lost() == 0 and clean.resumed_at == [2]


# -- the command: sim JSON, real phases --------------------------------------------------------

def _fleet(tmp_path: Path, fixture_models: tuple[Path, Path], *args: str,
           timeout: int = 240) -> subprocess.CompletedProcess[str]:
    target, draft = fixture_models
    return subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "bench", "fleet", "--target", str(target),
         "--draft", str(draft), "--n-prompts", "4", "--out", str(tmp_path / "out"), *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COINFER_CACHE": str(tmp_path / "cache")})


def test_bench_fleet_sim_across_edges_writes_strict_json(
        tmp_path: Path, fixture_models: tuple[Path, Path]) -> None:
    done = _fleet(tmp_path, fixture_models, "--mode", "sim", "--edges", "1,2",
                  "--devices", "4,8", "--policies", "edge-only", "--scheduler", "batched",
                  "--edge-profile", "edge-gpu", "--max-tokens", "16")
    assert done.returncode == 0, done.stderr[-3000:]
    data = _strict((tmp_path / "out" / "fleet.json").read_text())
    cells = {(c["edges"], c["devices"]): c for c in data["edges_scaling"]}
    assert set(cells) == {(1, 4), (1, 8), (2, 4), (2, 8)}
    assert cells[2, 8]["sessions_per_edge"] == [4, 4] and cells[1, 8]["vs_one_edge"] == 1.0
    assert cells[2, 8]["vs_one_edge"] > 1.0
    assert (tmp_path / "out" / "fleet-edges.png").stat().st_size > 10_000
    assert "the fleet across edges (sim)" in done.stdout


def _check_real_run(done: subprocess.CompletedProcess[str], out: Path) -> dict[str, dict]:
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    data = _strict((out / "fleet.json").read_text())
    phases = {p["phase"]: p for p in data["phases"]}
    assert list(phases) == ["steady", "drain", "kill"]
    steady = phases["steady"]
    assert steady["aggregate_tps"] > 0 and len(steady["balance"]) == 2
    assert all(abs(b - 4) <= 1 for b in steady["balance"]), steady["balance"]
    for name in ("drain", "kill"):
        p = phases[name]
        # nothing lost or repeated: on these models the edges never leave the trace, so
        # every committed token is checked against it
        assert p["lost"] == 0 and p["diverged"] == 0 and p["tokens"] > 0, p
        assert p["pre_tps"] is not None and p["min_tps"] is not None
    assert steady["lost"] == 0
    assert phases["drain"]["exit_status"] == 0  # the drained edge ended by itself, cleanly
    assert phases["kill"]["exit_status"] == -9
    assert (out / "fleet-edges.png").stat().st_size > 10_000
    assert data["rig"] in done.stdout
    return {"rig": data["rig"], **phases}


REAL_ARGS = ("--mode", "real", "--edges", "2", "--devices", "8", "--max-tokens", "40",
             "--phase-seconds", "6", "--drain-timeout", "0.8")


def test_bench_fleet_real_across_two_edges_on_loopback(
        tmp_path: Path, fixture_models: tuple[Path, Path]) -> None:
    """Two real edges on 127.0.0.1, 8 devices drafting four tokens a round (fixed: a leg of
    40 tokens takes them about 2 s, so the drain's moves, 0.6 s after it began, and the kill
    find sessions mid-prompt): balanced (4/4 +/- 1), sessions resumed on the other edge after
    both events, and no token lost: every device's committed tokens are the trace's, in
    order."""
    done = _fleet(tmp_path, fixture_models, *REAL_ARGS, "--policies", "fixed", "--loopback")
    phases = _check_real_run(done, tmp_path / "out")
    assert phases["rig"].startswith("loopback")
    assert phases["drain"]["moved"] >= 1 and phases["kill"]["moved"] >= 1, phases


def test_bench_fleet_real_across_two_edges_in_namespaces(
        tmp_path: Path, fixture_models: tuple[Path, Path]) -> None:
    """Gelato devices (the default) and two edges in network namespaces of their own (a veth
    pair each), as the rig runs edges: balanced, nothing lost; no namespace left behind."""
    from ondevice.bench._netns import NetnsUnavailable, check_available

    try:
        check_available()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    done = _fleet(tmp_path, fixture_models, *REAL_ARGS)
    phases = _check_real_run(done, tmp_path / "out")
    assert phases["rig"].startswith("2 network namespaces"), phases["rig"]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not re.search(r"coinfer-e\d+-", left), left
