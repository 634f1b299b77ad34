"""Lossless speculative sampling: draft-side top-k proposals and edge-side verification.

Pure functions, no I/O. Randomness enters only through a ``numpy.random.Generator`` argument.

The verification rule is the standard one (Leviathan et al. 2023; Chen et al. 2023): token
x_i drafted from q_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)); at the first
rejection the next token is drawn from norm(max(0, p_i - q_i)); if every drafted token is
accepted, one bonus token is drawn from p_{n}. The output then has exactly the target's
distribution p. The draft samples from a top-k-truncated q, so q is exactly sparse: it is zero
outside the k ids sent over the wire and the residual above is exact, not an approximation.

At temperature 0 the target distribution is the point mass on argmax p, and the rule reduces
to "accept while the draft equals the target's argmax, then emit the target's argmax".
"""

from __future__ import annotations

import numpy as np

GREEDY_EPS = 1e-6  # temperatures at or below this are treated as greedy (argmax)
# A greedy choice whose runner-up is this close (in logits) is a near-tie: llama.cpp's logits
# for one position differ by a few hundredths between batch shapes (one token or several per
# decode), enough to flip such a choice. See near_ties and docs/gelato.md.
TIE_GAP = 0.1


def session_rng(seed: int, side: str) -> np.random.Generator:
    """The random stream of one side ("draft" or "target") of a seeded session.

    The two sides must draw independent numbers: if the edge's acceptance uniforms were the
    same numbers the draft sampled its tokens with, acceptance would correlate with the
    drafted token and the output would no longer follow the target's distribution.
    """
    key = {"draft": 0, "target": 1}[side]
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities of ``logits / temperature`` (float64, sums to 1). ``[vocab] -> [vocab]``."""
    z = logits.astype(np.float64) / temperature  # [vocab]
    z -= z.max()
    np.exp(z, out=z)
    z /= z.sum()
    return z


def entropy_nats(probs: np.ndarray) -> float:
    """Shannon entropy of a probability vector, in nats."""
    nz = probs[probs > 0]
    return float(-(nz * np.log(nz)).sum())


def sample_index(probs: np.ndarray, u: float) -> int:
    """Inverse-CDF draw from an unnormalized non-negative vector with uniform ``u`` in [0, 1)."""
    cdf = np.cumsum(probs)  # [vocab]
    idx = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return min(idx, probs.shape[0] - 1)


def top_k_proposal(
    logits: np.ndarray, temperature: float, k: int, rng: np.random.Generator
) -> tuple[int, np.ndarray, np.ndarray]:
    """Draw one draft token from the top-k truncation of softmax(logits / temperature).

    Returns ``(token, ids[k'], probs[k'])`` with k' = min(k, vocab): the support of the
    truncated q and its probabilities (float32, summing to 1). At temperature 0 the proposal
    is the argmax with probability 1 (k' = 1).
    """
    if temperature <= GREEDY_EPS:
        tok = int(np.argmax(logits))
        return tok, np.array([tok], dtype=np.int32), np.ones(1, dtype=np.float32)
    k = min(k, logits.shape[0])
    ids = np.argpartition(logits, -k)[-k:]  # [k], unordered
    q = softmax(logits[ids], temperature)  # [k]
    j = sample_index(q, rng.random())
    return int(ids[j]), ids.astype(np.int32), q.astype(np.float32)


def sample_full(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """One token from softmax(logits / temperature) over the whole vocabulary (argmax at T=0)."""
    if temperature <= GREEDY_EPS:
        return int(np.argmax(logits))
    return sample_index(softmax(logits, temperature), rng.random())


def near_ties(logits: np.ndarray, gap: float = TIE_GAP) -> int:
    """Rows of ``logits [m, vocab]`` whose two largest values differ by less than ``gap``:
    greedy choices a rounding difference could flip."""
    n = 0
    for row in np.atleast_2d(logits):
        best = int(np.argmax(row))
        top = row[best]
        second = max(row[:best].max(initial=-np.inf), row[best + 1:].max(initial=-np.inf))
        n += int(top - second < gap)
    return n


def verify(
    draft: np.ndarray,
    q_ids: np.ndarray,
    q_probs: np.ndarray,
    target_logits: np.ndarray,
    temperature: float,
    rng: np.random.Generator,
) -> tuple[int, int]:
    """Verify drafted tokens against the target; return ``(n_accepted, next_token)``.

    Shapes: ``draft [n]``, ``q_ids [n, k]``, ``q_probs [n, k]``, ``target_logits [n + 1, vocab]``
    where row i holds the target's next-token logits for the position of ``draft[i]`` and row n
    the position after the last drafted token. ``q_probs[i]`` must be the probabilities the
    draft actually sampled ``draft[i]`` from (top-k truncated, zero elsewhere).
    """
    n = draft.shape[0]
    if target_logits.shape[0] != n + 1:
        raise ValueError(f"need {n + 1} rows of target logits, got {target_logits.shape[0]}")
    if temperature <= GREEDY_EPS:
        for i in range(n):
            best = int(np.argmax(target_logits[i]))
            if best != int(draft[i]):
                return i, best
        return n, int(np.argmax(target_logits[n]))
    for i in range(n):
        x = int(draft[i])
        p = softmax(target_logits[i], temperature)  # [vocab]
        hit = np.flatnonzero(q_ids[i] == x)
        qx = float(q_probs[i][hit].sum()) if hit.size else 0.0
        u = rng.random()
        # Accept with probability min(1, p(x)/q(x)); u*q < p avoids dividing by q.
        if qx > 0.0 and u * qx < p[x]:
            continue
        residual = p  # reuse the buffer: max(0, p - q) differs from p only on q's support
        np.add.at(residual, q_ids[i], -q_probs[i].astype(np.float64))  # repeated ids add up
        np.maximum(residual, 0.0, out=residual)
        if residual.sum() <= 0.0:  # p == q up to rounding: any draw from p is exact
            residual = softmax(target_logits[i], temperature)
        return i, sample_index(residual, rng.random())
    return n, sample_full(target_logits[n], temperature, rng)
