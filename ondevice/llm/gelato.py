"""GELATO's math: drift-plus-penalty drafting, drafting ahead, the early exit per token, and
the choice between drafting and letting the edge stream. No I/O.

**The objective.** Renewal-reward form of Lyapunov drift-plus-penalty (Neely, "Stochastic
Network Optimization", ch. 7). Each round r (or streamed stretch) takes a random time T_r,
produces n_r tokens and costs the device E_r joules; the virtual energy queue is
Q_{r+1} = max(Q_r + E_r - C_r, 0), with the allowance C_r = P_budget * T_r (a power budget, W)
or eps * n_r (an energy-per-token budget, J/token). Per round the controller maximizes the
ratio [V n - Q (E - C)] / T of expectations: value per second, V in joules per token (larger V
weighs throughput more against the budget). Without a budget Q = 0 and it maximizes tokens/s.

**A round** that drafts b tokens produces N(b) = (1 - a^(b+1)) / (1 - a) expected tokens at
per-token acceptance a, and takes T(b) = b t_draft + W(b), W(b) = t_net + t_queue +
t_verify(b), t_verify(b) = v0 + v1 (b + 1 + others) (a fit of the edge's reported verify time
against the tokens of its batched decode: ``others`` are other devices' tokens, t_queue its
queueing); E(b) = b e_draft + W(b) p_wait. ``choose_budget`` is the paper's outer loop: the b
of highest ratio.

**Drafting ahead** (beyond the paper; SpecEdge's proactive drafting, PipeSpec): during W(b) the
device drafts k more tokens (k <= W(b) / t_draft) betting that all b pass and the edge's bonus
token is the draft's first extra one, probability a^(b+1); on a hit the next round starts with
r = k - 1 tokens ready (free: no draft time). So rounds are not independent: the state is r,
an action is (b >= r, k), its reward R = V N(b) - Q (E - C) with E adding k (e_draft - t_draft
p_wait) (drafting instead of waiting; the round is no longer), its time T = (b - r) t_draft +
W(b), and it moves to r' = k - 1 with probability a^(b+1), else to 0. The best policy of this
semi-Markov decision process maximizes the long-run ratio rho: with relative values h (h(0) =
0), h(r) = max_(b,k) [R - rho T + a^(b+1) h(k - 1)]. ``plan_rounds`` solves it by policy
iteration (evaluate the plan's rho and h from those linear equations, improve each state's
action, repeat until no action changes). ``pipeline_rate`` is its closed form for plans that
use one (b, k) in every state (a two-state chain: nothing ready, or k - 1 ready), microseconds
against the plan's fraction of a millisecond, for the sampled values below.

**The inner loop**, per drafted token: after j tokens whose all-pass probability is S_j (the
product of the acceptance model's a(features) of each), drafting token j + 1 instead of
sending now adds V S_j a' tokens (a' from the last token's features) and costs t_draft + v1
seconds at rho and e_draft + v1 p_wait joules at Q (less the allowance it earns), and changes
the bet of drafting ahead: S_j a' (a h(k' - 1) - h(k - 1)), k and k' what fits ahead of a
round of j and j + 1 (``plan_keeps_drafting``, a one-step lookahead at the plan's rho and h).
Without drafting ahead (h = 0) it is the paper's rule V S_j a' - Q e_draft - rho t_draft > 0.
After the round is drafted, the k of the plan is drafted ahead while its expected worth
p_hit h(k - 1) beats Q k (e_draft - t_draft p_wait) (``plan_ahead``).

**Streaming** (beyond the paper, so that GELATO never loses to letting the edge generate): the
edge's target generates a stretch of L tokens alone; its ratio is [V L - Q (E_L - C)] / T_L
with T_L = t_net + L t_stream (one round trip a stretch), E_L = t_net p_wait + L e_stream
(``stream_score``). After a stretch the draft must catch up on its tokens in one batch before
it drafts again: c = pending t_catchup seconds, which drafting's value for the rest of the
prompt (``left`` tokens, T_left = left / tokens_per_s) pays: (rho T_left - Q (E_c - C_c)) /
(T_left + c). A prompt's opening (its first tokens, the hardest to draft) has an acceptance of
its own.

**The choice that does not lock in** (``GelatoPolicy.stream_tokens``). Each action's value per
second is uncertain: drafting's model prediction depends on a, whose estimate is a Beta
posterior over judged tokens, and on t_draft, log-normal with a prior sd of 1.5 that each
measured round narrows; each action also has what it realized, the ratio sum(w v) /
sum(w T) of its recent outcomes (priced at the current Q) with the delta-method standard
error s / (sqrt(W) mean_T). Evidence of both kinds fades with every token produced (weight x
0.999), so an action not taken for a while becomes uncertain again. Before each round the
controller draws each action's value from its posterior (Thompson sampling): drafting's model
value at a drawn a and t_draft (``pipeline_rate``), times a 5 % model error, fused with its
realized rate as Gaussians, w x_model + (1 - w) x_realized with w = s_r^2 / (s_m^2 + s_r^2);
streaming's likewise. The larger draw wins; when drafting's draw wins against the posterior
means the round explores, following the plan of the drawn model. An action whose prediction
may beat the one taken is thus tried again with a probability that grows as its evidence
fades, and never when even its optimistic draw cannot win (so where streaming is best by far
it costs nothing). A stretch is 16 tokens, doubling while streaming wins in a row, or the rest
of the prompt once streaming is the better action with probability 0.99; it is never longer
than what the prompt has left.

**Budgets and a large V.** Drift-plus-penalty meets a time-average budget for any V, but its
queue must first climb to O(V), and a finite run overspends while it climbs. The queue at which
the model's best action spends exactly the budget (``balance_price``, bisection on Q) is known
from the estimates; joules are priced at Q + 0.8 Q* (Neely's place-holder backlog, estimated
rather than fixed), so the queue climbs only the rest of the way and overspends that much less.

Units: seconds, joules, watts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ondevice.common.estimators import BetaRate, Ewma, LinearFit

# AdaEDL (Agrawal et al., 2024): acceptance lower bound 1 - sqrt(c * H), H the draft's entropy
# in nats. c = 0.4 makes the bound cross 0.5 at H ~ 0.6 nats.
ADAEDL_C = 0.4
A_MIN, A_MAX = 0.02, 0.98  # keep acceptance estimates off 0 and 1 (N(b) and logs stay finite)


def expected_tokens(a: float, b: int) -> float:
    """N(b) = 1 + a + ... + a^b: expected tokens of a round that drafts b tokens (+1 bonus)."""
    a = min(max(a, 0.0), 1.0)
    if a >= 1.0 - 1e-12:
        return float(b + 1)
    return (1.0 - a ** (b + 1)) / (1.0 - a)


def adaedl_bound(entropy_nats: float, c: float = ADAEDL_C) -> float:
    """AdaEDL's lower bound on the acceptance probability of a token drafted at entropy H."""
    return 1.0 - math.sqrt(max(c * entropy_nats, 0.0))


