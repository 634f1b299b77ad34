"""``ondevice bench gelato``: the simulator's accounting on hand-made traces, the oracles, the
report's equal-energy reading, the controller fixes the benchmark led to, and both modes end to
end (sim on a trace recorded here from the fixture models, real over loopback)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ondevice.bench import BenchConfig, BenchRow, CostModel, Trace, record_trace
from ondevice.bench._hardware import SESSION_ID, DeviceProfile, EdgeProfile, load_profile
from ondevice.bench.action_plan import (
    leading_accepts,
    simulate_oracle,
    simulate_oracle_actions,
    simulate_oracle_matches,
)
from ondevice.bench.gelato_sim import (
    acceptance_outcomes,
    run_sim_bench,
    simulate_policy,
)
from ondevice.bench.report import evaluate_targets, tps_at_energy
from ondevice.cli import main
from ondevice.common import wire
from ondevice.llm import gelato
from ondevice.llm.policies import FixedPolicy, GelatoPolicy, Policy, RoundStats, make_policy

# Round numbers so every cost can be checked by hand: ms, W, J. The radio is free and the link
# infinitely fast unless a test says otherwise.
DEVICE = DeviceProfile(
    name="hand", draft_ms_per_token=10.0, prefill_ms_per_token=2.0, draft_w=5.0, wait_w=2.0,
    tx_j_per_byte=0.0, tx_j_per_packet=0.0, rx_j_per_byte=0.0, rx_j_per_packet=0.0,
    uplink_mbit_s=math.inf, downlink_mbit_s=math.inf, rtt_ms=10.0,
)
EDGE = EdgeProfile(name="hand", verify_t0_ms=5.0, verify_ms_per_token=1.0)

# One prompt: accepted, accepted, rejected, accepted, accepted, accepted.
HAND = Trace.from_prompts([[0.1, 0.2, 3.0, 0.1, 0.1, 0.1]],
                          [[True, True, False, True, True, True]])


class Recorder(Policy):
    """A fixed budget that stops at entropy above ``h_stop``, remembering what it was told."""

    name = "recorder"
    needs_entropy = True

    def __init__(self, budget: int, h_stop: float = math.inf) -> None:
        self.budget, self.h_stop = budget, h_stop
        self.seen: list[RoundStats] = []

    def round_budget(self) -> int:
        return self.budget

    def keep_drafting(self, drafted: int, entropy_nats: float | None) -> bool:
        assert entropy_nats is not None
        return entropy_nats <= self.h_stop

    def observe(self, stats: RoundStats) -> None:
        self.seen.append(stats)


# -- the cost model -----------------------------------------------------------------------

def test_frame_bytes_are_the_wire_format() -> None:
    greedy = CostModel(DEVICE, EDGE, k=1)
    ids = np.full(3, 262_143, np.int32)
    frame = wire.encode(wire.Round(SESSION_ID, ids, ids.reshape(3, 1), np.ones((3, 1),
                                                                             np.float32)))
    assert greedy.round_frame_bytes(3) == len(frame)
    # ~12 bytes per drafted token at greedy (id, one q id, one q prob) ...
    assert greedy.round_frame_bytes(4) - greedy.round_frame_bytes(3) == 12
    # ... and 4 + 8k with the top-k distribution (k = 32) when sampling
    topk = CostModel(DEVICE, EDGE, k=32)
    assert topk.round_frame_bytes(3) - topk.round_frame_bytes(2) == 4 + 8 * 32


def test_round_costs_by_hand() -> None:
    cost = CostModel(DEVICE, EDGE)
    rc = cost.round(2, pending=3)
    assert rc.draft_s == pytest.approx(0.020 + 2 * 0.002)  # 2 tokens + 2 extra catch-up
    assert rc.verify_s == pytest.approx(0.005 + 3 * 0.001)  # 3 positions
    assert rc.net_s == pytest.approx(0.010)
    assert rc.round_s == pytest.approx(0.024 + 0.008 + 0.010)
    assert rc.energy_j == pytest.approx(5.0 * 0.024 + 2.0 * 0.018)
    assert rc.draft_energy_j == pytest.approx(5.0 * 0.024)
    nothing = cost.round(0, pending=7)  # drafting nothing evaluates nothing on the device
    assert nothing.draft_s == 0.0
    assert nothing.round_s == pytest.approx(0.010 + 0.006)


def test_radio_energy_per_byte_and_packet() -> None:
    radio = DeviceProfile(**{**_fields(DEVICE), "tx_j_per_byte": 1e-3, "tx_j_per_packet": 0.5,
                             "rx_j_per_byte": 1e-4, "rx_j_per_packet": 0.25})
    cost = CostModel(radio, EDGE)
    rc = cost.round(1)
    quiet = CostModel(DEVICE, EDGE).round(1)
    assert rc.energy_j - quiet.energy_j == pytest.approx(
        1e-3 * rc.tx_bytes + 0.5 + 1e-4 * rc.rx_bytes + 0.25)


def _fields(p: DeviceProfile) -> dict[str, Any]:
    return {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "sources"}


def test_device_and_edge_only_by_hand() -> None:
    cost = CostModel(DEVICE, EDGE)
    assert cost.device_only(6) == pytest.approx((0.060, 0.300))
    s, e = cost.edge_only(6)
    assert s == pytest.approx(0.010 + 6 * 0.006)  # one RTT, then one 1-position eval a token
    assert e == pytest.approx(2.0 * s)


# -- the round loop -----------------------------------------------------------------------

def test_fixed_policy_accounting_on_a_hand_made_trace() -> None:
    cost = CostModel(DEVICE, EDGE)
    t = simulate_policy(FixedPolicy(2), HAND, cost, HAND.match, HAND.entropy)
    # Round 1 drafts positions 0-1, both accepted: 3 tokens; round 2 drafts 3-4 (left - 1 = 2),
    # both accepted: 3 tokens. Round 2's draft first catches up on 2 tokens (the last drafted
    # and the bonus), one extra prefill token.
    r1 = 0.020 + 0.010 + 0.008
    r2 = 0.022 + 0.010 + 0.008
    assert (t.tokens, t.rounds, t.drafted, t.accepted) == (6, 2, 4, 4)
    assert t.time_s == pytest.approx(r1 + r2)
    assert t.energy_j == pytest.approx(5 * 0.020 + 2 * 0.018 + 5 * 0.022 + 2 * 0.018)


def test_policy_is_fed_the_trace_and_the_round() -> None:
    cost = CostModel(DEVICE, EDGE)
    rec = Recorder(budget=4, h_stop=1.0)
    t = simulate_policy(rec, HAND, cost, HAND.match, HAND.entropy)
    first = rec.seen[0]  # drafts 0, 1, 2 and stops after the 3.0-nat token: 2 accepted
    assert (first.drafted, first.accepted, first.produced) == (3, 2, 3)
    assert first.entropies == pytest.approx([0.1, 0.2, 3.0])
    assert first.catchup_tokens == 0
    assert first.round_s == pytest.approx(first.draft_s + 0.010 + first.verify_s)
    second = rec.seen[1]  # positions 3, 4 (capped at left - 1), both accepted
    assert (second.drafted, second.accepted, second.produced) == (2, 2, 3)
    assert second.catchup_tokens == 0  # round 1 ended on a rejection: nothing extra pending
    assert sum(s.produced for s in rec.seen) == t.tokens == 6


def test_undrafted_rounds_leave_catch_up_for_the_next_draft() -> None:
    cost = CostModel(DEVICE, EDGE)

    class Sometimes(Recorder):
        def round_budget(self) -> int:
            return 1 if len(self.seen) == 3 else 0

    rec = Sometimes(budget=0)
    simulate_policy(rec, HAND, cost, HAND.match, HAND.entropy)
    assert [s.drafted for s in rec.seen[:4]] == [0, 0, 0, 1]
    assert rec.seen[3].catchup_tokens == 3  # three tokens committed without the draft
    assert rec.seen[3].draft_s == pytest.approx(0.010 + 3 * 0.002)


def test_sampled_acceptances_are_shared_and_seeded() -> None:
    tr = Trace.from_prompts([[0.5] * 400], [[True] * 400], p_accept=[[0.7] * 400])
    a = acceptance_outcomes(tr, sampling=True, seed=3)
    assert np.array_equal(a, acceptance_outcomes(tr, sampling=True, seed=3))
    assert not np.array_equal(a, acceptance_outcomes(tr, sampling=True, seed=4))
    assert a.mean() == pytest.approx(0.7, abs=0.07)
    with pytest.raises(ValueError):
        acceptance_outcomes(HAND, sampling=True)


# -- the oracles --------------------------------------------------------------------------

def test_oracle_drafts_the_matches_when_drafting_is_cheap() -> None:
    t = simulate_oracle(HAND, CostModel(DEVICE, EDGE), HAND.match)
    assert (t.tokens, t.rounds, t.drafted, t.accepted) == (6, 2, 4, 4)
    m = simulate_oracle_matches(HAND, CostModel(DEVICE, EDGE), HAND.match)
    assert (m.tokens, m.rounds, m.drafted, m.accepted) == (6, 2, 4, 4)


def test_oracle_does_not_draft_when_drafting_never_pays() -> None:
    slow = DeviceProfile(**{**_fields(DEVICE), "draft_ms_per_token": 1000.0})
    cost = CostModel(slow, EDGE)
    t = simulate_oracle(HAND, cost, HAND.match)
    assert (t.tokens, t.rounds, t.drafted) == (6, 6, 0)
    # the matches-only oracle drafts anyway and is slower
    assert simulate_oracle_matches(HAND, cost, HAND.match).time_s > t.time_s


def test_oracle_bounds_every_policy(fixture_trace: Trace) -> None:
    cost = CostModel(load_profile("jetson-orin-nano", "device"),  # type: ignore[arg-type]
                     load_profile("edge-gpu-32k", "edge"))  # type: ignore[arg-type]
    acc = fixture_trace.match
    best = simulate_oracle(fixture_trace, cost, acc)
    for name in ("gelato", "fixed", "adaedl", "hf-heuristic"):
        t = simulate_policy(make_policy(name), fixture_trace, cost, acc, fixture_trace.entropy)
        assert t.tokens == best.tokens
        assert t.time_s >= best.time_s * (1 - 1e-9), name
    assert leading_accepts(acc, 0, 0) == 0


# -- reading at equal energy ----------------------------------------------------------------

def _row(label: str, tps: float, jpt: float, group: str = "baseline") -> BenchRow:
    return BenchRow(policy=label, group=group, tokens=100, time_s=100 / tps, energy_j=100 * jpt)


def test_tps_at_energy_mixes_runs_linearly_in_seconds_per_token() -> None:
    rows = [_row("a", 10.0, 0.1), _row("b", 20.0, 0.3)]
    # Half the tokens each: 0.2 J/token and (0.1 + 0.05) / 2 s/token.
    assert tps_at_energy(rows, 0.2) == pytest.approx(1 / 0.075)
    assert tps_at_energy(rows, 0.5) == pytest.approx(20.0)
    assert tps_at_energy(rows, 0.05) is None


def test_targets_read_from_the_rows() -> None:
    rows = [_row("fixed-4", 10.0, 0.3), _row("adaedl", 11.0, 0.25), _row("hf-heuristic", 9.0, 0.3),
            _row("gelato", 14.0, 0.2, "gelato"), _row("oracle", 15.0, 0.2, "oracle")]
    t = evaluate_targets(rows)
    assert t["gelato_vs_fixed-4"]["ratio"] == pytest.approx(1.4)
    assert t["gelato_vs_fixed-4"]["met"]
    assert t["gelato_vs_oracle"]["ratio"] == pytest.approx(14 / 15)
    assert t["gelato_vs_oracle"]["met"]


# -- controller fixes the benchmark led to ------------------------------------------------

def test_inner_rule_counts_the_allowance_a_token_earns() -> None:
    model = gelato.RoundModel(a=0.8, t_draft_s=0.01, t_net_s=0.01, t_verify0_s=0.01,
                              t_verify_per_token_s=0.0, e_draft_j=0.1, p_wait_w=2.0)
    plan = gelato.Plan(rho=10.0, h=np.zeros(1), b=np.zeros(1, np.int64),
                       k=np.zeros(1, np.int64), ahead_k=np.zeros(17, np.int64),
                       tokens_per_s=0.0)

    def keep(budget: gelato.Budget | None) -> bool:
        return gelato.plan_keeps_drafting(plan, model, drafted=1, survival=1.0, a_next=0.5,
                                          free=False, v=1.0, q_j=10.0, budget=budget)

    # V S a = 0.5; Q e = 1.0; rho t = 0.1: not worth it without a budget's allowance
    assert not keep(None)
    # eps = 0.2 J/token: the token's expected 0.5 tokens earn 0.1 J, which pays its energy
    assert keep(gelato.Budget(j_per_token=0.2))
    # P = 5 W: 0.01 s earns 0.05 J -> 0.5 - 10 * 0.05 - 0.1 < 0; P = 8 W: 0.5 - 0.2 - 0.1 > 0
    assert not keep(gelato.Budget(power_w=5.0))
    assert keep(gelato.Budget(power_w=8.0))


def test_catch_up_does_not_price_drafted_tokens() -> None:
    est = gelato.Estimates()
    kw = dict(drafted=1, accepted=1, rtt_s=0.04, verify_s=0.03, round_s=0.5, energy_j=2.0)
    est.observe(**kw, draft_s=0.01, draft_energy_j=0.05)
    t_draft, e_draft = est.t_draft_s.value, est.e_draft_j.value
    est.observe(**kw, draft_s=0.40, draft_energy_j=2.0, catchup_tokens=30)
    assert (est.t_draft_s.value, est.e_draft_j.value) == (t_draft, e_draft)
    est.observe(**kw, draft_s=0.012, draft_energy_j=0.06, catchup_tokens=1)
    assert est.t_draft_s.value != t_draft


def test_no_probing_when_drafting_cannot_pay() -> None:
    def world(policy: GelatoPolicy, draft_s: float, rounds: int) -> list[int]:
        budgets = []
        for _ in range(rounds):
            b = policy.round_budget()
            budgets.append(b)
            n = 0
            for j in range(b):
                n += 1
                if not policy.keep_drafting(j + 1, 0.1):
                    break
            policy.observe(RoundStats(
                drafted=n, accepted=n, produced=n + 1, draft_s=n * draft_s, rtt_s=0.016,
                verify_s=0.006, round_s=n * draft_s + 0.016, energy_j=n * draft_s * 5 + 0.03,
                draft_energy_j=n * draft_s * 5, entropies=[0.1] * n))
        return budgets

    # A draft token costs more time than the edge takes per token: even perfect acceptance
    # cannot pay, so once its first rounds measured drafting GELATO never drafts again.
    slow = world(GelatoPolicy(), 0.030, 80)
    first = GelatoPolicy.FIRST_ROUNDS
    assert all(b >= GelatoPolicy.EXPLORE_MIN for b in slow[:1]) and sum(slow[first:]) == 0
    # A cheap draft with perfect acceptance is worth drafting, round after round.
    fast = world(GelatoPolicy(), 0.002, 80)
    assert all(b > 0 for b in fast[first:])


def test_draft_budget_zero_evaluates_nothing(fixture_models: tuple[Path, Path]) -> None:
    from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner
    from ondevice.llm.draft import DraftStream

    with LlamaModel(fixture_models[1]) as model, \
            LlamaRunner(model, LlamaConfig(n_ctx=256, n_threads=1)) as runner:
        stream = DraftStream(runner, model.tokenize("Hello world"), temperature=0.0, top_k=1,
                             seed=0)
        d = stream.draft(2, lambda j, h: True, want_entropy=False, is_eog=lambda t: False)
        stream.commit([*d.ids.tolist(), 5])  # all accepted and a bonus token
        cached = list(runner.tokens)
        empty = stream.draft(0, lambda j, h: True, want_entropy=False, is_eog=lambda t: False)
        assert empty.ids.shape == (0,) and empty.draft_s == 0.0
        assert runner.tokens == cached
        stream.commit([7, 9])  # two rounds that drafted nothing
        d = stream.draft(1, lambda j, h: True, want_entropy=False, is_eog=lambda t: False)
        # pending: the last drafted token, the bonus, 7 and 9: 3 beyond the one drafted from
        assert d.catchup_tokens == 3


# -- the CLI ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fixture_trace(fixture_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
                  ) -> Trace:
    """A short greedy-and-sampled trace of the fixture pair, recorded once."""
    target, draft = fixture_models
    from ondevice.bench.trace import DEFAULT_PROMPTS

    trace = record_trace(target, draft, DEFAULT_PROMPTS[:4], max_tokens=48, temperature=0.8)
    path = tmp_path_factory.mktemp("trace") / "fixture.npz"
    trace.save(path)
    loaded = Trace.load(path)
    assert np.array_equal(loaded.match, trace.match) and loaded.meta == {**trace.meta,
                                                                         "version": 1}
    return loaded


def test_record_trace(fixture_trace: Trace) -> None:
    assert fixture_trace.n_prompts == 4
    assert fixture_trace.n_positions == 4 * 48
    assert 0.3 < fixture_trace.greedy_acceptance() < 0.95  # about 0.6 by construction
    assert fixture_trace.p_accept is not None
    assert np.all((fixture_trace.p_accept >= 0) & (fixture_trace.p_accept <= 1 + 1e-6))
    assert np.all(fixture_trace.entropy >= 0)
    assert fixture_trace.meta["vocab_hash"]


def _check_outputs(json_path: Path, out: str) -> dict:
    data = json.loads(json_path.read_text())
    assert json_path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = {r["policy"] for r in data["rows"]}
    assert {"gelato", "fixed-1", "fixed-2", "fixed-4", "fixed-8", "adaedl", "hf-heuristic",
            "device-only", "edge-only"} <= labels
    assert any(r["group"] == "gelato-sweep" for r in data["rows"])
    for head in ("tok/s", "J/tok", "mean W", "accept", "drafted", "budget", "met"):
        assert head in out
    assert "gelato vs fixed-4 at equal J/token" in out
    return data


def test_cli_sim_records_and_simulates(fixture_models: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    target, draft = fixture_models
    trace = tmp_path / "t.npz"
    rc = main(["bench", "gelato", "--record-trace", str(trace), "--target", str(target),
               "--draft", str(draft), "--n-prompts", "3", "--max-tokens", "40", "--mode", "sim",
               "--profile", "jetson-orin-nano", "--edge-profile", "edge-gpu-32k",
               "--repeat", "2", "--V-sweep", "0.5,2,8", "--out", str(tmp_path / "out"),
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    data = _check_outputs(tmp_path / "out" / "gelato-sim-jetson-orin-nano+edge-gpu-32k.json",
                          out)
    assert "oracle" in {r["policy"] for r in data["rows"]}
    assert "gelato vs hindsight oracle" in out and "Brier prior" in out
    assert data["meta"]["device_params"]["draft_ms_per_token"]["source"]
    tokens = {r["tokens"] for r in data["rows"]}
    assert tokens == {2 * 3 * 40}  # every run produced the same tokens


def test_cli_real_over_loopback(fixture_models: tuple[Path, Path], tmp_path: Path) -> None:
    target, draft = fixture_models
    proc = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "bench", "gelato", "--mode", "real",
         "--target", str(target), "--draft", str(draft), "--n-prompts", "2",
         "--max-tokens", "64", "--V-sweep", "1,4", "--out", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = _check_outputs(tmp_path / "gelato-real.json", proc.stdout)
    assert all(r["tokens"] == 2 * 64 for r in data["rows"])
    assert all(r["energy_source"] == "modelled" for r in data["rows"])
    assert all(r["settings"]["degraded_generations"] == 0 for r in data["rows"])
    # Temperature 0: every lossless policy's text is the target's greedy text, but where the
    # edge saw a near-tie (which llama.cpp's batch shape may flip); all are counted.
    agreement = data["meta"]["greedy_vs_edge_only"]
    assert agreement and "device-only" not in agreement
    for label, a in agreement.items():
        assert a["compared"] == 2 and a["differ_without_near_tie"] == 0, (label, a)
    assert all(isinstance(r["settings"]["near_ties"], int) for r in data["rows"]
               if r["policy"] != "device-only")
    assert "greedy text vs edge-only" in proc.stdout


def test_sim_bench_budget_runs(fixture_trace: Trace) -> None:
    cost = CostModel(load_profile("jetson-orin-nano", "device"),  # type: ignore[arg-type]
                     load_profile("edge-gpu-32k", "edge"))  # type: ignore[arg-type]
    cfg = BenchConfig(v_sweep=(1.0, 4.0), power_budget_w=3.0, reference=False)
    bench = run_sim_bench(fixture_trace, cost, cfg, repeat=1)
    sweep = [r for r in bench.rows if r.group == "gelato-sweep"]
    assert [r.budget_w for r in sweep] == [3.0, 3.0]
    assert bench.info["auto_budget"] is False


# -- issue 14: drafting ahead, the oracle over every action, the shipped trace ---------------

def test_drafting_ahead_by_hand() -> None:
    """A round of 2 with 3 tokens asked ahead: its wait (10 ms net + 8 ms verify) fits one
    10 ms draft, so one is drafted, at 5 W instead of 2 W; the round's time is unchanged. The
    next round's predrafted tokens cost no draft time and no catch-up."""
    cost = CostModel(DEVICE, EDGE)
    plain, ahead = cost.round(2), cost.round(2, ahead=3)
    assert ahead.ahead == 1 and cost.ahead_fits(2) == 1
    assert ahead.round_s == pytest.approx(plain.round_s)
    assert ahead.energy_j - plain.energy_j == pytest.approx(0.010 * (5.0 - 2.0))
    assert ahead.ahead_energy_j == pytest.approx(0.010 * 5.0)
    nxt = cost.round(3, pending=2, predrafted=2)
    assert nxt.draft_s == pytest.approx(0.010)  # one fresh token, no catch-up


