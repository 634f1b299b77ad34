"""GELATO's choice between drafting and streaming (``ondevice/llm/_gelato_policy.py``): it does
not lock in, it costs nothing where one action is best by far, its stretches stop where the
prompt does, and a seed makes it reproducible. Replayed through the simulator on hand-made
traces and the built-in profiles."""

from __future__ import annotations

import numpy as np

from ondevice.bench._hardware import CostModel, load_profile
from ondevice.bench.gelato_sim import (
    acceptance_outcomes,
    policy_entropies,
    simulate_policy,
)
from ondevice.bench.trace import Trace
from ondevice.llm.policies import EdgeOnlyPolicy, GelatoPolicy, RoundStats

TOKENS = 100  # per prompt


def _trace(prompts: list[tuple[bool, float]]) -> Trace:
    """One prompt per (every token accepted?, entropy), TOKENS positions each."""
    return Trace.from_prompts([[h] * TOKENS for _, h in prompts],
                              [[ok] * TOKENS for ok, _ in prompts])


class Recorder(GelatoPolicy):
    """GELATO that notes, per prompt, the tokens it streamed."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.per_prompt: list[int] = []

    def begin_prompt(self) -> None:
        super().begin_prompt()
        self.per_prompt.append(0)

    def observe_stream(self, tokens: int, *args: object, **kw: object) -> None:
        super().observe_stream(tokens, *args, **kw)  # type: ignore[arg-type]
        self.per_prompt[-1] += tokens


def _run(policy: GelatoPolicy, trace: Trace, device: str, edge: str):  # type: ignore[no-untyped-def]
    cost = CostModel(load_profile(device, "device"), load_profile(edge, "edge"))
    acc = acceptance_outcomes(trace, sampling=False)
    ent = policy_entropies(trace, sampling=False)
    return simulate_policy(policy, trace, cost, acc, ent)


def test_streaming_for_a_while_does_not_lock_drafting_out() -> None:
    """Twenty prompts the draft gets all wrong (streaming is best), then twenty it gets all
    right on a pair where drafting then doubles the rate: GELATO streams the first (after its
    first rounds), comes back to drafting in the second as the stale evidence fades (weight
    0.999 a token), and streams less than a tenth of the last five."""
    trace = _trace([(False, 3.0)] * 20 + [(True, 0.1)] * 20)
    policy = Recorder()
    _run(policy, trace, "jetson-orin-nano", "edge-gpu-32k")
    first, last = policy.per_prompt[1:20], policy.per_prompt[35:]
    assert sum(first) >= 0.9 * len(first) * TOKENS, first
    assert sum(last) <= 0.1 * len(last) * TOKENS, last


def test_drafting_for_a_while_does_not_lock_streaming_out() -> None:
    """The other way round: prompts where drafting pays, then prompts the draft gets all
    wrong; GELATO streams most of the last ten."""
    trace = _trace([(True, 0.1)] * 20 + [(False, 3.0)] * 20)
    policy = Recorder()
    _run(policy, trace, "jetson-orin-nano", "edge-gpu-32k")
    assert sum(policy.per_prompt[:20]) <= 0.1 * 20 * TOKENS, policy.per_prompt[:20]
    assert sum(policy.per_prompt[30:]) >= 0.8 * 10 * TOKENS, policy.per_prompt[30:]


def test_no_exploration_where_drafting_can_never_pay() -> None:
    """A Raspberry Pi 5 drafting for a fast edge GPU: even a perfect draft loses to streaming,
    so after the rounds that first measure drafting every token is streamed, about one round
    trip a prompt (a few more while streaming's price is first learned): within 0.5 % of
    edge-only."""
    trace = _trace([(True, 0.1)] * 30)
    policy = Recorder()
    tally = _run(policy, trace, "rpi5", "edge-gpu")
    edge_only = _run(EdgeOnlyPolicy(), trace, "rpi5", "edge-gpu")  # type: ignore[arg-type]
    assert sum(policy.per_prompt[1:]) == 29 * TOKENS and policy.rounds <= policy.FIRST_ROUNDS
    assert tally.tokens / tally.time_s >= 0.995 * edge_only.tokens / edge_only.time_s
    assert policy.stretches <= 30 + 3


def test_a_stretch_stops_where_the_prompt_does() -> None:
    policy = GelatoPolicy()
    for _ in range(policy.FIRST_ROUNDS):  # drafting measured: slow and never accepted
        policy.begin_prompt()
        policy.round_budget()
        policy.observe(RoundStats(drafted=4, accepted=0, produced=1, draft_s=0.4, rtt_s=0.02,
                                  verify_s=0.01, round_s=0.42, energy_j=4.0,
                                  draft_energy_j=3.9, entropies=[3.0] * 4))
    policy.begin_prompt()
    assert 0 < policy.stream_tokens(left=5) <= 5
    assert policy.stream_tokens(left=1) == 0  # one token left: a round gives it


def test_a_seed_makes_it_reproducible() -> None:
    rng = np.random.default_rng(0)
    trace = _trace([(bool(rng.random() < 0.7), float(rng.random() * 2)) for _ in range(12)])
    runs = [_run(GelatoPolicy(seed=s), trace, "jetson-orin-nano", "edge-gpu-70b")
            for s in (5, 5)]
    assert runs[0] == runs[1]