def queue_update(q_j: float, energy_j: float, allowance_j: float) -> float:
    """Q_{r+1} = max(Q_r + E_r - C_r, 0)."""
    return max(q_j + energy_j - allowance_j, 0.0)




@dataclass(frozen=True, slots=True)
class RoundModel:
    """Predicted costs of a round, from the online estimates. Seconds, joules, watts."""

    a: float  # mean per-token acceptance
    t_draft_s: float  # per drafted token
    t_net_s: float  # round trip beyond the edge's compute and queueing
    t_verify0_s: float  # edge verify time of a round, fixed part
    t_verify_per_token_s: float  # and per token in the edge's batched decode
    e_draft_j: float  # device energy per drafted token
    p_wait_w: float  # device power while waiting for the edge
    t_queue_s: float = 0.0  # wait for a batch at the edge (its load)
    others_tokens: float = 0.0  # other devices' tokens in the decode that verifies a round
    t_stream_s: float = 0.0  # per token the edge streams alone (the stream action)
    e_stream_j: float = 0.0  # device energy per streamed token
    free_tokens: int = 0  # the round's first tokens, already drafted ahead: no cost to draft
    t_catchup_s: float = 0.0  # per committed token the draft catches up on after a stretch

    def time_s(self, b: int) -> float:
        batch = b + 1 + self.others_tokens
        return (max(b - self.free_tokens, 0) * self.t_draft_s + self.t_net_s + self.t_queue_s
                + self.t_verify0_s + batch * self.t_verify_per_token_s)

    def energy_j(self, b: int) -> float:
        fresh = max(b - self.free_tokens, 0)
        return fresh * self.e_draft_j + (self.time_s(b) - fresh * self.t_draft_s) * self.p_wait_w


