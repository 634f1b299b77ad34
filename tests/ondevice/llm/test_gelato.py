"""GELATO's controller: hand-computed cases, estimator convergence, and long synthetic runs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from _edge import EdgeProc, Reference

from ondevice.common.llama_runtime import LlamaConfig
from ondevice.llm import gelato
from ondevice.llm.acceptance import AcceptanceModel
from ondevice.llm.gelato import (
    Budget,
    RoundModel,
    choose_budget,
    expected_tokens,
    queue_update,
)
from ondevice.llm.generate import GenerateRequest, generate
from ondevice.llm.policies import (
    AdaEdlPolicy,
    FixedPolicy,
    GelatoPolicy,
    HfHeuristicPolicy,
    Policy,
    RoundStats,
)

MODEL = RoundModel(a=0.8, t_draft_s=0.02, t_net_s=0.01, t_verify0_s=0.03,
                   t_verify_per_token_s=0.0, e_draft_j=0.1, p_wait_w=2.0)


def test_expected_tokens() -> None:
    assert expected_tokens(0.5, 0) == 1.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens(1.0, 3) == 4.0
    assert expected_tokens(0.0, 5) == 1.0


def test_queue_update() -> None:
    assert queue_update(0.0, 2.0, 1.5) == pytest.approx(0.5)
    assert queue_update(0.5, 1.0, 3.0) == 0.0
    assert queue_update(4.0, 1.0, 1.0) == 4.0


def test_choose_budget_without_constraint_maximizes_throughput() -> None:
    # N(b)/T(b) with a = 0.8, T(b) = 0.04 + 0.02 b, by hand:
    ratios = [expected_tokens(0.8, b) / (0.04 + 0.02 * b) for b in range(9)]
    best = int(np.argmax(ratios))
    b, score = choose_budget(MODEL, q_j=0.0, v=1.0, budget=None, cap=8)
    assert b == best == 2  # 2.44 / 0.08 = 30.5 beats b = 1 (30.0) and b = 3 (29.5)
    assert score == pytest.approx(ratios[2])


def test_choose_budget_backs_off_when_the_queue_grows() -> None:
    budget = Budget(power_w=2.5)
    b0, _ = choose_budget(MODEL, q_j=0.0, v=1.0, budget=budget, cap=8)
    b1, _ = choose_budget(MODEL, q_j=5.0, v=1.0, budget=budget, cap=8)
    b2, _ = choose_budget(MODEL, q_j=50.0, v=1.0, budget=budget, cap=8)
    assert b0 >= b1 >= b2 and b2 == 0
    # Hand check of one objective value: b = 2, Q = 5, V = 1.
    t = 0.04 + 0.04
    e = 2 * 0.1 + (t - 0.04) * 2.0
    want = (1.0 * expected_tokens(0.8, 2) - 5.0 * (e - 2.5 * t)) / t
    m = MODEL
    got = (1.0 * expected_tokens(m.a, 2) - 5.0 * (m.energy_j(2) - budget.allowance_j(
        m.time_s(2), expected_tokens(m.a, 2)))) / m.time_s(2)
    assert got == pytest.approx(want)


def test_energy_per_token_budget_allowance() -> None:
    assert Budget(j_per_token=0.2).allowance_j(10.0, 3.0) == pytest.approx(0.6)
    assert Budget(power_w=4.0).allowance_j(0.5, 99.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        Budget()
    with pytest.raises(ValueError):
        Budget(power_w=1.0, j_per_token=1.0)


def no_ahead_plan(rho: float) -> gelato.Plan:
    """A plan whose value per second is ``rho`` and that never drafts ahead (h = 0): the
    inner rule is then the paper's."""
    return gelato.Plan(rho=rho, h=np.zeros(1), b=np.zeros(1, np.int64),
                       k=np.zeros(1, np.int64), ahead_k=np.zeros(17, np.int64),
                       tokens_per_s=0.0)


