"""The action planner (``ondevice/bench/action_plan.py``): its expectation against every
outcome enumerated, its optimum against a plain recursion over every action, the hindsight
oracle as its special case, and the calibration."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from ondevice.bench._hardware import CostModel, load_profile
from ondevice.bench.action_plan import (
    PENDING_MAX,
    STREAM_LENGTHS,
    calibrated_acceptance,
    leading_accepts,
    plan_actions,
    play,
    simulate_bayes_actions,
    simulate_oracle_actions,
)
from ondevice.bench.gelato_sim import acceptance_outcomes, policy_entropies
from ondevice.bench.trace import Trace, shipped_trace

CAP = 3


@pytest.fixture(scope="module")
def cost() -> CostModel:
    # a pair where drafting ahead fits (3 tokens in a round's wait) and streaming is close
    return CostModel(load_profile("jetson-orin-nano", "device"),  # type: ignore[arg-type]
                     load_profile("edge-gpu-32k", "edge"))  # type: ignore[arg-type]


def _expectimax(cost: CostModel, p: np.ndarray, cap: int) -> float:
    """The least expected seconds by a plain recursion over every action and every outcome,
    written apart from the planner (no shared continuation, no vectors)."""
    n_pos, pm = p.shape[0], PENDING_MAX
    r_max = max(min(cap, cost.ahead_fits(cap)) - 1, 0)

    @functools.cache
    def best(i: int, pend: int, ready: int) -> float:
        if i >= n_pos:
            return 0.0
        left = n_pos - i
        options = [cost.round(0, pend).round_s + best(i + 1, min(pend + 1, pm), 0)]
        for b in range(1, min(cap, left - 1) + 1):
            for k in (0, cap):
                rc = cost.round(b, pend, predrafted=min(ready, b), ahead=k)
                value = rc.round_s
                for j in range(b + 1):  # j accepted
                    q = float(np.prod(p[i:i + j])) * (1.0 - p[i + j] if j < b else 1.0)
                    if j < b:
                        value += q * best(i + j + 1, 1, 0)
                        continue
                    if rc.ahead and i + b < n_pos:
                        r = min(rc.ahead - 1, r_max)
                        value += q * p[i + b] * best(i + b + 1, 1, r)
                        value += q * (1.0 - p[i + b]) * best(i + b + 1, 2, 0)
                    else:
                        value += q * best(i + b + 1, 2, 0)
                options.append(value)
        for n in {s for s in STREAM_LENGTHS if s <= left} | {left}:
            options.append(cost.edge_only(n)[0] + best(i + n, min(pend + n, pm), 0))
        return min(options)

    return best(0, 1, 0)


def test_the_plan_is_the_least_expected_time_of_any_schedule(cost: CostModel) -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        p = rng.uniform(0.2, 0.98, size=9)
        plan = plan_actions(cost, p, cap=CAP)
        assert plan.expected_cost == pytest.approx(_expectimax(cost, p, CAP), rel=1e-12)


def test_the_expected_cost_is_what_playing_the_plan_costs_on_average(cost: CostModel) -> None:
    p = np.array([0.9, 0.3, 0.8, 0.95, 0.6, 0.85, 0.7, 0.99])
    plan = plan_actions(cost, p, cap=CAP)
    mean_s = 0.0
    for bits in itertools.product((False, True), repeat=p.shape[0]):
        outcome = np.array(bits)
        weight = float(np.prod(np.where(outcome, p, 1.0 - p)))
        t = play(plan, cost, outcome)
        assert t.tokens == p.shape[0]
        mean_s += weight * t.time_s
    assert mean_s == pytest.approx(plan.expected_cost, rel=1e-12)


def test_with_the_outcomes_for_probabilities_it_is_the_hindsight_optimum(cost: CostModel) -> None:
    rng = np.random.default_rng(5)
    for _ in range(4):
        outcome = rng.random(10) < 0.75
        plan = plan_actions(cost, outcome.astype(float), cap=CAP)
        t = play(plan, cost, outcome)
        assert t.time_s == pytest.approx(plan.expected_cost, rel=1e-12)
        assert t.time_s == pytest.approx(_expectimax(cost, outcome.astype(float), CAP),
                                         rel=1e-12)
        # no schedule of fixed draft lengths does better
        for gamma in range(0, CAP + 1):
            i, pend, s = 0, 1, 0.0
            while i < outcome.shape[0]:
                b = min(gamma, outcome.shape[0] - i - 1)
                acc = leading_accepts(outcome, i, b)
                s += cost.round(b, pend).round_s
                pend = min(pend + 1, PENDING_MAX) if b == 0 else (2 if acc == b else 1)
                i += acc + 1
            assert t.time_s <= s + 1e-12


def test_calibration_is_the_rate_of_each_class() -> None:
    rng = np.random.default_rng(0)
    ent = rng.exponential(1.0, 4000)
    top1 = rng.uniform(0.2, 1.0, 4000)
    accepts = rng.random(4000) < np.exp(-ent)  # acceptance falls with entropy
    p = calibrated_acceptance(ent, top1, accepts, bins=(4, 2))
    assert len(np.unique(p)) <= 8
    assert p.sum() == pytest.approx(accepts.sum())  # each class's rate: the totals agree
    low, high = ent < np.quantile(ent, 0.25), ent > np.quantile(ent, 0.75)
    assert p[low].mean() > 0.6 > 0.3 > p[high].mean()


def test_on_a_shipped_trace_bayes_sits_below_the_hindsight_oracle(
        cost: CostModel) -> None:
    trace = Trace.load(shipped_trace("facts"))
    accepts = acceptance_outcomes(trace, sampling=False)
    top1, _ = trace.features(False)
    oracle = simulate_oracle_actions(trace, cost, accepts)
    bayes, expected_s = simulate_bayes_actions(trace, cost, accepts,
                                               policy_entropies(trace, sampling=False), top1)
    assert oracle.tokens == bayes.tokens == trace.n_positions
    assert oracle.time_s < bayes.time_s
    assert 0.8 < expected_s / bayes.time_s < 1.25  # the expectation is about what it got
