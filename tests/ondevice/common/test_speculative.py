"""The rejection sampler: greedy cases by hand, a naive reference, and the output distribution.

Statistical tests use chi-square goodness of fit with a fixed seed and a rejection threshold of
p < 1e-4: a correct sampler fails one of them with probability 1e-4, and a sampler that is off
by a few percent on any token fails with near certainty at these sample sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _stats import P_REJECT, chi2_pvalue

from ondevice.common.speculative import (
    entropy_nats,
    sample_index,
    softmax,
    top_k_proposal,
    verify,
)


def naive_verify(draft, q_ids, q_probs, target_logits, temperature, rng):  # type: ignore[no-untyped-def]
    """Reference: the textbook rule with dictionaries and explicit loops."""
    vocab = target_logits.shape[1]
    for i, x in enumerate(draft.tolist()):
        z = [math.exp(v / temperature) for v in target_logits[i].tolist()]
        s = sum(z)
        p = [v / s for v in z]
        q = {int(t): float(pr) for t, pr in zip(q_ids[i], q_probs[i], strict=True)}
        u = rng.random()
        if q.get(x, 0.0) > 0 and u * q[x] < p[x]:
            continue
        res = [max(0.0, p[v] - q.get(v, 0.0)) for v in range(vocab)]
        total = sum(res)
        u2 = rng.random() * total
        acc = 0.0
        for v in range(vocab):
            acc += res[v]
            if u2 < acc:
                return i, v
        return i, vocab - 1
    z = [math.exp(v / temperature) for v in target_logits[-1].tolist()]
    s = sum(z)
    u = rng.random() * s
    acc = 0.0
    for v, zz in enumerate(z):
        acc += zz
        if u < acc:
            return len(draft), v
    return len(draft), vocab - 1


def test_greedy_accepts_while_argmax_matches() -> None:
    logits = np.array(
        [[0, 5, 1, 0], [3, 0, 0, 0], [0, 0, 0, 9], [1, 2, 3, 4]], dtype=np.float32
    )  # argmaxes 1, 0, 3, 3
    one = np.ones((3, 1), np.float32)
    assert verify(np.array([1, 0, 3]), np.array([[1], [0], [3]]), one, logits, 0.0, None) == (3, 3)
    assert verify(np.array([1, 2, 3]), np.array([[1], [2], [3]]), one, logits, 0.0, None) == (1, 0)
    assert verify(np.array([0, 0, 3]), np.array([[0], [0], [3]]), one, logits, 0.0, None) == (0, 1)
    empty = np.zeros((0, 1))
    assert verify(np.zeros(0, int), empty, empty, logits[3:], 0.0, None) == (0, 3)


def test_verify_rejects_wrong_number_of_rows() -> None:
    with pytest.raises(ValueError):
        verify(np.array([1]), np.array([[1]]), np.ones((1, 1)), np.zeros((1, 4)), 0.0, None)


@pytest.mark.parametrize("seed", range(20))
def test_matches_naive_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vocab, n, k, temp = 12, 4, 5, 0.8
    target = rng.normal(size=(n + 1, vocab)).astype(np.float32) * 2
    draft_logits = target[:n] + rng.normal(size=(n, vocab)).astype(np.float32)
    prop_rng = np.random.default_rng(1000 + seed)
    draft, q_ids, q_probs = [], [], []
    for i in range(n):
        tok, ids, probs = top_k_proposal(draft_logits[i], temp, k, prop_rng)
        draft.append(tok)
        q_ids.append(ids)
        q_probs.append(probs)
    args = (np.array(draft), np.array(q_ids), np.array(q_probs), target, temp)
    got = verify(*args, np.random.default_rng(seed))
    want = naive_verify(*args, np.random.default_rng(seed))
    assert got == want


def test_top_k_proposal_support_and_distribution() -> None:
    rng = np.random.default_rng(0)
    logits = np.random.default_rng(1).normal(size=50).astype(np.float32) * 2
    k, temp = 8, 0.7
    top = np.argsort(logits)[-k:]
    want = np.zeros(50)
    want[top] = softmax(logits[top], temp)
    counts = np.zeros(50)
    for _ in range(20000):
        tok, ids, probs = top_k_proposal(logits, temp, k, rng)
        counts[tok] += 1
    assert set(ids.tolist()) == set(top.tolist())
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)
    assert counts[np.setdiff1d(np.arange(50), top)].sum() == 0
    assert chi2_pvalue(counts[top], want[top]) > P_REJECT


def test_top_k_greedy_is_argmax() -> None:
    logits = np.array([0.1, 3.0, 2.9], np.float32)
    tok, ids, probs = top_k_proposal(logits, 0.0, 16, np.random.default_rng(0))
    assert (tok, ids.tolist(), probs.tolist()) == (1, [1], [1.0])


@pytest.mark.parametrize("k", [1, 3, 8])
def test_one_position_output_distribution_is_target(k: int) -> None:
    """One drafted token: the token emitted first follows p exactly (chi-square)."""
    gen = np.random.default_rng(7)
    vocab, temp = 10, 1.0
    target = gen.normal(size=(2, vocab)).astype(np.float32)
    draft_logits = gen.normal(size=vocab).astype(np.float32)  # a poor draft: many rejections
    p = softmax(target[0], temp)
    rng = np.random.default_rng(11)
    counts = np.zeros(vocab)
    trials = 40000
    for _ in range(trials):
        tok, ids, probs = top_k_proposal(draft_logits, temp, k, rng)
        m, nxt = verify(np.array([tok]), ids[None], probs[None], target, temp, rng)
        counts[tok if m == 1 else nxt] += 1
    assert chi2_pvalue(counts, p) > P_REJECT


def test_two_positions_joint_distribution_is_target() -> None:
    """Two tokens from a context-dependent toy target/draft pair: joint law equals the target's."""
    gen = np.random.default_rng(3)
    vocab, temp, k = 6, 1.0, 3
    t1 = gen.normal(size=vocab)  # target logits for token 1
    t2 = gen.normal(size=(vocab, vocab))  # target logits for token 2 given token 1
    t3 = gen.normal(size=(vocab, vocab, vocab))
    d1 = t1 + gen.normal(size=vocab)
    d2 = t2 + gen.normal(size=(vocab, vocab))
    want = np.outer(softmax(t1, temp), np.ones(vocab)) * np.array(
        [softmax(t2[a], temp) for a in range(vocab)]
    )
    rng = np.random.default_rng(5)
    counts = np.zeros((vocab, vocab))
    for _ in range(30000):
        x1, i1, p1 = top_k_proposal(d1, temp, k, rng)
        x2, i2, p2 = top_k_proposal(d2[x1], temp, k, rng)
        rows = np.stack([t1, t2[x1], t3[x1, x2]])
        m, nxt = verify(np.array([x1, x2]), np.stack([i1, i2]), np.stack([p1, p2]), rows, temp, rng)
        out = [x1, x2][:m] + [nxt]
        if len(out) < 2:  # second token from a fresh one-token round after the first
            x2b, i2b, p2b = top_k_proposal(d2[out[0]], temp, k, rng)
            rows = np.stack([t2[out[0]], t3[out[0], x2b]])
            m2, n2 = verify(np.array([x2b]), i2b[None], p2b[None], rows, temp, rng)
            out.append(x2b if m2 == 1 else n2)
        counts[out[0], out[1]] += 1
    assert chi2_pvalue(counts.ravel(), want.ravel()) > P_REJECT