def test_simulated_hits_head_the_next_round() -> None:
    """Fixed 2 with 1 ahead on HAND (accept, accept, reject, accept x3), a slow edge so the
    token fits: round 1 drafts positions 0-1 (both accepted) and bets on position 2, which is
    rejected: no hit. Round 2 from position 3 drafts 3-4 (accepted) and bets on position 5,
    the edge's own last token, which matches: a hit (with nothing left to head). On a trace
    with no rejection the first round hits and the second starts predrafted."""
    slow_edge = EdgeProfile(name="slow", verify_t0_ms=50.0, verify_ms_per_token=1.0)
    cost = CostModel(DEVICE, slow_edge)
    seen: list[RoundStats] = []

    class Watch(FixedPolicy):
        def observe(self, stats: RoundStats) -> None:
            seen.append(stats)

    simulate_policy(Watch(2, ahead=1), HAND, cost, HAND.match, HAND.entropy)
    assert [s.ahead_hit for s in seen] == [False, True]
    good = Trace.from_prompts([[0.1] * 7], [[True] * 7])
    seen.clear()
    t = simulate_policy(Watch(2, ahead=3), good, cost, good.match, good.entropy)
    assert seen[0].ahead == 3 and seen[0].ahead_hit
    assert seen[1].predrafted == 2 and seen[1].draft_s == pytest.approx(0.0)
    assert t.tokens == 7