@dataclass(frozen=True, slots=True)
class Budget:
    """The long-term energy constraint: average power (W) or energy per token (J/token)."""

    power_w: float | None = None
    j_per_token: float | None = None

    def __post_init__(self) -> None:
        if (self.power_w is None) == (self.j_per_token is None):
            raise ValueError("give exactly one of power_w and j_per_token")

    def allowance_j(self, time_s: float, tokens: float) -> float:
        """C: the energy the budget allows for a round of this length and output."""
        if self.power_w is not None:
            return self.power_w * time_s
        assert self.j_per_token is not None
        return self.j_per_token * tokens


def choose_budget(
    model: RoundModel, q_j: float, v: float, budget: Budget | None, cap: int
) -> tuple[int, float]:
    """Outer loop: ``(b*, score*)`` maximizing [V N(b) - Q (E(b) - C(b))] / T(b) over 0..cap.

    Without a budget the penalty is zero and b* maximizes throughput N(b) / T(b).
    """
    best_b, best = 0, -math.inf
    for b in range(cap + 1):
        t = model.time_s(b)
        n = expected_tokens(model.a, b)
        penalty = 0.0
        if budget is not None:
            penalty = q_j * (model.energy_j(b) - budget.allowance_j(t, n))
        score = (v * n - penalty) / t
        if score > best + 1e-12:
            best_b, best = b, score
    return best_b, best


@dataclass(frozen=True, slots=True)
class Plan:
    """What a round should do, by the state it starts in: r tokens drafted ahead that head it
    (0 <= r < len(b)). The optimal drafting policy of the round model with drafting ahead (a
    semi-Markov decision process, see the module docstring), solved by policy iteration."""

    rho: float  # drift-plus-penalty value per second of drafting under the plan
    h: np.ndarray  # [S] relative value of starting a round with r tokens ready (h[0] = 0)
    b: np.ndarray  # [S] tokens a round sends from state r (r of them free), int
    k: np.ndarray  # [S] tokens drafted ahead while that round is in flight (0: none), int
    ahead_k: np.ndarray  # [cap + 1] tokens drafting ahead of a round of b would draft (0: no)
    tokens_per_s: float  # tokens per second of drafting under the plan

    def ready_value(self, k: int) -> float:
        """h(k - 1): what drafting k tokens ahead is worth if they head the next round."""
        if k < 2:
            return 0.0
        return float(self.h[min(k - 1, len(self.h) - 1)])

    def ahead_of(self, drafted: int) -> int:
        """Tokens that fit in the wait of a round of ``drafted`` tokens (0 when fewer than
        two: one token ahead only ever equals the edge's own bonus token)."""
        return int(self.ahead_k[min(max(drafted, 0), len(self.ahead_k) - 1)])


AHEAD_OPTIONS = (0, 2, 4, 8, 16)  # tokens a round may draft ahead, at most what fits


def ahead_options(fit: np.ndarray) -> np.ndarray:
    """[B, K] tokens drafted ahead that a round of b drafted tokens may choose: each of
    AHEAD_OPTIONS up to what fits in its wait (``fit``, 0 when fewer than 2 fit), and all
    that fit."""
    opts = np.array([*AHEAD_OPTIONS, 10**6])[None, :]  # [1, K]
    ks = np.minimum(opts, fit[:, None])
    return np.where(ks >= 2, ks, 0)