def test_residual_handles_repeated_support_ids() -> None:
    """Padding or a careless device may repeat ids; the residual must subtract their sum."""
    target = np.log(np.array([[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]], np.float32))
    q_ids = np.array([[0, 0, 1]])
    q_probs = np.array([[0.6, 0.0, 0.4]], np.float32)
    rng = np.random.default_rng(0)
    counts = np.zeros(3)
    for _ in range(20000):
        m, nxt = verify(np.array([1]), q_ids, q_probs, target, 1.0, rng)
        counts[1 if m == 1 else nxt] += 1
    # Token 1 drafted with q=0.4 > p=0.3: accepted w.p. 0.75. Residual max(0, p-q) = (0, 0, 0.2),
    # so a rejection always yields token 2. (Had id 0 counted once at 0.0, token 0 could appear.)
    want = np.array([0.0, 0.75, 0.25])
    assert counts[0] == 0
    assert chi2_pvalue(counts[1:], want[1:]) > P_REJECT


def test_sample_index_and_entropy() -> None:
    assert sample_index(np.array([0.0, 1.0, 0.0]), 0.5) == 1
    assert sample_index(np.array([1.0, 1.0]), 0.999999) == 1
    assert entropy_nats(np.full(4, 0.25)) == pytest.approx(math.log(4))
    assert entropy_nats(np.array([1.0, 0.0])) == 0.0
