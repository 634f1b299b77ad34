"""The best schedule of GELATO's actions for a prompt whose per-position acceptance
probabilities are known before it starts. Pure: no I/O, no clock.

Two references of the benchmark are this one dynamic program:

- ``oracle (all actions)``: the probabilities are the outcomes themselves (0 or 1), so the
  plan is the fastest schedule in hindsight (``simulate_oracle_actions``; with drafting ahead
  and streaming switched off, ``simulate_oracle``, the frontier of drafting lengths);
- ``bayes (calibrated, in advance)``: the probabilities are the acceptance rate of each
  position's class of draft entropy and top-1 probability, calibrated on the very trace
  being replayed (``calibrated_acceptance``). The plan is then the Bayes-optimal schedule for
  a policy that is told, before the prompt starts, how likely every position is to be
  accepted, but not whether it will be. It is an upper reference for any policy whose
  knowledge of acceptance comes from what the draft sees (GELATO's, AdaEDL's): such a policy
  learns each position's entropy only when it drafts it, and learns the calibration online.

The actions (as in the round loop, ``gelato_sim._speculate``): draft ``b`` tokens (0 to the
cap, at most what the prompt has left less one) and send them, with or without drafting
ahead as far as the round's wait allows; or let the edge stream a stretch
(``STREAM_LENGTHS`` or the rest of the prompt). State: the committed tokens the draft has to
catch up on (1..``PENDING_MAX``, priced as ``PENDING_MAX`` beyond it), or r tokens drafted
ahead that head the next round.

With acceptance independent across positions given p, a round of ``b`` tokens starting at
position i accepts exactly j < b with probability q_j = p_i ... p_{i+j-1} (1 - p_{i+j}) and
all b with P_b = p_i ... p_{i+b-1}; drafting ahead then hits (the next round starts with the
tokens drafted ahead) with probability P_b p_{i+b}. The expected cost to the prompt's end:

    C(i, s) = min( min_{b, k} c(b, k | s) + sum_{j<b} q_j C(i+j+1, 1)
                                + P_b [p_{i+b} C(i+b+1, hit_k) + (1 - p_{i+b}) C(i+b+1, 2)],
                   c(0 | s) + C(i+1, min(s+1, PENDING_MAX)),
                   min_n stream(n) + C(i+n, min(s+n, PENDING_MAX)) )

where c is a round's time + lambda * energy (``CostModel.round``), which depends on the state
only through the round's own cost: the continuation of a drafting round does not, so it is
computed once per position. With p in {0, 1} every sum has one term and the program is the
hindsight oracle exactly. The plan is then played on the trace's real outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ondevice.bench._hardware import CostModel
from ondevice.bench.trace import Trace
from ondevice.llm.round_account import RoundTally as Tally

ORACLE_CAP = 16  # most tokens a planned round drafts (the policies' cap)
PENDING_MAX = 8  # state bound on the draft's catch-up tokens (beyond: priced as 8, which
# only makes a plan cheaper, so the hindsight oracles stay upper bounds)
STREAM_LENGTHS = (8, 16, 32, 64)  # stretches a plan may stream (or the rest of the prompt)
CALIBRATION_BINS = (8, 4)  # entropy x top-1 probability classes of ``calibrated_acceptance``


def leading_accepts(accepts: np.ndarray, start: int, n: int) -> int:
    """Length of the run of accepted positions at ``start``, at most ``n``."""
    window = accepts[start : start + n]
    misses = np.flatnonzero(~window)
    return int(misses[0]) if misses.size else int(window.shape[0])


def repeated(t: Tally, k: int) -> Tally:
    """A run's counts and totals as if it ran ``k`` times."""
    return Tally(tokens=t.tokens * k, time_s=t.time_s * k, energy_j=t.energy_j * k,
                 rounds=t.rounds * k, drafted=t.drafted * k, accepted=t.accepted * k)


@dataclass(frozen=True, slots=True)
class ActionPlan:
    """The plan of one prompt: the best action at every (position, state), as an index into
    ``menu`` (``choice[i, s]``), and the expected cost of the whole prompt from its start
    (seconds + lambda * joules). ``menu[a]`` is ("draft", tokens, tokens asked ahead) or
    ("stream", tokens, 0)."""

    choice: np.ndarray  # [positions, states] int
    menu: tuple[tuple[str, int, int], ...]
    expected_cost: float
    pending_max: int
    r_max: int