def test_oracle_over_every_action_bounds_every_policy_and_the_old_oracle(
        fixture_trace: Trace) -> None:
    from ondevice.llm.policies import EdgeOnlyPolicy

    for dev, edge in (("rpi5", "edge-gpu"), ("jetson-orin-nano", "edge-gpu-32k")):
        cost = CostModel(load_profile(dev, "device"),  # type: ignore[arg-type]
                         load_profile(edge, "edge"))  # type: ignore[arg-type]
        acc = fixture_trace.match
        best = simulate_oracle_actions(fixture_trace, cost, acc)
        assert best.tokens == fixture_trace.n_positions
        old = simulate_oracle(fixture_trace, cost, acc)
        assert best.time_s <= old.time_s * (1 + 1e-9)
        for policy in (GelatoPolicy(), FixedPolicy(4, ahead=8), EdgeOnlyPolicy()):
            t = simulate_policy(policy, fixture_trace, cost, acc, fixture_trace.entropy,
                                features=fixture_trace.features(False))
            assert t.time_s >= best.time_s * (1 - 1e-9), (dev, edge, policy.name)


def test_gelato_drafts_ahead_where_the_wait_is_long(fixture_trace: Trace) -> None:
    """On a Jetson with the 32k-context edge a round waits several draft tokens' time:
    unconstrained gelato drafts ahead and hits; fixed 4 with 8 ahead beats fixed 4."""
    cost = CostModel(load_profile("jetson-orin-nano", "device"),  # type: ignore[arg-type]
                     load_profile("edge-gpu-32k", "edge"))  # type: ignore[arg-type]
    acc, ent = fixture_trace.match, fixture_trace.entropy
    g = GelatoPolicy(stream=False)
    simulate_policy(g, fixture_trace, cost, acc, ent, repeat=4,
                    features=fixture_trace.features(False))
    assert g.ahead_drafted > 0 and g.ahead_hits > 0
    plain = simulate_policy(FixedPolicy(4), fixture_trace, cost, acc, ent)
    ahead = simulate_policy(FixedPolicy(4, ahead=8), fixture_trace, cost, acc, ent)
    assert ahead.tokens == plain.tokens and ahead.time_s < plain.time_s


