"""Trace-driven simulation of drafting policies on a hardware profile. Pure: no I/O, no clock.

Every policy replays the same trace (``trace.py``) through the same round loop as
``Generation._speculate``: it asks ``round_budget()``, drafts while ``keep_drafting(j, H_j)``
says so (fed the recorded entropies), the round accepts the leading run of accepted positions,
produces accepted + 1 tokens, and the policy ``observe``\\ s the round's ``RoundStats`` with the
time and energy the profile prices (``_hardware.CostModel``). Acceptance outcomes are fixed per
position before any policy runs (the greedy match, or one Bernoulli draw of the recorded
acceptance probability per position and seed), so every policy meets the same realizations.

Two hindsight references, not policies (they see the outcomes in advance):

- ``oracle``: the cheapest drafting schedule in hindsight, by dynamic programming over trace
  positions, minimizing time + lambda * energy. lambda = 0 gives the highest throughput any
  schedule of drafting lengths can reach on the trace; a sweep over lambda gives the best
  throughput at each energy per token (the oracle frontier).
- ``oracle (all actions)``: the same over GELATO's whole action set (drafting lengths,
  streaming a stretch, drafting ahead or not), at lambda = 0: the fastest schedule of the
  actions GELATO has, against which its gap is measured like for like.
- ``oracle-matches``: per round, draft exactly the number of leading accepted positions (capped
  at 16), the simple oracle of the speculative-decoding literature; it ignores costs, so on
  hardware where drafting does not pay it is beaten by not drafting.

And one reference policy, ``entropy-threshold*``: the fastest "draft while H < h, at most c"
rule with h and c chosen in hindsight, i.e. how far a policy that sees only the draft's
entropy (as GELATO's inner loop and AdaEDL do) can get on the trace.

The prompt prefill of either side is not counted: the simulation covers decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ondevice.bench._hardware import CostModel
from ondevice.bench._specs import (
    MATCHED_AGAINST,
    BenchConfig,
    PolicySpec,
    choose_budgets,
    first_specs,
    second_specs,
)
from ondevice.bench.report import BenchRow
from ondevice.bench.trace import Trace
from ondevice.llm.acceptance import TokenFeatures
from ondevice.llm.policies import Policy, RoundStats

ORACLE_CAP = 16  # most tokens an oracle round drafts (the policies' cap)
PENDING_MAX = 8  # DP state bound on the draft's catch-up tokens (beyond: priced as 8, which
# only makes the oracle cheaper, so it stays an upper bound)


@dataclass(slots=True)
class Tally:
    """Totals of a simulated or real run. Seconds, joules."""

    tokens: int = 0
    time_s: float = 0.0
    energy_j: float = 0.0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0

    def add(self, other: Tally) -> None:
        self.tokens += other.tokens
        self.time_s += other.time_s
        self.energy_j += other.energy_j
        self.rounds += other.rounds
        self.drafted += other.drafted
        self.accepted += other.accepted


def acceptance_outcomes(trace: Trace, *, sampling: bool, seed: int = 0,
                        acceptance: float | None = None) -> np.ndarray:
    """Whether a token drafted at each position is accepted. ``[N] bool``.

    Greedy: the recorded argmax match. Sampling: one draw u < p_accept per position from a
    generator seeded with ``seed``, shared by every policy of a run.

    ``acceptance``: replay the trace as a weaker draft would, at this mean per-token
    acceptance (below the trace's own): greedy, each matching position is kept with
    probability acceptance / mean(match) (one seeded draw per position); sampling, every
    p_accept is scaled by acceptance / mean(p_accept). Thinning is uniform over positions, so
    the draft's entropy tells less about acceptance than in a real weaker pair (a harder
    test of a controller that predicts acceptance, not an easier one).
    """
    if sampling and trace.p_accept is None:
        raise ValueError("this trace has no acceptance probabilities: record it with "
                         "--temperature > 0")
    base = trace.p_accept.astype(np.float64) if sampling else trace.match.astype(np.float64)
    if acceptance is not None:
        mean = float(base.mean()) if base.size else 0.0
        if not 0.0 < acceptance <= mean + 1e-9:
            raise ValueError(f"acceptance {acceptance:g} must be > 0 and at most the trace's "
                             f"own ({mean:.3f}): thinning only lowers it")
        base = base * (acceptance / mean)
    if not sampling and acceptance is None:
        return trace.match.copy()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    return rng.random(trace.n_positions) < base


def policy_entropies(trace: Trace, *, sampling: bool) -> np.ndarray:
    """The entropies a policy sees: at T = 1 when greedy, at the trace's T when sampling."""
    if sampling:
        if trace.entropy_t is None:
            raise ValueError("this trace has no sampling entropies")
        return trace.entropy_t
    return trace.entropy