def inner_rule(*, v: float, q_j: float, score: float, survival: float, a_next: float,
               e_draft_j: float, t_draft_s: float, budget: Budget | None = None) -> bool:
    model = RoundModel(a=0.8, t_draft_s=t_draft_s, t_net_s=0.01, t_verify0_s=0.01,
                       t_verify_per_token_s=0.0, e_draft_j=e_draft_j, p_wait_w=2.0)
    return gelato.plan_keeps_drafting(no_ahead_plan(score), model, drafted=1,
                                      survival=survival, a_next=a_next, free=False, v=v,
                                      q_j=q_j, budget=budget)


def test_inner_rule_marginal_value() -> None:
    common = dict(e_draft_j=0.1, t_draft_s=0.02)
    # V S a = 1 * 0.9 * 0.9 = 0.81 > Q e + score t = 1 * 0.1 + 10 * 0.02 = 0.3
    assert inner_rule(v=1.0, q_j=1.0, score=10.0, survival=0.9, a_next=0.9, **common)
    # 0.81 * 0.3 = 0.243 < 0.3
    assert not inner_rule(v=1.0, q_j=1.0, score=10.0, survival=0.27, a_next=0.9, **common)
    # With an empty queue only time matters.
    assert inner_rule(v=1.0, q_j=0.0, score=10.0, survival=0.3, a_next=0.9, **common)


def test_inner_rule_weighs_the_bet_of_drafting_ahead() -> None:
    """A longer round fits more ahead but is less likely to pass whole: with tokens ready
    worth h, the lookahead adds S a' (a h(k' - 1) - h(k - 1)), so one more token that is
    barely worth its time alone is not drafted when sending now keeps a valuable bet."""
    model = RoundModel(a=0.8, t_draft_s=0.01, t_net_s=0.01, t_verify0_s=0.02,
                       t_verify_per_token_s=0.0, e_draft_j=0.05, p_wait_w=2.0)
    plain = no_ahead_plan(50.0)
    ahead = gelato.Plan(rho=50.0, h=np.array([0.0, 1.0, 2.0]), b=np.ones(3, np.int64),
                        k=np.full(3, 3, np.int64), ahead_k=np.full(17, 3, np.int64),
                        tokens_per_s=0.0)
    # V S a' = 2 * 0.9 * 0.4 = 0.72 > rho t = 0.5: worth it alone ...
    kw = dict(drafted=1, survival=0.9, a_next=0.4, free=False, v=2.0, q_j=0.0, budget=None)
    assert gelato.plan_keeps_drafting(plain, model, **kw)  # type: ignore[arg-type]
    # ... but it lowers the bet: 0.36 (0.8 * 2 - 2) = -0.144 -> 0.72 - 0.5 - 0.144 > 0 still;
    # with h(2) = 4 it is 0.36 (3.2 - 4) = -0.288 and the round is sent now.
    assert gelato.plan_keeps_drafting(ahead, model, **kw)  # type: ignore[arg-type]
    dearer = dataclasses.replace(ahead, h=np.array([0.0, 2.0, 4.0]))
    assert not gelato.plan_keeps_drafting(dearer, model, **kw)  # type: ignore[arg-type]


def test_acceptance_model_learns_from_outcomes() -> None:
    model = AcceptanceModel()
    first_bin_center = model.edges[1] / 2
    assert model.predict(0.0) == pytest.approx(gelato.adaedl_bound(first_bin_center))
    rng = np.random.default_rng(2)
    true = lambda h: 0.9 * math.exp(-h / 3)  # noqa: E731
    for _ in range(20000):
        h = float(rng.uniform(0, 6))
        model.observe(h, bool(rng.random() < true(h)))
    for h in (0.5, 2.0, 4.0):
        assert model.predict(h) == pytest.approx(true(h), abs=0.06)
    prior_mse, learned_mse = model.brier()
    assert learned_mse < prior_mse
    # Round bookkeeping: two accepted, the third rejected, the fourth never judged.
    m2 = AcceptanceModel(prior_count=0.0001)
    m2.observe_round([0.1, 0.1, 3.0, 5.0], n_accepted=2)
    assert m2.seen.sum() == 3
    assert m2.predict(0.1) == pytest.approx(gelato.A_MAX)
    assert m2.predict(3.0) == pytest.approx(gelato.A_MIN)


