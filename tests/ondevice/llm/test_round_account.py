"""How a round is counted (``ondevice/llm/round_account.py``): the draft cache's bookkeeping
by hand and against the real ``DraftStream``, the priced first evaluation, the hit rule, the
checks, and that the real loop, the GELATO simulator and the simulated fleet all count their
rounds through the one tally (their totals equal, bit for bit, a tally replayed from what
their policies observed)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ondevice.bench._hardware import CostModel, DeviceProfile, EdgeProfile
from ondevice.bench.gelato_sim import simulate_policy
from ondevice.bench.trace import Trace
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner
from ondevice.llm.draft import DraftStream
from ondevice.llm.policies import FixedPolicy, GelatoPolicy, RoundStats
from ondevice.llm.round_account import (
    DraftCache,
    RoundTally,
    ahead_hits,
    cache_after_round,
    check_round,
    sync_s,
)

SMALL = LlamaConfig(n_ctx=512, n_threads=1)


def _round(drafted: int, accepted: int, **kw: object) -> RoundStats:
    """A round with the given outcome; times and energy made up but distinct."""
    fields: dict[str, object] = {
        "produced": accepted + 1, "draft_s": 0.01 * drafted, "rtt_s": 0.02, "verify_s": 0.005,
        "round_s": 0.03 + 0.01 * drafted, "energy_j": 0.1 + 0.05 * drafted,
        "draft_energy_j": 0.05 * drafted, **kw}
    return RoundStats(drafted=drafted, accepted=accepted, **fields)  # type: ignore[arg-type]


# -- the draft's cache, by hand ------------------------------------------------------------

def test_a_prompt_starts_with_its_last_token_pending() -> None:
    c = DraftCache()
    assert (c.pending, c.ready) == (1, 0)
    assert c.catchup_tokens(4, 0) == 0  # the usual one token, nothing beyond it


def test_rounds_that_draft_nothing_leave_the_catch_up_to_the_next_draft() -> None:
    c = DraftCache()
    for _ in range(3):
        c.after_round(_round(0, 0))
    assert (c.pending, c.ready) == (4, 0)
    assert c.catchup_tokens(0, 0) == 0  # a round that drafts nothing evaluates nothing
    assert c.catchup_tokens(2, 0) == 3  # the next draft takes all four in one batch
    c.after_round(_round(2, 2))
    assert c.pending == 2


def test_after_a_full_accept_two_are_pending_after_a_rejection_one() -> None:
    c = DraftCache(pending=5)
    c.after_round(_round(3, 3))  # the last drafted token was never evaluated, nor the edge's
    assert (c.pending, c.ready) == (2, 0)
    c.after_round(_round(3, 1))  # the cache is trimmed to the accepted prefix
    assert (c.pending, c.ready) == (1, 0)
    c.after_round(_round(3, 2))  # the last drafted token rejected: trimmed before it
    assert (c.pending, c.ready) == (1, 0)


def test_a_hit_leaves_the_tokens_drafted_ahead_ready_and_nothing_to_catch_up() -> None:
    c = DraftCache(pending=3)
    c.after_round(_round(2, 2, ahead=4, ahead_hit=True))
    assert (c.pending, c.ready) == (1, 3)  # the first drafted ahead was the edge's own token
    assert c.predrafted(5) == 3 and c.predrafted(2) == 2
    assert c.catchup_tokens(5, c.predrafted(5)) == 0


def test_a_miss_drops_the_tokens_drafted_ahead() -> None:
    c = DraftCache(ready=2)
    c.after_round(_round(2, 2, ahead=4, ahead_hit=False))  # all accepted, the bet lost
    assert (c.pending, c.ready) == (2, 0)
    c.after_round(_round(2, 2, ahead=3, ahead_hit=True))
    c.after_round(_round(3, 0, ahead=3, ahead_hit=False))  # a rejection
    assert (c.pending, c.ready) == (1, 0)


def test_a_stretch_adds_its_tokens_to_the_catch_up_and_drops_what_was_ready() -> None:
    c = DraftCache()
    c.after_round(_round(2, 2, ahead=3, ahead_hit=True))
    c.after_stream(16)
    assert (c.pending, c.ready) == (17, 0)
    assert c.catchup_tokens(1, c.predrafted(1)) == 16


def test_cache_after_round_is_the_class_rule() -> None:
    for pending in (1, 3):
        for d, a, k, hit in ((0, 0, 0, False), (4, 4, 0, False), (4, 2, 3, False),
                             (4, 4, 3, True), (1, 1, 1, True)):
            c = DraftCache(pending=pending, ready=5)
            c.after_round(_round(d, a, ahead=k, ahead_hit=hit))
            assert (c.pending, c.ready) == cache_after_round(pending, d, a, k, hit)


class _Script:
    """A scripted run of the real draft (``DraftStream`` on the fixture draft model) beside
    ``DraftCache``: ``play`` drafts a round, lets the edge accept what it says and answer
    its own token, and checks that the model predicted what the draft then measured."""

    def __init__(self, model: LlamaModel, runner: LlamaRunner) -> None:
        prompt = model.tokenize("The quick brown fox")
        runner.eval(prompt[:-1], 1)  # the prefill, which the simulators do not count
        self.s = DraftStream(runner, prompt, temperature=0.0, top_k=1, seed=0)
        self.c = DraftCache()
        self.mismatches: list[str] = []

    @staticmethod
    def other(tok: int) -> int:  # a token other than ``tok`` (never EOG, 383)
        return (tok + 1) % 380

    def play(self, budget: int, accept: int | None, ahead: int = 0, bet: bool = True) -> None:
        """Draft ``budget`` (drafting ``ahead`` more in flight), accept ``accept`` of them
        (None: all), then the edge's own token: after a full accept, the first token drafted
        ahead when ``bet`` holds, else another."""
        s, c = self.s, self.c
        d = s.draft(budget, lambda j, h: True, want_entropy=False, is_eog=lambda t: False)
        n = len(d.ids)
        predicted = (c.catchup_tokens(n, c.predrafted(n)), c.predrafted(n))
        if (d.catchup_tokens, d.predrafted) != predicted:
            self.mismatches.append(f"round {budget}/{accept}/{ahead}: the draft measured "
                                   f"{(d.catchup_tokens, d.predrafted)}, the model {predicted}")
        a = n if accept is None else accept
        got = (s.draft_ahead(d, ahead, threading.Event(), want_entropy=False,
                             is_eog=lambda t: False) if ahead else None)
        k = len(got.ids) if got is not None else 0
        ids = d.ids.tolist()
        if a < n:
            token = self.other(ids[a])
        elif got is not None and k:
            token = got.ids[0] if bet else self.other(got.ids[0])
        else:
            token = 1
        s.commit(ids[:a] + [token])
        hit = got is not None and s.adopt_ahead(got)
        assert hit == ahead_hits(k, n, a, bet)
        c.after_round(_round(n, a, ahead=k, ahead_hit=hit))

    def stream(self, tokens: list[int]) -> None:
        self.s.commit(tokens)
        self.c.after_stream(len(tokens))


def test_the_model_is_what_the_real_draft_measures(fixture_models: tuple[Path, Path]) -> None:
    """Rounds that draft nothing, full accepts, rejections, a stretch, drafting ahead with a
    hit, a round that starts on what was drafted ahead, a rejection that drops it: before
    every round ``DraftCache`` predicts the catch-up and the predrafted tokens that
    ``DraftStream`` then measures."""
    with LlamaModel(fixture_models[1]) as m, LlamaRunner(m, SMALL) as r:
        run = _Script(m, r)
        run.play(0, 0)
        run.play(0, 0)
        run.play(3, None)  # catches up on the prompt's last token and two undrafted
        run.play(4, 1)
        run.play(2, None)
        run.stream([5, 6, 7])
        run.play(2, None, ahead=4)  # a hit: three ready
        run.play(5, 3)  # starts on them, then a rejection
        run.play(2, None, ahead=3)  # a hit again
        run.play(3, 1, ahead=2)  # starts on them; a rejection drops what it drafted ahead
        run.play(2, None)
        run.play(1, 0)
        assert run.mismatches == []


@pytest.mark.xfail(strict=True, reason="the simulators' cache model prices one catch-up token "
                   "too many after a full accept whose last drafted token the real draft has "
                   "already evaluated (drafting ahead on a lost bet, or a round shorter than "
                   "what was ready); kept so that the simulated benchmarks stay as they are")
def test_the_model_after_a_full_accept_that_evaluated_its_last_token(
        fixture_models: tuple[Path, Path]) -> None:
    with LlamaModel(fixture_models[1]) as m, LlamaRunner(m, SMALL) as r:
        run = _Script(m, r)
        run.play(2, None, ahead=3, bet=False)  # all accepted, the bet lost
        run.play(2, None)
        run.play(2, None, ahead=4)  # a hit: three ready
        run.play(2, None)  # drafts two of the three; the third was evaluated
        run.play(2, None)
        assert run.mismatches == []


# -- the priced first evaluation, the hit rule, the checks ----------------------------------

def test_sync_s_is_the_first_evaluation_by_hand() -> None:
    # 3 fresh tokens at 10 ms after a catch-up of 2 extra tokens at 2 ms: 34 ms of drafting,
    # of which the first evaluation (the batch of 3 and the first token) is 14 ms.
    assert sync_s(0.034, 3, 0, 10.0) == pytest.approx(0.014)
    assert sync_s(0.010, 3, 2, 10.0) == pytest.approx(0.010)  # one fresh token: all of it
    assert sync_s(0.0, 2, 2, 10.0) == 0.0  # nothing fresh: no evaluation
    assert sync_s(0.0, 0, 0, 10.0) == 0.0


def test_sync_s_matches_the_cost_model() -> None:
    dev = DeviceProfile(name="d", draft_ms_per_token=10.0, prefill_ms_per_token=2.0,
                        draft_w=5.0, wait_w=2.0, tx_j_per_byte=0.0, tx_j_per_packet=0.0,
                        rx_j_per_byte=0.0, rx_j_per_packet=0.0, uplink_mbit_s=100.0,
                        downlink_mbit_s=100.0, rtt_ms=10.0)
    cost = CostModel(dev, EdgeProfile(name="e", verify_t0_ms=5.0, verify_ms_per_token=1.0))
    for drafted, pending in ((1, 1), (4, 1), (4, 3), (2, 6)):
        rc = cost.round(drafted, pending)
        one = cost.draft_s(1, pending)  # the first evaluation on its own
        assert sync_s(rc.draft_s, drafted, 0, 10.0) == pytest.approx(one)


def test_a_hit_needs_a_bet_every_token_accepted_and_the_edges_token() -> None:
    assert ahead_hits(3, 4, 4, True)
    assert not ahead_hits(0, 4, 4, True)  # nothing drafted ahead
    assert not ahead_hits(3, 4, 3, True)  # a rejection
    assert not ahead_hits(3, 4, 4, False)  # the edge chose another next token
    assert not ahead_hits(3, 0, 0, True)  # nothing drafted


@pytest.mark.parametrize(("stats", "why"), [
    (_round(2, 3), "accepted 3 of 2"),
    (_round(2, 1, produced=3), "produced 3"),
    (_round(2, 2, produced=-1), "produced -1"),
    (_round(2, 2, predrafted=3), "predrafted 3"),
    (_round(2, 2, ahead=-1), "drafted -1 ahead"),
    (_round(2, 1, ahead=3, ahead_hit=True), "a hit"),
    (_round(2, 2, ahead=0, ahead_hit=True), "a hit"),
    (_round(0, 0, ahead=2, ahead_hit=True), "a hit"),
])
def test_impossible_rounds_are_refused_and_not_counted(stats: RoundStats, why: str) -> None:
    tally = RoundTally()
    with pytest.raises(ValueError, match=why):
        tally.add_round(stats)
    assert tally == RoundTally()
    check_round(_round(2, 1, produced=0))  # cut at an end-of-generation token: possible


# -- the tally ------------------------------------------------------------------------------

def test_the_tally_adds_rounds_and_stretches() -> None:
    tally = RoundTally()
    a = _round(3, 3, ahead=2, ahead_hit=True)
    assert tally.add_round(a) is a  # what the policy observes
    tally.add_round(_round(0, 0))
    tally.add_stream(8, 0.5, 1.5, verify_s=0.08)
    assert (tally.rounds, tally.drafted, tally.accepted, tally.tokens) == (2, 3, 3, 4 + 1 + 8)
    assert (tally.ahead, tally.ahead_hits) == (2, 1)
    assert tally.time_s == pytest.approx(0.06 + 0.03 + 0.5)
    assert tally.energy_j == pytest.approx(0.25 + 0.1 + 1.5)
    assert tally.draft_s == pytest.approx(0.03)
    assert tally.verify_s == pytest.approx(0.005 * 2 + 0.08)
    assert tally.rtt_s == pytest.approx(0.04)
    with pytest.raises(ValueError):
        tally.add_stream(-1, 0.0, 0.0)


def _replay(observed: list[RoundStats | tuple[int, float, float]]) -> RoundTally:
    """A fresh tally fed, in order, what a policy observed: rounds and (tokens, s, J)
    stretches."""
    tally = RoundTally()
    for x in observed:
        if isinstance(x, RoundStats):
            tally.add_round(x)
        else:
            tally.add_stream(*x)
    return tally


class _Watch(GelatoPolicy):
    """GELATO noting, prompt by prompt, every round and stretch it is told of."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.prompts: list[list[RoundStats | tuple[int, float, float]]] = []

    @property
    def seen(self) -> list[RoundStats | tuple[int, float, float]]:
        return [x for p in self.prompts for x in p]

    def begin_prompt(self) -> None:
        super().begin_prompt()
        self.prompts.append([])

    def observe(self, stats: RoundStats) -> None:
        super().observe(stats)
        self.prompts[-1].append(stats)

    def observe_stream(self, tokens: int, time_s: float, energy_j: float,
                       edge_advice: bool | None = None, verify_s: float | None = None) -> None:
        super().observe_stream(tokens, time_s, energy_j, edge_advice, verify_s)
        self.prompts[-1].append((tokens, time_s, energy_j))