def leading_accepts(accepts: np.ndarray, start: int, n: int) -> int:
    """Length of the run of accepted positions at ``start``, at most ``n``."""
    window = accepts[start : start + n]
    misses = np.flatnonzero(~window)
    return int(misses[0]) if misses.size else int(window.shape[0])


def simulate_policy(
    policy: Policy, trace: Trace, cost: CostModel, accepts: np.ndarray, entropies: np.ndarray,
    *, repeat: int = 1, on_prompt: Callable[[], None] | None = None,
    features: tuple[np.ndarray, np.ndarray] | None = None,
) -> Tally:
    """Run ``policy`` over every prompt of the trace, ``repeat`` times; one policy object
    throughout (its estimates, queue and budget are long-run). ``features`` is the trace's
    (top1, margin) per position (``Trace.features``), for policies that want them."""
    total = Tally()
    if policy.wants_draft_time():  # two draft evaluations timed before the first prompt
        s = cost.device.draft_ms_per_token / 1e3
        policy.calibrate(s, s * cost.device.draft_w)
        total.add(Tally(time_s=2 * s, energy_j=2 * s * cost.device.draft_w))
    for _ in range(repeat):
        for p in range(trace.n_prompts):
            sl = trace.prompt_slice(p)
            if policy.mode == "device-only":
                n = sl.stop - sl.start
                s, e = cost.device_only(n)
                total.add(Tally(tokens=n, time_s=s, energy_j=e))
            elif policy.mode == "edge-only":
                n = sl.stop - sl.start
                s, e = cost.edge_only(n)
                total.add(Tally(tokens=n, time_s=s, energy_j=e))
            else:
                feats = None if features is None else (features[0][sl], features[1][sl])
                total.add(_speculate(policy, cost, accepts[sl], entropies[sl], feats))
            if on_prompt is not None:
                on_prompt()
    return total


