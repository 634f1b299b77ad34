"""Issue 14 item 2: drafting ahead while the edge verifies. The device keeps drafting past a
round in flight; on a hit those tokens head the next round, otherwise they are dropped and the
draft's cache rolls back. The output stays exactly the target's (greedy) and follows its law
(sampling)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from _edge import EdgeProc, KillEdgeAfter, Reference, SeedRecorder, edge_server
from _stats import P_REJECT, chi2_pvalue

from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner
from ondevice.common.speculative import softmax
from ondevice.llm.draft import DraftStream
from ondevice.llm.generate import GenerateRequest, generate
from ondevice.llm.policies import FixedPolicy, GelatoPolicy, Policy, RoundStats

SMALL = LlamaConfig(n_ctx=512, n_threads=1)
PROMPT = "The quick brown fox jumps"


@pytest.mark.parametrize("policy", [FixedPolicy(1, ahead=3), FixedPolicy(4, ahead=6),
                                    FixedPolicy(2, ahead=1), GelatoPolicy()],
                         ids=["fixed1+3", "fixed4+6", "fixed2+1", "gelato"])
async def test_greedy_output_is_the_targets_with_drafting_ahead(
        fixture_models: tuple[Path, Path], edge: EdgeProc, target_ref: Reference,
        policy: Policy) -> None:
    report = await generate(str(fixture_models[1]), GenerateRequest(prompt=PROMPT, max_tokens=60),
                            policy, edge_url=edge.url, llama_config=SMALL)
    assert not report.degraded, report.degraded_reason
    assert report.tokens == target_ref.greedy(PROMPT, 60)
    if isinstance(policy, FixedPolicy) and policy.ahead > 1:
        assert report.ahead_drafted > 0 and report.ahead_hits > 0, report


def test_a_hit_heads_the_next_round_and_a_miss_rolls_back(
        fixture_models: tuple[Path, Path]) -> None:
    """On the draft alone: after drafting ahead, a round whose verdict continues the bet
    starts with the tokens drafted ahead (no evaluation for them) and then drafts exactly what
    a fresh draft would; after a verdict that breaks the bet, the next round equals a fresh
    draft of the committed sequence."""
    with LlamaModel(fixture_models[1]) as m:
        prompt = m.tokenize(PROMPT)

        def fresh(seq: list[int], n: int) -> list[int]:
            with LlamaRunner(m, SMALL) as r:
                s = DraftStream(r, seq, temperature=0.0, top_k=1, seed=0)
                return s.draft(n, lambda j, h: True, want_entropy=False,
                               is_eog=lambda t: False).ids.tolist()

        with LlamaRunner(m, SMALL) as r:
            s = DraftStream(r, prompt, temperature=0.0, top_k=1, seed=0)
            first = s.draft(3, lambda j, h: True, want_entropy=True, is_eog=lambda t: False)
            ahead = s.draft_ahead(first, 4, threading.Event(), want_entropy=True,
                                  is_eog=lambda t: False)
            assert len(ahead.ids) == 4
            assert first.ids.tolist() + ahead.ids == fresh(prompt, 7)
            s.commit(first.ids.tolist() + [ahead.ids[0]])  # all accepted, the bet's token
            assert s.adopt_ahead(ahead)
            nxt = s.draft(5, lambda j, h: True, want_entropy=True, is_eog=lambda t: False)
            assert nxt.predrafted == 3 and nxt.catchup_tokens == 0
            assert nxt.ids.tolist() == fresh(s.seq, 5)
            assert len(nxt.entropies) == 5
            # A miss: the verdict takes one drafted token and its own, different, next token.
            ahead = s.draft_ahead(nxt, 3, threading.Event(), want_entropy=False,
                                  is_eog=lambda t: False)
            other = (int(nxt.ids[1]) + 1) % m.n_vocab
            s.commit([int(nxt.ids[0]), other])
            assert not s.adopt_ahead(ahead)
            again = s.draft(4, lambda j, h: True, want_entropy=False, is_eog=lambda t: False)
            assert again.predrafted == 0
            assert again.ids.tolist() == fresh(s.seq, 4)


def test_drafting_ahead_stops_when_the_verdict_comes(fixture_models: tuple[Path, Path]) -> None:
    with LlamaModel(fixture_models[1]) as m, LlamaRunner(m, SMALL) as r:
        s = DraftStream(r, m.tokenize(PROMPT), temperature=0.0, top_k=1, seed=0)
        first = s.draft(2, lambda j, h: True, want_entropy=False, is_eog=lambda t: False)
        stop = threading.Event()
        stop.set()
        ahead = s.draft_ahead(first, 10, stop, want_entropy=False, is_eog=lambda t: False)
        assert len(ahead.ids) == 1  # the token in progress is finished, no more


async def test_edge_lost_while_drafting_ahead_loses_nothing(
        fixture_models: tuple[Path, Path], target_ref: Reference) -> None:
    """The edge is killed after the third round, while the device drafts ahead: the
    generation finishes on the draft alone from exactly the committed tokens."""
    target, draft = fixture_models

    class KillAhead(KillEdgeAfter):
        def ahead_tokens(self, drafted: int) -> int:
            return 4

    with edge_server(target, "--n-ctx", "512") as e:
        report = await generate(str(draft), GenerateRequest(prompt=PROMPT, max_tokens=40),
                                KillAhead(3, e, 3), edge_url=e.url, llama_config=SMALL,
                                edge_timeout_s=5.0)
    assert report.degraded and report.degraded_at_token is not None
    k = report.degraded_at_token
    assert report.tokens[:k] == target_ref.greedy(PROMPT, k)
    assert report.n_tokens == 40 or report.stop_reason == "eos"


async def test_sampling_follows_target_distribution_with_drafting_ahead(
        fixture_models: tuple[Path, Path], edge: EdgeProc, target_ref: Reference) -> None:
    """Temperature 1, gamma 1 and 3 tokens drafted ahead, 1500 seeds: the first round makes
    tokens 1-2, and on a hit token 3 comes from a round headed by tokens drafted ahead. The
    third token, given the most frequent first two, follows the target's conditional law;
    the first token its next-token law (chi-square, p < 1e-4 rejects, as test_generate)."""
    prompt = "Once upon a time"
    rec = SeedRecorder(fixture_models[1], SMALL)
    policy = _CountHits(1, ahead=3)
    try:
        outs = await rec.tokens(edge.url, prompt, policy, range(1500), 3)
    finally:
        rec.close()
    ids = target_ref.tokenize(prompt)
    p1 = softmax(target_ref.next_logits(ids), 1.0)
    first = np.bincount([o[0] for o in outs], minlength=p1.shape[0]).astype(float)
    assert chi2_pvalue(first, p1) > P_REJECT
    pairs: dict[tuple[int, int], int] = {}
    for o in outs:
        if len(o) > 2:
            pairs[(o[0], o[1])] = pairs.get((o[0], o[1]), 0) + 1
    top = max(pairs, key=pairs.__getitem__)
    p3 = softmax(target_ref.next_logits(ids + list(top)), 1.0)
    third = np.bincount([o[2] for o in outs if len(o) > 2 and (o[0], o[1]) == top],
                        minlength=p3.shape[0]).astype(float)
    assert third.sum() >= 100, f"only {third.sum():.0f} samples after the top pair"
    assert chi2_pvalue(third, p3) > P_REJECT
    assert policy.hits >= 150, policy.hits  # rounds headed by tokens drafted ahead


class _CountHits(FixedPolicy):
    def __init__(self, gamma: int, *, ahead: int) -> None:
        super().__init__(gamma, ahead=ahead)
        self.hits = 0

    def observe(self, stats: RoundStats) -> None:
        self.hits += int(stats.ahead_hit)


def test_draft_ahead_flag(fixture_models: tuple[Path, Path]) -> None:
    """``--draft-ahead``: N for fixed, 0 turns gelato's off, refused for other policies."""
    import subprocess
    import sys

    from ondevice.llm.policies import make_policy

    assert make_policy("fixed", gamma=3, draft_ahead=5).ahead_tokens(3) == 5
    assert make_policy("fixed").ahead_tokens(3) == 0
    assert make_policy("gelato", draft_ahead=0).ahead is False  # type: ignore[attr-defined]
    assert make_policy("gelato").ahead is True  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="gelato and fixed"):
        make_policy("adaedl", draft_ahead=2)
    done = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(fixture_models[1]),
         "--no-discover", "--policy", "adaedl", "--draft-ahead", "2", "--prompt", "x"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "gelato and fixed" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(fixture_models[1]),
         "--no-discover", "--draft-ahead", "-1", "--prompt", "x"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--draft-ahead" in done.stderr