def _shipped() -> Trace:
    from ondevice.bench.trace import shipped_trace

    return Trace.load(shipped_trace())


def _cost(device: str, edge: str) -> CostModel:
    from ondevice.bench._hardware import load_profile

    return CostModel(load_profile(device, "device"),  # type: ignore[arg-type]
                     load_profile(edge, "edge"))  # type: ignore[arg-type]


@pytest.mark.parametrize(("device", "edge"), [("rpi5", "edge-gpu"),
                                              ("jetson-orin-nano", "edge-gpu-32k")])
def test_the_simulator_counts_what_its_policy_observes(device: str, edge: str) -> None:
    """The GELATO simulator's totals are the tally of its policy's observations, bit for
    bit: nothing is counted apart from what the policy learns from. (On the first pair
    GELATO streams, on the second it drafts ahead and hits.)"""
    trace, cost = _shipped(), _cost(device, edge)
    policy = _Watch()
    t = simulate_policy(policy, trace, cost, trace.match, trace.entropy,
                        features=trace.features(False))
    s = cost.device.draft_ms_per_token / 1e3  # the calibration before the first prompt
    tokens, time_s, energy_j = 0, 2 * s, 2 * s * cost.device.draft_w
    for prompt in policy.prompts:
        ref = _replay(prompt)
        tokens, time_s, energy_j = tokens + ref.tokens, time_s + ref.time_s, (
            energy_j + ref.energy_j)
    assert (t.tokens, t.time_s, t.energy_j) == (tokens, time_s, energy_j)
    ref = _replay(policy.seen)
    assert (t.rounds, t.drafted, t.accepted) == (ref.rounds, ref.drafted, ref.accepted)
    assert t.tokens == trace.n_positions
    streams = sum(isinstance(x, tuple) for x in policy.seen)
    assert streams > 0 if device == "rpi5" else ref.ahead_hits > 0