def test_never_beaten_and_the_all_actions_oracle_are_targets() -> None:
    rows = [_row("fixed-4", 10.0, 0.3), _row("edge-only", 12.0, 0.1),
            _row("gelato", 14.0, 0.2, "gelato"), _row("gelato @edge-only", 12.5, 0.1,
                                                      "gelato-matched"),
            _row("oracle (all actions)", 15.0, 0.2, "oracle-actions")]
    rows[3].budget_j_per_token = 0.1
    t = evaluate_targets(rows)
    assert t["never_beaten"]["ratio_at_equal_energy"]["edge-only"] == pytest.approx(12.5 / 12)
    assert t["never_beaten"]["met"]
    assert t["gelato_vs_oracle_actions"]["ratio"] == pytest.approx(14 / 15)
    slower = [*rows[:3], _row("gelato @edge-only", 11.0, 0.1, "gelato-matched"), rows[4]]
    slower[3].budget_j_per_token = 0.1
    assert not evaluate_targets(slower)["never_beaten"]["met"]


def test_the_shipped_traces() -> None:
    """Five shipped traces from distinct prompt sets, each recorded from its set's prompts by
    the project's own recorder: the tuning set (the 10 built-in prompts) and four held-out
    sets of 8 prompts x 128 tokens, greedy and T = 0.8 (features at both)."""
    from ondevice.bench.trace import PROMPT_SETS, TUNING_SET, prompt_set, shipped_traces

    traces = shipped_traces()
    assert list(traces) == list(PROMPT_SETS) and TUNING_SET == "mixed"
    seen: set[str] = set()
    for name, path in traces.items():
        assert path.is_file() and path.stat().st_size < 300_000, name
        trace = Trace.load(path)
        assert trace.meta["target"].startswith("gemma-3-270m")
        assert tuple(trace.meta["prompts"]) == prompt_set(name)
        assert not seen & set(trace.meta["prompts"]), f"{name} repeats another set's prompt"
        seen |= set(trace.meta["prompts"])
        assert trace.features(False) is not None and trace.features(True) is not None
        assert trace.p_accept is not None and trace.temperature == pytest.approx(0.8)
        assert 0.5 < trace.greedy_acceptance() < 1.0
        lengths = np.diff(trace.offsets)
        if name == TUNING_SET:
            assert trace.n_prompts == 10
        else:
            assert trace.n_prompts >= 8 and (lengths == 128).sum() >= 8, (name, lengths)