def _speculate(policy: Policy, cost: CostModel, accepts: np.ndarray, ents: np.ndarray,
               feats: tuple[np.ndarray, np.ndarray] | None = None) -> Tally:
    """One prompt through the round loop of ``Generation._speculate``.

    Drafting ahead: after a round's drafting the policy may ask for k tokens ahead; as many
    as fit in the round's wait are drafted (``CostModel.round``). They hit when every drafted
    token is accepted and the draft's next token is the edge's (the acceptance outcome at that
    position: exact when greedy, an approximation when sampling, see docs/gelato.md); then the
    next round starts with the hits less one already drafted."""
    t = Tally()
    n_pos = accepts.shape[0]
    pos, pending, ready = 0, 1, 0  # ready: tokens drafted ahead that head the next round
    policy.begin_prompt()
    while pos < n_pos:
        left = n_pos - pos
        stream = min(policy.stream_tokens(left), left)
        if stream > 0:  # the edge generates alone: one RTT to ask, then token after token
            s, e = cost.edge_only(stream)
            policy.observe_stream(stream, s, e, verify_s=stream * cost.verify_s(0))
            t.add(Tally(tokens=stream, time_s=s, energy_j=e))
            pending += stream  # the draft catches up on them when it drafts again
            pos += stream
            ready = 0
            continue
        n_max = max(0, min(policy.round_budget(), left - 1))
        drafted = 0
        seen: list[float] = []
        seen_f: list[TokenFeatures] = []
        for j in range(n_max):
            h = float(ents[pos + j])
            drafted += 1
            if policy.needs_entropy or policy.needs_features:
                seen.append(h)
            if policy.needs_features and feats is not None:
                f = TokenFeatures(h, float(feats[0][pos + j]), float(feats[1][pos + j]), j)
                seen_f.append(f)
                go = j + 1 < n_max and policy.keep_drafting(j + 1, h, f)
            else:
                go = j + 1 < n_max and policy.keep_drafting(
                    j + 1, h if policy.needs_entropy else None)
            if not go:
                break
        predrafted = min(ready, drafted)
        accepted = leading_accepts(accepts, pos, drafted)
        produced = accepted + 1  # accepted <= n_max <= left - 1
        want = policy.ahead_tokens(drafted) if drafted else 0
        rc = cost.round(drafted, pending, predrafted=predrafted, ahead=want)
        hit = bool(rc.ahead and accepted == drafted and pos + drafted < n_pos
                   and accepts[pos + drafted])
        ahead_s = rc.ahead * cost.device.draft_ms_per_token / 1e3
        policy.observe(RoundStats(
            drafted=drafted, accepted=accepted, produced=produced, draft_s=rc.draft_s,
            rtt_s=rc.net_s + rc.verify_s, verify_s=rc.verify_s, round_s=rc.round_s,
            energy_j=rc.energy_j, draft_energy_j=rc.draft_energy_j, entropies=seen,
            features=seen_f, catchup_tokens=(pending - 1 if drafted and not predrafted else 0),
            sync_s=(rc.draft_s - (drafted - predrafted - 1) * cost.device.draft_ms_per_token
                    / 1e3 if drafted > predrafted else 0.0),
            predrafted=predrafted, ahead=rc.ahead, ahead_hit=hit, ahead_s=ahead_s,
            ahead_energy_j=rc.ahead_energy_j,
        ))
        t.add(Tally(tokens=produced, time_s=rc.round_s, energy_j=rc.energy_j, rounds=1,
                    drafted=drafted, accepted=accepted))
        # The draft's cache misses the new token, and the last drafted one if all passed;
        # after a hit it holds everything up to the tokens drafted ahead.
        ready = rc.ahead - 1 if hit else 0
        pending = (1 if hit else pending + 1 if drafted == 0
                   else (2 if accepted == drafted else 1))
        pos += produced
    return t


def simulate_oracle(
    trace: Trace, cost: CostModel, accepts: np.ndarray, *, lam_s_per_j: float = 0.0,
    cap: int = ORACLE_CAP, repeat: int = 1,
) -> Tally:
    """The hindsight-optimal drafting schedule minimizing time + ``lam_s_per_j`` * energy."""
    total = Tally()
    for p in range(trace.n_prompts):
        total.add(_oracle_prompt(cost, accepts[trace.prompt_slice(p)], lam_s_per_j, cap))
    return _times(total, repeat)


def _times(t: Tally, k: int) -> Tally:
    return Tally(t.tokens * k, t.time_s * k, t.energy_j * k, t.rounds * k, t.drafted * k,
                 t.accepted * k)


def _oracle_prompt(cost: CostModel, accepts: np.ndarray, lam: float, cap: int) -> Tally:
    n_pos = accepts.shape[0]
    pm = PENDING_MAX
    best = np.zeros((n_pos + 1, pm + 1))  # [position, pending] -> cost to the end
    choice = np.zeros((n_pos + 1, pm + 1), dtype=np.int64)
    price = {}

    def c(b: int, pend: int) -> float:
        key = (b, pend)
        if key not in price:
            rc = cost.round(b, pend)
            price[key] = rc.round_s + lam * rc.energy_j
        return price[key]

    for i in range(n_pos - 1, -1, -1):
        n_max = min(cap, n_pos - i - 1)
        m = leading_accepts(accepts, i, n_max)
        options = list(range(m + 1)) + ([m + 1] if m < n_max else [])
        for pend in range(1, pm + 1):
            best_c, best_b = np.inf, 0
            for b in options:
                acc = min(b, m)
                nxt = i + acc + 1
                npend = min(pend + 1, pm) if b == 0 else (2 if acc == b else 1)
                v = c(b, pend) + best[nxt, npend]
                if v < best_c - 1e-15:
                    best_c, best_b = v, b
            best[i, pend], choice[i, pend] = best_c, best_b
    t = Tally()
    i, pend = 0, 1
    while i < n_pos:
        b = int(choice[i, pend])
        m = leading_accepts(accepts, i, b)
        rc = cost.round(b, pend)
        t.add(Tally(tokens=m + 1, time_s=rc.round_s, energy_j=rc.energy_j, rounds=1,
                    drafted=b, accepted=m))
        pend = min(pend + 1, pm) if b == 0 else (2 if m == b else 1)
        i += m + 1
    return t