def plan_rounds(model: RoundModel, q_j: float, v: float, budget: Budget | None, cap: int,
                *, ahead: bool = True) -> Plan:
    """Solve the round model with drafting ahead for the plan of highest value per second.

    State r: tokens ready; action (b, k): send b >= r tokens (b - r drafted now), draft k
    ahead (0, or as many as fit in the wait, k >= 2). Reward V N(b) - Q (E - C), time T,
    next state k - 1 with probability a^(b+1), else 0. Policy iteration (Howard): evaluate
    the plan's (rho, h) from the linear equations h(r) = R - rho T + pi h(r'), h(0) = 0, then
    improve every state's action at those values, until no state's action changes.
    Microseconds: the arrays are [S, cap + 1, 2] with S <= cap."""
    cap = max(int(cap), 0)
    bs = np.arange(cap + 1)  # [B]
    wait = (model.t_net_s + model.t_queue_s + model.t_verify0_s
            + (bs + 1 + model.others_tokens) * model.t_verify_per_token_s)  # [B]
    a = min(max(model.a, 0.0), 1.0)
    n = (bs + 1.0 if a >= 1.0 - 1e-12 else (1.0 - a ** (bs + 1)) / (1.0 - a))  # [B], N(b)
    fit = np.minimum(np.floor(wait / max(model.t_draft_s, 1e-9)), cap).astype(np.int64)
    kk = np.where((fit >= 2) & (bs >= 1), fit, 0) if ahead else np.zeros(cap + 1, np.int64)
    n_states = int(max(kk.max() - 1, 0)) + 1
    r = np.arange(n_states)[:, None]  # [S, 1]
    fresh = np.maximum(bs[None, :] - r, 0)  # [S, B]
    valid = bs[None, :] >= r  # [S, B]
    t = fresh * model.t_draft_s + wait[None, :]  # [S, B]
    ks = ahead_options(kk)  # [B, K]
    n_k = ks.shape[1]
    energy = ((fresh * model.e_draft_j + wait[None, :] * model.p_wait_w)[:, :, None]
              + ks[None] * (model.e_draft_j - model.t_draft_s * model.p_wait_w))  # [S, B, K]
    if budget is None:
        allowance = np.zeros_like(t)
    elif budget.power_w is not None:
        allowance = budget.power_w * t
    else:
        allowance = np.broadcast_to(budget.allowance_j(0.0, 1.0) * n[None, :], t.shape)
    reward = v * n[None, :, None] - q_j * (energy - allowance[:, :, None])  # [S, B, K]
    pi = np.where(ks >= 2, a ** (bs + 1)[:, None], 0.0)  # [B, K]
    nxt = np.minimum(np.maximum(ks - 1, 0), n_states - 1)  # [B, K]
    t3 = np.broadcast_to(t[:, :, None], reward.shape)
    ratio = np.where(valid[:, :, None], reward / t3, -np.inf)
    choice = ratio.reshape(n_states, -1).argmax(axis=1)  # [S] flat (b, k) index
    rows = np.arange(n_states)

    def evaluate(choice: np.ndarray, gains: np.ndarray) -> np.ndarray:
        """[rate, h(1), ..., h(S-1)] of the plan ``choice`` for per-round ``gains`` [S]."""
        cb, ck = np.divmod(choice, n_k)
        mat = np.zeros((n_states, n_states))
        mat[:, 0] = t[rows, cb]
        mat[rows[1:], rows[1:]] += 1.0
        to = nxt[cb, ck]
        moves = to >= 1
        mat[rows[moves], to[moves]] -= pi[cb, ck][moves]  # one target per row: no repeats
        return np.linalg.solve(mat, gains)

    for _ in range(32):
        cb, ck = np.divmod(choice, n_k)
        x = evaluate(choice, reward[rows, cb, ck])
        rho, h = float(x[0]), np.concatenate([[0.0], x[1:]])
        value = np.where(valid[:, :, None], reward - rho * t3 + pi[None] * h[nxt][None],
                         -np.inf).reshape(n_states, -1)  # [S, B K]
        best = value.argmax(axis=1)
        keep = value[rows, choice] >= value[rows, best] - 1e-12
        new = np.where(keep, choice, best)
        if np.array_equal(new, choice):
            break
        choice = new
    cb, ck = np.divmod(choice, n_k)
    tps = float(evaluate(choice, n[cb])[0])
    return Plan(rho=rho, h=h, b=cb.astype(np.int64), k=ks[cb, ck], ahead_k=kk,
                tokens_per_s=tps)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The best plan of ``pipeline_rate``: its value per second and what it spends."""

    value_per_s: float
    tokens_per_s: float
    power_w: float  # device energy per second
    j_per_token: float


def pipeline_rate(model: RoundModel, q_j: float, v: float, budget: Budget | None, cap: int,
                  *, ahead: bool = True) -> Pipeline:
    """Drafting's value per second in closed form: the best of the plans that send b tokens
    a round and draft k ahead (``ahead_options``), over b = 0..cap and k.

    Such a plan is a two-state chain: a round from nothing ready (state 0) drafts b, takes
    T_0 = b t_draft + W(b), yields N(b) and leaves the k - 1 tokens drafted ahead ready with
    probability a^(b+1); a round from those (state R) drafts max(b - R, 0) more, sends
    B = max(b, R), and stays in R with probability a^(B+1). Its rate is the stationary
    mix: (p_0 R_0 + p_R R_R) / (p_0 T_0 + p_R T_R), p_R = pi_0 / (pi_0 + 1 - pi_R). A
    lower bound of ``plan_rounds``' optimum (which may vary b by state), within a few
    percent of it, in microseconds: for sampling the value at drawn parameters."""
    bs = np.arange(cap + 1)  # [B]
    a = min(max(model.a, 0.0), 1.0)

    def wait(b: np.ndarray) -> np.ndarray:
        return (model.t_net_s + model.t_queue_s + model.t_verify0_s
                + (b + 1 + model.others_tokens) * model.t_verify_per_token_s)

    def n_of(b: np.ndarray) -> np.ndarray:
        return b + 1.0 if a >= 1.0 - 1e-12 else (1.0 - a ** (b + 1)) / (1.0 - a)

    def reward(fresh: np.ndarray, sent: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, ...]:
        w = wait(sent)
        t = fresh * model.t_draft_s + w
        n = n_of(sent)
        e = (fresh * model.e_draft_j + w * model.p_wait_w
             + k * (model.e_draft_j - model.t_draft_s * model.p_wait_w))
        c = np.zeros_like(t) if budget is None else (
            budget.power_w * t if budget.power_w is not None
            else budget.allowance_j(0.0, 1.0) * n)
        return v * n - q_j * (e - c), t, n, e

    fit = np.minimum(np.floor(wait(bs) / max(model.t_draft_s, 1e-9)), cap)
    fit = np.where(ahead & (bs >= 1), fit, 0)
    k = ahead_options(fit.astype(np.int64)).astype(float)  # [B, K]
    b2 = np.broadcast_to(bs[:, None].astype(float), k.shape)  # [B, K]
    r0, t0, n0, e0 = reward(b2, b2, k)
    pi0 = np.where(k >= 2, a ** (b2 + 1.0), 0.0)
    ready = np.maximum(k - 1, 0)
    sent = np.maximum(b2, ready)
    fresh_r = np.maximum(b2 - ready, 0)
    rr, tr, nr, er = reward(fresh_r, sent, k)  # the k tokens still fit: the wait only grew
    pir = np.where(k >= 2, a ** (sent + 1.0), 0.0)
    p_r = pi0 / np.maximum(pi0 + 1.0 - pir, 1e-12)
    time = (1 - p_r) * t0 + p_r * tr  # [B, K], per round in the stationary mix
    rate = ((1 - p_r) * r0 + p_r * rr) / time  # [B, K]
    i = np.unravel_index(int(rate.argmax()), rate.shape)
    tokens = (1 - p_r[i]) * n0[i] + p_r[i] * nr[i]
    energy = (1 - p_r[i]) * e0[i] + p_r[i] * er[i]
    return Pipeline(float(rate[i]), float(tokens / time[i]), float(energy / time[i]),
                    float(energy / tokens))


def balance_price(model: RoundModel, v: float, budget: Budget, cap: int, *,
                  ahead: bool = True, stream_tokens: int = 0, iters: int = 24) -> float:
    """The queue Q* at which the best action spends exactly the budget: drafting's best plan
    (``pipeline_rate``), or with ``stream_tokens`` streaming stretches of that many tokens
    when it is worth more at that Q. 0 when the unconstrained choice already spends less, or
    when no choice meets it by the model.
    Bisection on Q (a plan spends less the dearer a joule): the drift-plus-penalty queue
    settles near it in the long run, and
    starting the price there (Neely's place-holder backlog) keeps a large V from
    overspending while the queue would still be growing."""

    def spends(q: float) -> float:
        p = pipeline_rate(model, q, v, budget, cap, ahead=ahead)
        power, per_token = p.power_w, p.j_per_token
        if stream_tokens and stream_score(model, q, v, budget, stream_tokens) > p.value_per_s:
            n = float(stream_tokens)
            t = model.t_net_s + n * model.t_stream_s
            e = model.t_net_s * model.p_wait_w + n * model.e_stream_j
            power, per_token = e / t, e / n
        return power if budget.power_w is not None else per_token

    limit = budget.power_w if budget.power_w is not None else budget.j_per_token
    assert limit is not None
    if spends(0.0) <= limit:
        return 0.0
    hi = v
    while spends(hi) > limit:
        if hi > 1e4 * v:  # no plan meets it by the model: no place-holder (the queue alone)
            return 0.0
        hi *= 4.0
    lo = 0.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if spends(mid) > limit else (lo, mid)
    return hi


def plan_keeps_drafting(plan: Plan, model: RoundModel, *, drafted: int, survival: float,
                        a_next: float, free: bool, v: float, q_j: float,
                        budget: Budget | None) -> bool:
    """Inner loop with drafting ahead: after ``drafted`` tokens whose chance of all being
    accepted is ``survival``, is one more (accepted with probability ``a_next``; ``free``
    when it was drafted ahead) worth more than sending the round now?

    One-step lookahead at the plan's value rho of a second and h of ready tokens:
      V S a' - rho (t_draft + v1) - Q (e_draft + v1 p_wait - dC) + S a' (a h(k'-1) - h(k-1))
    where k, k' are the tokens drafted ahead of a round of ``drafted`` and ``drafted + 1``
    (a longer round fits more ahead but is less likely to pass whole, and drafting ahead
    pays only when it passes and the edge's bonus token is the draft's next)."""
    t_more = (0.0 if free else model.t_draft_s) + model.t_verify_per_token_s
    e_more = (0.0 if free else model.e_draft_j) + model.t_verify_per_token_s * model.p_wait_w
    gain = survival * a_next
    allowance = budget.allowance_j(t_more, gain) if budget is not None else 0.0
    k_now, k_more = plan.ahead_of(drafted), plan.ahead_of(drafted + 1)
    ahead = gain * (model.a * plan.ready_value(k_more) - plan.ready_value(k_now))
    return v * gain - plan.rho * t_more - q_j * (e_more - allowance) + ahead > 0.0


def plan_ahead(plan: Plan, model: RoundModel, *, drafted: int, p_hit: float,
               q_j: float) -> int:
    """Tokens to draft ahead of a round of ``drafted`` tokens in flight: as many as fit, when
    their expected worth (``p_hit`` times h of the ready tokens they leave) beats their extra
    energy at the queue's price (drafting instead of waiting; the round's time is unchanged,
    so is its allowance), else 0."""
    k = plan.ahead_of(drafted)
    if k < 2:
        return 0
    extra_j = k * (model.e_draft_j - model.t_draft_s * model.p_wait_w)
    return k if p_hit * plan.ready_value(k) - q_j * extra_j > 0.0 else 0


def stream_score(model: RoundModel, q_j: float, v: float, budget: Budget | None,
                 tokens: int | None = None) -> float:
    """The stream action's ratio: [V L - Q (E_L - C)] / T_L for a stretch of ``tokens`` = L,
    T_L = t_net + L t_stream, E_L = t_net p_wait + L e_stream; per token without the
    stretch's round trip when ``tokens`` is None."""
    n = float(tokens) if tokens else 1.0
    fixed = model.t_net_s if tokens else 0.0
    t = max(fixed + n * model.t_stream_s, 1e-9)
    penalty = 0.0
    if budget is not None:
        penalty = q_j * (fixed * model.p_wait_w + n * model.e_stream_j
                         - budget.allowance_j(t, n))
    return (v * n - penalty) / t










@dataclass(slots=True)
class Estimates:
    """Online estimates of the round model's parameters, with sane priors."""

    # Priors: a Raspberry Pi 5 class device (hardware-profiles.md: Gemma-3-270M ~14 tok/s on a
    # Pi 4, ~3 W idle) and a GPU edge. Boards differ by 10x, so timing and energy priors
    # carry a tenth of a sample's weight: the first measurement moves them 91 % of the way
    # (their uncertainty is the action choice's business, ``GelatoPolicy``).
    # The acceptance is a Beta posterior (mean 0.6, worth 2 judged tokens: the published
    # small/large pairs accept 0.6-0.7 of drafted tokens) whose evidence fades with the
    # tokens produced (``forget``), so a long spell of streaming leaves it uncertain again.
    a: BetaRate = field(default_factory=lambda: BetaRate(0.6, prior_weight=2.0))
    # ... and over a prompt's opening (its first tokens, the hardest to draft), apart
    a_open: BetaRate = field(default_factory=lambda: BetaRate(0.6, prior_weight=2.0))
    t_draft_s: Ewma = field(default_factory=lambda: Ewma(0.05, prior_weight=0.1))
    t_net_s: Ewma = field(default_factory=lambda: Ewma(0.005, prior_weight=0.1))
    verify_s: LinearFit = field(default_factory=lambda: LinearFit(0.016, 0.004))  # vs batch
    queue_s: Ewma = field(default_factory=lambda: Ewma(0.0, prior_weight=0.5))
    others_tokens: Ewma = field(default_factory=lambda: Ewma(0.0, prior_weight=0.5))
    # The stream action, per token beyond the stretch's one round trip (t_net). None until
    # the first stretch: until then its price is derived from the round model (a
    # one-position verify and the edge's queueing, at waiting power).
    t_stream_s: Ewma | None = None
    e_stream_j: Ewma | None = None
    e_draft_j: Ewma = field(default_factory=lambda: Ewma(0.25, prior_weight=0.1))
    p_wait_w: Ewma = field(default_factory=lambda: Ewma(3.0, prior_weight=0.1))
    # Per committed token the draft takes in one batch when it drafts again after a stretch
    # (its catch-up; a batched evaluation: a fifth of a drafted token's time as a prior).
    t_catchup_s: Ewma = field(default_factory=lambda: Ewma(0.01, prior_weight=0.1))
    draft_rounds: int = 0  # rounds that measured t_draft (its uncertainty shrinks with them)

    def model(self) -> RoundModel:
        v0, v1 = self.verify_s.coef()
        p_wait = max(self.p_wait_w.value, 0.0)
        t_stream = self._t_stream(v0, v1)
        return RoundModel(
            a=min(max(self.a.value, A_MIN), A_MAX),
            t_draft_s=max(self.t_draft_s.value, 1e-6),
            t_net_s=max(self.t_net_s.value, 0.0),
            t_verify0_s=v0,
            t_verify_per_token_s=v1,
            e_draft_j=max(self.e_draft_j.value, 0.0),
            p_wait_w=p_wait,
            t_queue_s=max(self.queue_s.value, 0.0),
            others_tokens=max(self.others_tokens.value, 0.0),
            t_stream_s=t_stream,
            e_stream_j=(self.e_stream_j.value if self.e_stream_j is not None
                        else t_stream * p_wait),
            t_catchup_s=max(self.t_catchup_s.value, 0.0),
        )

    def _t_stream(self, v0: float, v1: float) -> float:
        if self.t_stream_s is not None:
            return max(self.t_stream_s.value, 1e-6)
        return max(v0 + v1 * (1 + self.others_tokens.value) + self.queue_s.value, 1e-6)

    def forget(self, factor: float) -> None:
        """Let the acceptance evidence fade by ``factor`` (tokens went by)."""
        self.a.forget(factor)
        self.a_open.forget(factor)

    def observe_draft(self, *, draft_s: float, draft_energy_j: float) -> None:
        """One drafted token measured on its own (before any round): its time and energy."""
        if draft_s > 0:
            self.t_draft_s.update(draft_s)
            self.e_draft_j.update(draft_energy_j)
            self.draft_rounds += 1

    def observe_stream(self, *, tokens: int, time_s: float, energy_j: float,
                       verify_s: float | None = None) -> None:
        """Fold one streamed stretch (``tokens`` from the edge alone, its edge compute
        ``verify_s`` if reported) into the estimates: the time and energy per token beyond
        the stretch's one round trip, and the edge's time for one position."""
        if tokens <= 0:
            return
        fixed_s = min(max(self.t_net_s.value, 0.0), time_s)
        per_s = (time_s - fixed_s) / tokens
        per_j = max(energy_j - fixed_s * max(self.p_wait_w.value, 0.0), 0.0) / tokens
        if self.t_stream_s is None or self.e_stream_j is None:
            self.t_stream_s = Ewma(per_s, prior_weight=0.0)
            self.e_stream_j = Ewma(per_j, prior_weight=0.0)
        else:
            self.t_stream_s.update(per_s)
            self.e_stream_j.update(per_j)
        if verify_s is not None and verify_s > 0:
            self.verify_s.update(1.0 + max(self.others_tokens.value, 0.0), verify_s / tokens)

    def observe(
        self, *, drafted: int, accepted: int, draft_s: float, rtt_s: float, verify_s: float,
        round_s: float, energy_j: float, draft_energy_j: float, catchup_tokens: int = 0,
        queue_s: float | None = None, batch_tokens: int | None = None, predrafted: int = 0,
        ahead_s: float = 0.0, ahead_energy_j: float = 0.0, sync_s: float | None = None,
        opening: bool = False,
    ) -> None:
        """Fold one measured round into the estimates.

        A round whose draft first caught up on more than one committed token (after rounds
        that drafted nothing, a stretch, or a prompt's prefill) does not update the
        per-token draft time and energy: its draft time is mostly that catch-up, and taking
        it as the price of a drafted token makes drafting look dearer the longer it was not
        done, a trap from which the controller never drafts again. When the round's first
        evaluation was timed apart (``sync_s``: the catch-up batch and the first drafted
        token), the tokens after it still measure t_draft and the first one the catch-up per
        token; otherwise the round measures only the catch-up.

        ``queue_s`` and ``batch_tokens`` are the edge's report of its load (None from an edge
        that does not report it: then the round's own tokens are the whole batch).

        Drafting ahead: the ``predrafted`` tokens cost this round no draft time, and the time
        and energy spent drafting ahead during the wait (``ahead_s``, ``ahead_energy_j``) are
        not waiting: both stay out of the per-token draft cost and the waiting power.

        ``opening``: the round drafted in a prompt's opening, whose acceptance is kept apart
        (``a_open``)."""
        if drafted > 0:
            judged = min(drafted, accepted + 1)  # tokens the edge actually ruled on
            (self.a_open if opening else self.a).update(accepted, judged)
            fresh = drafted - predrafted
            if catchup_tokens <= 1 and fresh > 0:
                self.t_draft_s.update(draft_s / fresh)
                self.e_draft_j.update(draft_energy_j / fresh)
                self.draft_rounds += 1
            elif fresh > 0:
                first_s = draft_s - (fresh - 1) * max(self.t_draft_s.value, 0.0)
                if sync_s is not None and fresh > 1:
                    per_s = (draft_s - sync_s) / (fresh - 1)
                    self.t_draft_s.update(per_s)
                    self.e_draft_j.update(draft_energy_j / draft_s * per_s if draft_s > 0
                                          else 0.0)
                    self.draft_rounds += 1
                    first_s = sync_s
                extra = first_s - max(self.t_draft_s.value, 0.0)
                self.t_catchup_s.update(max(extra, 0.0) / (catchup_tokens - 1))
        own = drafted + 1
        batch = own if batch_tokens is None else max(batch_tokens, own)
        self.verify_s.update(float(batch), verify_s)
        self.others_tokens.update(batch - own)
        wait_s = max(queue_s or 0.0, 0.0)
        self.queue_s.update(wait_s)
        # Everything in the round that is neither drafting, queueing nor verifying: network,
        # framing, both sides' bookkeeping. T(b) then adds up to the measured round time.
        self.t_net_s.update(max(round_s - draft_s - verify_s - wait_s, 0.0))
        wait_s = round_s - draft_s - ahead_s
        if wait_s > 1e-4:
            self.p_wait_w.update(max(energy_j - draft_energy_j - ahead_energy_j, 0.0) / wait_s)