def _strict_json(text: str) -> object:
    def no(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=no)


def test_cli_sim_without_a_trace_replays_every_shipped_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "gelato", "--mode", "sim", "--profile", "rpi5", "--edge-profile",
               "edge-gpu", "--repeat", "1", "--V-sweep", "2", "--out", str(tmp_path),
               "--no-progress", "--jobs", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "replaying the traces shipped with coinfer" in out
    assert "tuned on 'mixed' only" in out and "mixed*" in out
    data = _strict_json((tmp_path / "gelato-heldout.json").read_text())
    assert isinstance(data, dict)
    assert [c["trace"] for c in data["cells"]] == ["mixed", "stories", "instructions", "code",
                                                   "facts"]
    for cell in data["cells"]:
        labels = {r["policy"] for r in cell["rows"]}
        assert {"gelato", "fixed-4", "edge-only", "oracle (all actions)"} <= labels
        assert cell["verdict"]["regime"] in ("paper", "streaming")
        assert cell["tuning_set"] == (cell["trace"] == "mixed")
    assert (tmp_path / "gelato-heldout-rpi5+edge-gpu.png").stat().st_size > 10_000
    assert "paper: vs best SD" in (tmp_path / "gelato-heldout.txt").read_text()


def test_cli_sim_one_pair_one_trace_in_full(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "gelato", "--mode", "sim", "--profile", "rpi5", "--edge-profile",
               "edge-gpu", "--trace", "code", "--repeat", "1", "--V-sweep", "2",
               "--policies", "gelato,fixed,edge-only", "--gammas", "4", "--out",
               str(tmp_path), "--no-progress", "--acceptance", "0.7"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "entropy+top1+margin+position+running" in out
    assert "thinned to acceptance 0.7" in out
    data = json.loads((tmp_path / "gelato-sim-rpi5+edge-gpu.json").read_text())
    assert {m["features"] for m in data["meta"]["acceptance_models"]} >= {"entropy-bins",
                                                                          "adaedl"}
    assert "oracle (all actions)" in {r["policy"] for r in data["rows"]}
    assert data["meta"]["acceptance"] == 0.7
