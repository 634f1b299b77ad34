"""Trace-driven simulation of drafting policies on a hardware profile. Pure: no I/O, no clock.

Every policy replays the same trace (``trace.py``) through the round loop of the real
generation (``ondevice.llm._round``): it asks ``round_budget()``, drafts while
``keep_drafting(j, H_j)`` says so (fed the recorded entropies), the round accepts the leading
run of accepted positions, produces accepted + 1 tokens, and the policy ``observe``\\ s the
round's ``RoundStats`` with the time and energy the profile prices (``_hardware.CostModel``),
counted as every loop counts a round (``ondevice.llm.round_account``). Acceptance outcomes
are fixed per position before any policy runs (the greedy match, or one Bernoulli draw of the
recorded acceptance probability per position and seed), so every policy meets the same
realizations.

Hindsight references, not policies (they see the outcomes in advance), from
``action_plan.py``'s one dynamic program over (position, the draft's catch-up or tokens drafted
ahead):

- ``oracle``: the cheapest schedule of drafting lengths in hindsight, minimizing time + lambda
  * energy. lambda = 0 gives the highest throughput any schedule of drafting lengths can reach
  on the trace; a sweep over lambda gives the best throughput at each energy per token (the
  oracle frontier).
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
from ondevice.bench.action_plan import (
    ORACLE_CAP,
    STREAM_LENGTHS,
    leading_accepts,
    simulate_oracle,
    simulate_oracle_actions,
    simulate_oracle_matches,
)
from ondevice.bench.report import BenchRow
from ondevice.bench.trace import Trace
from ondevice.llm.acceptance import TokenFeatures
from ondevice.llm.policies import Policy, RoundStats
from ondevice.llm.round_account import DraftCache, RoundTally, ahead_hits, sync_s

# Totals of a simulated or real run (tokens, seconds, joules, rounds, drafted, accepted, ...):
# the tally every round loop keeps, under the name the benchmarks give it.
Tally = RoundTally


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
    """One prompt through the round loop of the real generation (``ondevice.llm._round``),
    each round priced by ``cost`` and counted by ``ondevice.llm.round_account``, the draft's
    cache modelled by its ``DraftCache``.

    Drafting ahead: after a round's drafting the policy may ask for k tokens ahead; as many
    as fit in the round's wait are drafted (``CostModel.round``). They hit when every drafted
    token is accepted and the draft's next token is the edge's (the acceptance outcome at that
    position: exact when greedy, an approximation when sampling, see docs/gelato.md); then the
    next round starts with the hits less one already drafted."""
    tally, cache = Tally(), DraftCache()
    n_pos = accepts.shape[0]
    token_ms = cost.device.draft_ms_per_token
    pos = 0
    policy.begin_prompt()
    while pos < n_pos:
        left = n_pos - pos
        stream = min(policy.stream_tokens(left), left)
        if stream > 0:  # the edge generates alone: one RTT to ask, then token after token
            s, e = cost.edge_only(stream)
            verify_s = stream * cost.verify_s(0)
            policy.observe_stream(stream, s, e, verify_s=verify_s)
            tally.add_stream(stream, s, e, verify_s)
            cache.after_stream(stream)  # the draft catches up on them when it drafts again
            pos += stream
            continue
        drafted, seen, seen_f = _draft(policy, ents, feats, pos,
                                       max(0, min(policy.round_budget(), left - 1)))
        predrafted = cache.predrafted(drafted)
        accepted = leading_accepts(accepts, pos, drafted)
        want = policy.ahead_tokens(drafted) if drafted else 0
        rc = cost.round(drafted, cache.pending, predrafted=predrafted, ahead=want)
        bet = pos + drafted < n_pos and bool(accepts[pos + drafted])
        stats = tally.add_round(RoundStats(
            drafted=drafted, accepted=accepted, produced=accepted + 1,  # accepted <= left - 1
            draft_s=rc.draft_s, rtt_s=rc.net_s + rc.verify_s, verify_s=rc.verify_s,
            round_s=rc.round_s, energy_j=rc.energy_j, draft_energy_j=rc.draft_energy_j,
            entropies=seen, features=seen_f,
            catchup_tokens=cache.catchup_tokens(drafted, predrafted),
            sync_s=sync_s(rc.draft_s, drafted, predrafted, token_ms),
            predrafted=predrafted, ahead=rc.ahead,
            ahead_hit=ahead_hits(rc.ahead, drafted, accepted, bet),
            ahead_s=rc.ahead * token_ms / 1e3, ahead_energy_j=rc.ahead_energy_j,
        ))
        policy.observe(stats)
        cache.after_round(stats)
        pos += stats.produced
    return tally


def _draft(policy: Policy, ents: np.ndarray, feats: tuple[np.ndarray, np.ndarray] | None,
           pos: int, n_max: int) -> tuple[int, list[float], list[TokenFeatures]]:
    """Draft from trace position ``pos``, at most ``n_max`` tokens, while the policy's
    ``keep_drafting`` (fed the recorded entropies, and features if it wants them) says so:
    (tokens drafted, the entropies and the features the policy saw)."""
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
    return drafted, seen, seen_f


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
    "ORACLE_LAMBDAS",
    "EntropyThresholdPolicy",
    "SimBench",
    "Tally",
    "acceptance_outcomes",
    "best_entropy_threshold",
    "policy_entropies",
    "row_from_tally",
    "run_sim_bench",
    "sim_units",
    "simulate_policy",
]