def test_the_fleet_counts_what_its_policies_observe() -> None:
    """Every simulated device's totals are the tally of what its policy observed, its
    budgets per round those of the rounds observed."""
    from ondevice.bench.fleet import prompt_traces, simulate_fleet

    trace = _shipped()
    pts = prompt_traces(trace, [[2]] * trace.n_prompts)
    watched: list[_Watch] = []

    def make(name: str, **kw: object) -> _Watch:
        watched.append(_Watch())
        return watched[-1]

    for device, edge in (("rpi5", "edge-gpu"), ("jetson-orin-nano", "edge-gpu-32k")):
        watched.clear()
        res = simulate_fleet(pts, "gelato", 3, _cost(device, edge), 100, make=make)
        for r, policy in zip(res, watched, strict=True):
            assert r.tally == _replay(policy.seen)
            assert r.tokens == 100
            assert r.b_history == [x.drafted for x in policy.seen if isinstance(x, RoundStats)]


async def test_the_real_loop_reports_what_its_policy_observed(
        fixture_models: tuple[Path, Path], edge: object) -> None:
    """A real generation against the fixture edge: the report's round totals are the tally
    of the rounds its policy observed."""
    from ondevice.llm.generate import GenerateRequest, generate

    seen: list[RoundStats] = []

    class Watch(FixedPolicy):
        def observe(self, stats: RoundStats) -> None:
            seen.append(stats)

    report = await generate(str(fixture_models[1]),
                            GenerateRequest(prompt="Once upon a time", max_tokens=40),
                            Watch(3, ahead=2), edge_url=edge.url,  # type: ignore[attr-defined]
                            llama_config=SMALL)
    ref = _replay(list(seen))
    assert report.rounds == ref.rounds == len(seen) > 0
    assert (report.drafted, report.accepted) == (ref.drafted, ref.accepted)
    assert (report.ahead_drafted, report.ahead_hits) == (ref.ahead, ref.ahead_hits)
    assert report.n_tokens == ref.tokens
    assert report.mean_draft_ms == ref.draft_s / ref.rounds * 1e3
    assert report.mean_rtt_ms == ref.rtt_s / ref.rounds * 1e3
    assert report.mean_verify_ms == ref.verify_s / ref.rounds * 1e3