def calibrated_acceptance(entropy: np.ndarray, top1: np.ndarray, accepts: np.ndarray,
                          bins: tuple[int, int] = CALIBRATION_BINS) -> np.ndarray:
    """Each position's acceptance probability: the acceptance rate of its class, the classes
    being quantile bins of the draft's entropy (``bins[0]``) crossed with quantile bins of its
    top-1 probability (``bins[1]``) over the whole trace. ``[N] float``."""
    def classes(x: np.ndarray, n: int) -> np.ndarray:
        edges = np.quantile(x, np.linspace(0.0, 1.0, n + 1))
        return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n - 1)

    key = classes(entropy, bins[0]) * bins[1] + classes(top1, bins[1])
    hits = np.bincount(key, weights=accepts.astype(np.float64), minlength=bins[0] * bins[1])
    seen = np.bincount(key, minlength=bins[0] * bins[1])
    rate = np.where(seen > 0, hits / np.maximum(seen, 1), float(accepts.mean()))
    return rate[key]


def plan_actions(cost: CostModel, p: np.ndarray, *, lam_s_per_j: float = 0.0,
                 cap: int = ORACLE_CAP, ahead: bool = True, stream: bool = True
                 ) -> ActionPlan:
    """The schedule minimizing the expected time + ``lam_s_per_j`` * energy of a prompt whose
    position i is accepted with probability ``p[i]``, independently (module docstring), over
    drafting lengths 0..``cap``, and drafting ahead and streaming stretches unless switched
    off. Of actions that cost the same, the first in ``menu`` order is taken (fewer tokens
    first)."""
    n_pos, pm, lam = p.shape[0], PENDING_MAX, lam_s_per_j
    ks = (0, cap) if ahead else (0,)
    r_max = max(min(cap, cost.ahead_fits(cap)) - 1, 0) if ahead else 0
    n_state = pm + 1 + r_max
    pend = np.array([min(s, pm) if s <= pm else 1 for s in range(n_state)])
    ready = np.array([0 if s <= pm else s - pm for s in range(n_state)])

    def price(b: int, pd: int, pre: int, k: int) -> float:
        rc = cost.round(b, pd, predrafted=pre, ahead=k)
        return rc.round_s + lam * rc.energy_j

    # The menu: nothing drafted, then b = 1..cap without and with drafting ahead, then the
    # stretches; a round's own price per state (state 0 is unused).
    drafts = [(b, k) for b in range(1, cap + 1) for k in ks]
    lengths = sorted(set(STREAM_LENGTHS) | set(range(1, n_pos + 1))) if stream else []
    menu = (("draft", 0, 0), *(("draft", b, k) for b, k in drafts),
            *(("stream", n, 0) for n in lengths))
    own0 = np.array([price(0, int(pd), 0, 0) for pd in pend])
    own = np.array([[price(b, int(pend[s]), min(int(ready[s]), b), k) for b, k in drafts]
                    for s in range(n_state)])
    ahead_n = [cost.round(b, 1, ahead=k).ahead for b, k in drafts]  # depends on b alone
    stream_own = {n: (lambda se: se[0] + lam * se[1])(cost.edge_only(n)) for n in lengths}
    stream_at = {n: 1 + len(drafts) + j for j, n in enumerate(lengths)}
    nk = len(ks)
    after0 = np.minimum(pend + 1, pm)

    best = np.zeros((n_pos + 1, n_state))
    choice = np.zeros((n_pos, n_state), dtype=np.int64)
    for i in range(n_pos - 1, -1, -1):
        left = n_pos - i
        nb = min(cap, left - 1)
        # The continuation of each drafting round, the same from every state.
        cont = np.empty(nk * nb)
        survive, missed = 1.0, 0.0
        for b in range(1, nb + 1):
            missed += survive * (1.0 - p[i + b - 1]) * best[i + b, 1]
            survive *= p[i + b - 1]
            for a in range(nk * (b - 1), nk * b):
                if ahead_n[a] and i + b < n_pos:
                    r = min(ahead_n[a] - 1, r_max)
                    hit = pm + r if r > 0 else 1
                    ph = p[i + b]
                    full = ph * best[i + b + 1, hit] + (1.0 - ph) * best[i + b + 1, 2]
                else:
                    full = best[i + b + 1, 2]
                cont[a] = missed + survive * full
        streams = sorted({n for n in STREAM_LENGTHS if n <= left} | {left}) if stream else []
        cand = np.concatenate([
            (own0 + best[i + 1, after0])[:, None],
            own[:, : nk * nb] + cont[None, :],
            *([np.stack([stream_own[n] + best[i + n, np.minimum(pend + n, pm)]
                         for n in streams], axis=1)] if streams else []),
        ], axis=1)
        k = np.argmin(cand[1:], axis=1)
        index = np.concatenate([[0], 1 + np.arange(nk * nb),
                                [stream_at[n] for n in streams]]).astype(np.int64)
        best[i, 1:] = cand[1:][np.arange(n_state - 1), k]
        choice[i, 1:] = index[k]
    return ActionPlan(choice, menu, float(best[0, 1]), pm, r_max)