class _World:
    """A synthetic device and edge: per-token entropies and acceptances, fixed costs."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.t_draft, self.p_draft, self.p_wait = 0.02, 4.0, 2.5
        self.t_rt = 0.06  # network + verify

    def token(self) -> tuple[float, bool]:
        h = float(self.rng.gamma(2.0, 0.6))
        return h, bool(self.rng.random() < 0.95 * math.exp(-h / 2.5))

    def run(self, policy: Policy, rounds: int) -> tuple[float, float, int]:
        energy = time = 0.0
        tokens = 0
        for _ in range(rounds):
            cap = policy.round_budget()
            ents, oks = [], []
            for j in range(cap):
                h, ok = self.token()
                ents.append(h)
                oks.append(ok)
                if not policy.keep_drafting(j + 1, h):
                    break
            n = len(ents)
            acc = next((i for i, ok in enumerate(oks) if not ok), n)
            t_d = n * self.t_draft
            e_d = t_d * self.p_draft
            t = t_d + self.t_rt
            e = e_d + self.t_rt * self.p_wait
            policy.observe(RoundStats(drafted=n, accepted=acc, produced=acc + 1, draft_s=t_d,
                                      rtt_s=self.t_rt, verify_s=0.03, round_s=t, energy_j=e,
                                      draft_energy_j=e_d, entropies=ents))
            energy, time, tokens = energy + e, time + t, tokens + acc + 1
        return energy, time, tokens


def _fixed_extremes(rounds: int = 1500) -> tuple[float, float]:
    """The lowest power and the lowest J/token any fixed drafting length reaches here."""
    watts, jpt = [], []
    for b in range(0, 9):
        policy = FixedPolicy(b) if b else _NoDraft()
        e, t, n = _World(30 + b).run(policy, rounds)
        watts.append(e / t)
        jpt.append(e / n)
    return min(watts), min(jpt)


class _NoDraft(FixedPolicy):
    def __init__(self) -> None:
        self.gamma = 0


def test_binding_power_budget_is_met_in_the_long_run() -> None:
    free_e, free_t, _ = _World(3).run(GelatoPolicy(v=2.0), 3000)
    free_w = free_e / free_t
    floor_w, _ = _fixed_extremes()
    assert floor_w < free_w
    budget_w = floor_w + 0.5 * (free_w - floor_w)  # feasible, and binding
    policy = GelatoPolicy(v=2.0, budget=Budget(power_w=budget_w))
    e, t, _ = _World(4).run(policy, 6000)
    assert e / t == pytest.approx(budget_w, rel=0.03)
    assert policy.q_j > 0.0


def test_slack_budget_leaves_the_queue_empty_and_throughput_unchanged() -> None:
    free = GelatoPolicy(v=2.0)
    e0, t0, n0 = _World(5).run(free, 3000)
    slack = GelatoPolicy(v=2.0, budget=Budget(power_w=2 * e0 / t0))
    _, t1, n1 = _World(5).run(slack, 3000)
    assert slack.q_j == 0.0
    assert n1 / t1 == pytest.approx(n0 / t0, rel=0.02)


def test_energy_per_token_budget_is_met() -> None:
    e0, _, n0 = _World(6).run(GelatoPolicy(v=2.0), 3000)
    _, floor_jpt = _fixed_extremes()
    assert floor_jpt < e0 / n0
    target = floor_jpt + 0.5 * (e0 / n0 - floor_jpt)
    policy = GelatoPolicy(v=2.0, budget=Budget(j_per_token=target))
    e, _, n = _World(7).run(policy, 6000)
    assert e / n == pytest.approx(target, rel=0.03)


def test_larger_v_trades_energy_for_speed() -> None:
    rates, powers = [], []
    for v in (0.25, 2.0, 16.0):
        budget = Budget(power_w=4.0)
        e, t, n = _World(8).run(GelatoPolicy(v=v, budget=budget), 3000)
        rates.append(n / t)
        powers.append(e / t)
    assert rates[0] <= rates[1] <= rates[2]
    assert powers[0] <= powers[1] <= powers[2]


@pytest.mark.parametrize(
    "make", [lambda: GelatoPolicy(), AdaEdlPolicy, HfHeuristicPolicy],
    ids=["gelato", "adaedl", "hf-heuristic"],
)
async def test_control_changes_speed_never_text(
    make, fixture_models: tuple[Path, Path], edge: EdgeProc  # type: ignore[no-untyped-def]
) -> None:
    ref = Reference(fixture_models[0])
    try:
        for prompt in ("The river", "A computer does"):
            report = await generate(str(fixture_models[1]),
                                    GenerateRequest(prompt=prompt, max_tokens=48), make(),
                                    edge_url=edge.url, llama_config=LlamaConfig(n_ctx=512,
                                                                                n_threads=1))
            assert report.tokens == ref.greedy(prompt, 48), prompt
            assert not report.degraded
    finally:
        ref.close()


def test_edge_load_moves_the_budget() -> None:
    """Issue 12: rounds that report a busy edge (long queueing, others' tokens in the decode)
    make a round's fixed cost larger, and the outer loop answers with longer drafts; rounds
    from an edge that reports nothing keep the old model (batch = own tokens, no queue)."""
    from ondevice.llm.policies import GelatoPolicy, RoundStats

    def feed(policy: GelatoPolicy, *, queue_s: float | None, others: int | None) -> int:
        for _ in range(60):
            b = policy.round_budget()
            n = max(b, 1)
            accepted = n - 1  # acceptance ~ (n-1)/n: drafting pays
            verify_s = 0.01 + 0.001 * (n + 1 + (others or 0))
            wait = queue_s or 0.0
            round_s = n * 0.02 + 0.005 + verify_s + wait
            policy.observe(RoundStats(
                drafted=n, accepted=accepted, produced=accepted + 1, draft_s=n * 0.02,
                rtt_s=round_s - n * 0.02, verify_s=verify_s, round_s=round_s,
                energy_j=round_s * 3.0, draft_energy_j=n * 0.02 * 5.0, entropies=[0.3] * n,
                queue_s=queue_s, batch_tokens=None if others is None else n + 1 + others))
        return gelato.choose_budget(policy.est.model(), 0.0, policy.v, None, policy.cap)[0]

    quiet = feed(GelatoPolicy(), queue_s=None, others=None)
    busy = feed(GelatoPolicy(), queue_s=0.15, others=60)
    model = GelatoPolicy()
    feed(model, queue_s=0.15, others=60)
    m = model.est.model()
    assert m.t_queue_s == pytest.approx(0.15, rel=0.05) and m.others_tokens > 50
    assert busy > quiet


# -- the round plan with drafting ahead ---------------------------------------------------

def _stationary_ratio(model: RoundModel, q_j: float, v: float, budget: Budget | None,
                      cap: int, actions: dict[int, tuple[int, int]]) -> float:
    """Naive reference: the long-run value per second of one stationary plan (state r ->
    (b, k)), from the stationary law of the chain it induces (renewal reward)."""
    states = sorted(actions)
    idx = {s: i for i, s in enumerate(states)}
    n = len(states)
    p = np.zeros((n, n))
    reward, time = np.zeros(n), np.zeros(n)
    for s, (b, k) in actions.items():
        wait = (model.t_net_s + model.t_queue_s + model.t_verify0_s
                + (b + 1 + model.others_tokens) * model.t_verify_per_token_s)
        fresh = max(b - s, 0)
        t = fresh * model.t_draft_s + wait
        tokens = expected_tokens(model.a, b)
        e = (fresh * model.e_draft_j + wait * model.p_wait_w
             + k * (model.e_draft_j - model.t_draft_s * model.p_wait_w))
        c = budget.allowance_j(t, tokens) if budget is not None else 0.0
        reward[idx[s]], time[idx[s]] = v * tokens - q_j * (e - c), t
        hit = model.a ** (b + 1) if k >= 2 else 0.0
        nxt = min(k - 1, states[-1]) if k >= 2 else 0
        p[idx[s], idx[nxt]] += hit
        p[idx[s], idx[0]] += 1.0 - hit
    # stationary law: pi P = pi, sum pi = 1
    a = np.vstack([(p.T - np.eye(n)), np.ones(n)])
    pi = np.linalg.lstsq(a, np.concatenate([np.zeros(n), [1.0]]), rcond=None)[0]
    return float(pi @ reward / (pi @ time))


@pytest.mark.parametrize("a", [0.5, 0.8, 0.95])
@pytest.mark.parametrize("q_j", [0.0, 3.0])
def test_plan_is_the_best_stationary_plan(a: float, q_j: float) -> None:
    """Policy iteration finds the best of every stationary plan, enumerated (cap 3, so up to
    three states and ten actions each), with and without a queue pricing the energy."""
    import itertools

    model = RoundModel(a=a, t_draft_s=0.012, t_net_s=0.01, t_verify0_s=0.025,
                       t_verify_per_token_s=0.001, e_draft_j=0.06, p_wait_w=2.6)
    budget = Budget(power_w=3.0)
    cap = 3
    plan = gelato.plan_rounds(model, q_j, 2.0, budget, cap)
    wait = np.array([model.t_net_s + model.t_verify0_s + (b + 1) * model.t_verify_per_token_s
                     for b in range(cap + 1)])
    fit = np.minimum(np.floor(wait / model.t_draft_s), cap).astype(np.int64)
    fit[0] = 0
    ks = gelato.ahead_options(fit)
    n_states = len(plan.h)
    choices = [[(b, int(k)) for b in range(r, cap + 1) for k in sorted(set(ks[b].tolist()))]
               for r in range(n_states)]
    best = max(_stationary_ratio(model, q_j, 2.0, budget, cap, dict(enumerate(combo)))
               for combo in itertools.product(*choices))
    assert plan.rho == pytest.approx(best, rel=1e-9)
    assert gelato.pipeline_rate(model, q_j, 2.0, budget, cap).value_per_s <= plan.rho + 1e-9


def test_drafting_ahead_pays_where_the_wait_is_long() -> None:
    """A draft three times faster than a round's wait: the plan sends small rounds and keeps
    the next ones drafted during the wait (a pipeline), well above the best plan without
    drafting ahead (``choose_budget``, the paper's outer loop)."""
    model = RoundModel(a=0.88, t_draft_s=0.0114, t_net_s=0.0105, t_verify0_s=0.0256,
                       t_verify_per_token_s=0.00046, e_draft_j=0.06, p_wait_w=2.6)
    plan = gelato.plan_rounds(model, 0.0, 2.0, None, 16)
    _, without = choose_budget(model, 0.0, 2.0, None, 16)
    assert plan.rho > 1.2 * without
    assert plan.k[0] >= 2 and plan.b[0] <= 2
    assert gelato.plan_rounds(model, 0.0, 2.0, None, 16, ahead=False).rho == pytest.approx(
        without, rel=1e-9)


def test_balance_price_spends_the_budget() -> None:
    """The queue of ``balance_price`` makes the best plan spend the power budget, and none is
    needed when the unconstrained plan spends less already."""
    model = RoundModel(a=0.85, t_draft_s=0.012, t_net_s=0.01, t_verify0_s=0.04,
                       t_verify_per_token_s=0.002, e_draft_j=0.07, p_wait_w=2.6)
    free = gelato.pipeline_rate(model, 0.0, 2.0, None, 16)
    budget = Budget(power_w=0.5 * (free.power_w + 2.6))
    q = gelato.balance_price(model, 2.0, budget, 16)
    assert q > 0
    spent = gelato.pipeline_rate(model, q, 2.0, budget, 16).power_w
    below = gelato.pipeline_rate(model, 0.9 * q, 2.0, budget, 16).power_w
    assert spent <= budget.power_w < below  # type: ignore[operator]
    assert gelato.balance_price(model, 2.0, Budget(power_w=2 * free.power_w), 16) == 0.0
    # a budget no plan meets by the model (below the waiting power): no place-holder
    assert gelato.balance_price(model, 2.0, Budget(power_w=1.0), 16) == 0.0