STREAM_LENGTHS = (8, 16, 32, 64)  # stretches the oracle with the new actions may stream


def simulate_oracle_actions(
    trace: Trace, cost: CostModel, accepts: np.ndarray, *, lam_s_per_j: float = 0.0,
    cap: int = ORACLE_CAP, repeat: int = 1,
) -> Tally:
    """The hindsight-optimal schedule over GELATO's whole action set: drafting lengths as
    ``simulate_oracle``, plus streaming a stretch (``STREAM_LENGTHS``, or the rest of the
    prompt) and, per round, drafting ahead as far as the wait allows or not."""
    total = Tally()
    for p in range(trace.n_prompts):
        total.add(_oracle_actions_prompt(cost, accepts[trace.prompt_slice(p)], lam_s_per_j,
                                         cap))
    return _times(total, repeat)


def _oracle_actions_prompt(cost: CostModel, accepts: np.ndarray, lam: float,
                           cap: int) -> Tally:
    # State: pending tokens (1..PM) with nothing drafted ahead, or r = 1..R tokens drafted
    # ahead that head the next round (pending 1), stored at index PM + r.
    n_pos = accepts.shape[0]
    pm = PENDING_MAX
    r_max = max(min(cap, cost.ahead_fits(cap)) - 1, 0)
    n_state = pm + 1 + r_max
    best = np.zeros((n_pos + 1, n_state))
    plan: dict[tuple[int, int], tuple[str, int, int]] = {}
    price: dict[tuple[int, ...], tuple[float, object]] = {}

    def rc_of(b: int, pend: int, pre: int, k: int):  # type: ignore[no-untyped-def]
        key = (b, pend, pre, k)
        if key not in price:
            rc = cost.round(b, pend, predrafted=pre, ahead=k)
            price[key] = (rc.round_s + lam * rc.energy_j, rc)
        return price[key]

    def stream_of(n: int) -> tuple[float, float, float]:
        key = (-1, n)
        if key not in price:
            s, e = cost.edge_only(n)
            price[key] = (s + lam * e, (s, e))
        c, (s, e) = price[key]  # type: ignore[misc]
        return c, s, e

    def unpack(st: int) -> tuple[int, int]:
        return (st, 0) if st <= pm else (1, st - pm)

    def after(i: int, b: int, acc: int, pend: int, n_ahead: int) -> int:
        if n_ahead and b and acc == b and i + b < n_pos and accepts[i + b]:
            r = min(n_ahead - 1, r_max)
            return pm + r if r > 0 else 1
        return min(pend + 1, pm) if b == 0 else (2 if acc == b else 1)

    for i in range(n_pos - 1, -1, -1):
        left = n_pos - i
        n_max = min(cap, left - 1)
        m = leading_accepts(accepts, i, n_max)
        options = list(range(m + 1)) + ([m + 1] if m < n_max else [])
        streams = sorted({n for n in STREAM_LENGTHS if n <= left} | {left})
        for st in range(1, n_state):
            pend, ready = unpack(st)
            best_c, choice = np.inf, ("draft", 0, 0)
            for b in options:
                acc = min(b, m)
                for k in ((0, cap) if b else (0,)):
                    c, rc = rc_of(b, pend, min(ready, b), k)
                    v = c + best[i + acc + 1, after(i, b, acc, pend, rc.ahead)]  # type: ignore[attr-defined]
                    if v < best_c - 1e-15:
                        best_c, choice = v, ("draft", b, k)
            for n in streams:
                c, _, _ = stream_of(n)
                v = c + best[i + n, min(pend + n, pm)]
                if v < best_c - 1e-15:
                    best_c, choice = v, ("stream", n, 0)
            best[i, st] = best_c
            plan[(i, st)] = choice
    t = Tally()
    i, st = 0, 1
    while i < n_pos:
        kind, b, k = plan[(i, st)]
        pend, ready = unpack(st)
        if kind == "stream":
            _, s, e = stream_of(b)
            t.add(Tally(tokens=b, time_s=s, energy_j=e))
            i, st = i + b, min(pend + b, pm)
            continue
        acc = leading_accepts(accepts, i, b)
        _, rc = rc_of(b, pend, min(ready, b), k)
        t.add(Tally(tokens=acc + 1, time_s=rc.round_s, energy_j=rc.energy_j, rounds=1,  # type: ignore[attr-defined]
                    drafted=b, accepted=acc))
        st = after(i, b, acc, pend, rc.ahead)  # type: ignore[attr-defined]
        i += acc + 1
    return t