def play(plan: ActionPlan, cost: CostModel, accepts: np.ndarray) -> Tally:
    """The plan played on the real outcomes ``accepts`` of its prompt."""
    pm, n_pos = plan.pending_max, accepts.shape[0]
    t = Tally()
    i, st = 0, 1
    while i < n_pos:
        kind, n, ahead = plan.menu[int(plan.choice[i, st])]
        pend, ready = (st, 0) if st <= pm else (1, st - pm)
        if kind == "stream":
            s, e = cost.edge_only(n)
            t.add(Tally(tokens=n, time_s=s, energy_j=e))
            i, st = i + n, min(pend + n, pm)
            continue
        acc = leading_accepts(accepts, i, n)
        rc = cost.round(n, pend, predrafted=min(ready, n), ahead=ahead)
        t.add(Tally(tokens=acc + 1, time_s=rc.round_s, energy_j=rc.energy_j, rounds=1,
                    drafted=n, accepted=acc))
        if rc.ahead and n and acc == n and i + n < n_pos and accepts[i + n]:
            r = min(rc.ahead - 1, plan.r_max)
            st = pm + r if r > 0 else 1
        else:
            st = min(pend + 1, pm) if n == 0 else (2 if acc == n else 1)
        i += acc + 1
    return t


def _simulate(trace: Trace, cost: CostModel, accepts: np.ndarray, p: np.ndarray, *,
              lam_s_per_j: float, cap: int, repeat: int, ahead: bool = True,
              stream: bool = True) -> tuple[Tally, float]:
    total, expected = Tally(), 0.0
    for q in range(trace.n_prompts):
        sl = trace.prompt_slice(q)
        plan = plan_actions(cost, p[sl], lam_s_per_j=lam_s_per_j, cap=cap, ahead=ahead,
                            stream=stream)
        total.add(play(plan, cost, accepts[sl]))
        expected += plan.expected_cost
    return repeated(total, repeat), expected * repeat


def simulate_oracle(
    trace: Trace, cost: CostModel, accepts: np.ndarray, *, lam_s_per_j: float = 0.0,
    cap: int = ORACLE_CAP, repeat: int = 1,
) -> Tally:
    """The hindsight-optimal schedule of drafting lengths alone (no streaming, no drafting
    ahead) minimizing time + ``lam_s_per_j`` * energy: a sweep of lambda gives the best
    throughput at each energy per token (the oracle frontier)."""
    return _simulate(trace, cost, accepts, accepts.astype(np.float64), lam_s_per_j=lam_s_per_j,
                     cap=cap, repeat=repeat, ahead=False, stream=False)[0]


def simulate_oracle_matches(
    trace: Trace, cost: CostModel, accepts: np.ndarray, *, cap: int = ORACLE_CAP,
    repeat: int = 1,
) -> Tally:
    """Per round, draft exactly the leading accepted positions (at most ``cap``): the simple
    oracle of the speculative-decoding literature, blind to costs."""
    total = Tally()
    for q in range(trace.n_prompts):
        acc = accepts[trace.prompt_slice(q)]
        n_pos = acc.shape[0]
        i, pend = 0, 1
        while i < n_pos:
            m = leading_accepts(acc, i, min(cap, n_pos - i - 1))
            rc = cost.round(m, pend)
            total.add(Tally(tokens=m + 1, time_s=rc.round_s, energy_j=rc.energy_j, rounds=1,
                            drafted=m, accepted=m))
            pend = pend + 1 if m == 0 else 2
            i += m + 1
    return repeated(total, repeat)


def simulate_oracle_actions(
    trace: Trace, cost: CostModel, accepts: np.ndarray, *, lam_s_per_j: float = 0.0,
    cap: int = ORACLE_CAP, repeat: int = 1,
) -> Tally:
    """The hindsight-optimal schedule over GELATO's whole action set: the plan that knows
    every outcome (p = ``accepts``)."""
    return _simulate(trace, cost, accepts, accepts.astype(np.float64),
                     lam_s_per_j=lam_s_per_j, cap=cap, repeat=repeat)[0]


def simulate_bayes_actions(
    trace: Trace, cost: CostModel, accepts: np.ndarray, entropy: np.ndarray,
    top1: np.ndarray, *, cap: int = ORACLE_CAP, repeat: int = 1,
) -> tuple[Tally, float]:
    """The fastest plan for a policy told every position's calibrated acceptance probability
    (``calibrated_acceptance``) before each prompt, played on the real outcomes; and the
    seconds it expects (its expected time over independent outcomes at those
    probabilities, summed over the prompts and repeats)."""
    p = calibrated_acceptance(entropy, top1, accepts)
    return _simulate(trace, cost, accepts, p, lam_s_per_j=0.0, cap=cap, repeat=repeat)


__all__ = ["CALIBRATION_BINS", "ORACLE_CAP", "PENDING_MAX", "STREAM_LENGTHS", "ActionPlan",
           "calibrated_acceptance", "leading_accepts", "plan_actions", "play", "repeated",
           "simulate_bayes_actions", "simulate_oracle", "simulate_oracle_actions",
           "simulate_oracle_matches"]