def simulate_oracle_matches(
    trace: Trace, cost: CostModel, accepts: np.ndarray, *, cap: int = ORACLE_CAP,
    repeat: int = 1,
) -> Tally:
    """Per round, draft exactly the leading accepted positions (at most ``cap``)."""
    total = Tally()
    for p in range(trace.n_prompts):
        acc = accepts[trace.prompt_slice(p)]
        n_pos = acc.shape[0]
        i, pend = 0, 1
        while i < n_pos:
            m = leading_accepts(acc, i, min(cap, n_pos - i - 1))
            rc = cost.round(m, pend)
            total.add(Tally(tokens=m + 1, time_s=rc.round_s, energy_j=rc.energy_j, rounds=1,
                            drafted=m, accepted=m))
            pend = pend + 1 if m == 0 else 2
            i += m + 1
    return _times(total, repeat)


class EntropyThresholdPolicy(Policy):
    """Draft while the draft's entropy stays below ``h_max`` nats, at most ``cap`` tokens: the
    family of entropy-stop rules, for the hindsight-tuned reference row."""

    name = "entropy-threshold"
    needs_entropy = True

    def __init__(self, h_max: float, cap: int) -> None:
        self.h_max, self.cap = h_max, cap

    def round_budget(self) -> int:
        return self.cap

    def keep_drafting(self, drafted: int, entropy_nats: float | None) -> bool:
        assert entropy_nats is not None
        return entropy_nats < self.h_max

    def describe(self) -> dict[str, object]:
        return {"h_max": self.h_max, "cap": self.cap}


THRESHOLD_GRID = (0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 1.6, 2.0, 3.0)  # nats
THRESHOLD_CAPS = (4, 8, 16)


def best_entropy_threshold(
    trace: Trace, cost: CostModel, draws: Sequence[tuple[np.ndarray, np.ndarray]], *,
    repeat: int = 1, tick: Callable[[int], None] = lambda n: None,
) -> tuple[Tally, dict[str, object]]:
    """The fastest entropy-stop rule on this trace, its threshold and cap chosen in hindsight:
    how far a policy that sees only the draft's entropy can go (the oracle also sees the
    outcomes)."""
    best: tuple[Tally, dict[str, object]] | None = None
    for cap in THRESHOLD_CAPS:
        for h in THRESHOLD_GRID:
            total = Tally()
            for accepts, ents in draws:
                total.add(simulate_policy(EntropyThresholdPolicy(h, cap), trace, cost,
                                          accepts, ents, repeat=repeat))
            if best is None or total.tokens / total.time_s > best[0].tokens / best[0].time_s:
                best = (total, {"h_max": h, "cap": cap})
        tick(1)
    assert best is not None
    return best


ORACLE_LAMBDAS: Sequence[float] = (0.0, 0.003, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0,
                                   3.0, 10.0, 100.0)
# s/J: the price of a joule in seconds along the oracle frontier, from "time only" to "energy
# only" (a round costs ~10-100 ms and ~0.01-1 J on the built-in profiles)


def row_from_tally(label: str, group: str, t: Tally, *, spec: PolicySpec | None = None,
                   settings: dict[str, Any] | None = None) -> BenchRow:
    """A report row for a simulated run (energy is modelled)."""
    return BenchRow(
        policy=label, group=group, tokens=t.tokens, time_s=t.time_s, energy_j=t.energy_j,
        rounds=t.rounds, drafted=t.drafted, accepted=t.accepted,
        v=spec.v if spec is not None and spec.name == "gelato" else None,
        budget_w=spec.power_budget_w if spec else None,
        budget_j_per_token=spec.energy_per_token_j if spec else None,
        energy_source="modelled", settings=settings or {},
    )


@dataclass(slots=True)
class SimBench:
    """Rows of a simulated benchmark and how its budgets were chosen."""

    rows: list[BenchRow]
    info: dict[str, Any]


def run_sim_bench(
    trace: Trace, cost: CostModel, cfg: BenchConfig, *, sampling: bool = False,
    repeat: int = 1, progress: Callable[[int], None] | None = None,
    acceptance: float | None = None,
) -> SimBench:
    """Every policy of ``cfg`` and the oracles on one trace and cost model.

    Each (policy, seed) gets a fresh policy; tallies add up over seeds (seeds only matter when
    sampling). Phase one runs the baselines and unconstrained GELATO; phase two the V sweep at
    the budget (``cfg``'s, else automatic) and GELATO matched to the baselines' J/token.
    ``acceptance`` thins the trace to that per-token acceptance (``acceptance_outcomes``).
    """
    tick = progress or (lambda n: None)
    draws = [(acceptance_outcomes(trace, sampling=sampling, seed=s, acceptance=acceptance),
              policy_entropies(trace, sampling=sampling)) for s in cfg.seeds]
    feats = trace.features(sampling)

    def run(spec: PolicySpec) -> BenchRow:
        total, policy = Tally(), None
        for accepts, ents in draws:
            policy = spec.make()
            total.add(simulate_policy(policy, trace, cost, accepts, ents, repeat=repeat,
                                      features=feats))
            tick(1)
        assert policy is not None
        return row_from_tally(spec.label, spec.group, total, spec=spec,
                              settings=policy.describe())

    rows = [run(spec) for spec in first_specs(cfg)]
    oracle: list[BenchRow] = []
    for lam in ORACLE_LAMBDAS:
        total = Tally()
        for accepts, _ in draws:
            total.add(simulate_oracle(trace, cost, accepts, lam_s_per_j=lam, repeat=repeat))
            tick(1)
        oracle.append(row_from_tally("oracle" if lam == 0 else f"oracle lambda={lam:g} s/J",
                                     "oracle" if lam == 0 else "oracle-frontier", total,
                                     settings={"lambda_s_per_j": lam, "cap": ORACLE_CAP}))
    total = Tally()
    for accepts, _ in draws:
        total.add(simulate_oracle_matches(trace, cost, accepts, repeat=repeat))
    rows += oracle + [row_from_tally("oracle-matches", "oracle-matches", total,
                                     settings={"cap": ORACLE_CAP})]
    total = Tally()
    for accepts, _ in draws:  # the throughput oracle over GELATO's whole action set
        total.add(simulate_oracle_actions(trace, cost, accepts, repeat=repeat))
        tick(1)
    rows.append(row_from_tally("oracle (all actions)", "oracle-actions", total, settings={
        "lambda_s_per_j": 0.0, "cap": ORACLE_CAP, "stream_lengths": list(STREAM_LENGTHS),
        "ahead": True}))
    if cfg.reference:
        t_ref, settings = best_entropy_threshold(trace, cost, draws, repeat=repeat, tick=tick)
        rows.append(row_from_tally("entropy-threshold*", "reference", t_ref, settings=settings))

    info = choose_budgets(rows, cfg)
    rows += [run(spec) for spec in second_specs(
        cfg, sweep_power_w=info["sweep_power_w"], sweep_j_per_token=info["sweep_j_per_token"],
        matched_j_per_token=info["matched_j_per_token"])]
    return SimBench(rows, info)


def sim_units(cfg: BenchConfig) -> int:
    """Progress units ``run_sim_bench`` reports (for a progress bar's total)."""
    n_first = len(first_specs(cfg))
    n_second = len(cfg.v_sweep) + len(MATCHED_AGAINST) if "gelato" in cfg.policies else 0
    n_ref = len(THRESHOLD_CAPS) if cfg.reference else 0
    return (n_first + len(ORACLE_LAMBDAS) + 1 + n_second) * len(cfg.seeds) + n_ref


__all__ = [
    "ORACLE_CAP",
    "ORACLE_LAMBDAS",
    "EntropyThresholdPolicy",
    "SimBench",
    "Tally",
    "acceptance_outcomes",
    "best_entropy_threshold",
    "leading_accepts",
    "policy_entropies",
    "row_from_tally",
    "run_sim_bench",
    "sim_units",
    "simulate_oracle",
    "simulate_oracle_actions",
    "simulate_oracle_matches",
    "simulate_policy",
]
