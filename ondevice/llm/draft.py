"""The draft side of one generation stream: drafting rounds, committing, generating alone.

Synchronous; the generation loop runs each call in a worker thread. The draft's KV cache holds
a prefix of ``seq`` (prompt + generated); tokens after it are "pending" and are evaluated at
the start of the next draft. After a verdict the cache is trimmed to its longest prefix that
agrees with the committed sequence, so rejected draft tokens are rolled back and accepted ones
are never evaluated twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ondevice.common.llama_runtime import LlamaRunner
from ondevice.common.speculative import (
    GREEDY_EPS,
    entropy_nats,
    sample_full,
    session_rng,
    softmax,
    top_k_proposal,
)


@dataclass(slots=True)
class Drafted:
    """One round's proposal. ``q_ids``/``q_probs`` are ``[n, k]``; times in seconds."""

    ids: np.ndarray  # [n] int32
    q_ids: np.ndarray  # [n, k] int32
    q_probs: np.ndarray  # [n, k] float32
    entropies: list[float]
    draft_s: float
    catchup_tokens: int = 0  # committed tokens evaluated first beyond the usual one


class DraftStream:
    """Draft model state for one prompt; ``out`` is the committed continuation."""

    def __init__(
        self,
        runner: LlamaRunner,
        prompt: list[int],
        *,
        temperature: float,
        top_k: int,
        seed: int,
    ) -> None:
        if not prompt:
            raise ValueError("the prompt has no tokens")
        self.runner = runner
        self.prompt = list(prompt)
        self.out: list[int] = []
        self.temperature = temperature
        self.top_k = top_k
        self.rng = session_rng(seed, "draft")
        self._good = 0  # cache positions known to agree with seq
        self.last_sync_tokens = 0

    @property
    def seq(self) -> list[int]:
        return self.prompt + self.out

    def _sync(self) -> np.ndarray:
        """Trim the cache to agree with ``seq`` and evaluate what is pending; next-token logits.

        Sets ``last_sync_tokens``: how many tokens that evaluation took (1 or 2 after a
        drafted round, more after rounds that drafted nothing, the prompt at the start)."""
        seq = self.seq
        kv = self.runner.tokens
        i = min(self._good, len(kv), len(seq))
        while i < len(kv) and i < len(seq) and kv[i] == seq[i]:
            i += 1
        if i == len(seq):  # everything cached: re-evaluate the last token for its logits
            i -= 1
        self.runner.truncate(i)
        logits = self.runner.eval(seq[i:], 1)[0]  # [vocab]
        self.last_sync_tokens = len(seq) - i
        self._good = len(seq)
        return logits

    def draft(
        self,
        budget: int,
        keep_drafting: Callable[[int, float | None], bool],
        *,
        want_entropy: bool,
        is_eog: Callable[[int], bool],
    ) -> Drafted:
        """Draft up to ``budget`` tokens from the top-k-truncated draft distribution.

        A budget of 0 evaluates nothing: the committed tokens the cache lacks are taken in one
        batch by the next draft (a round that drafts nothing costs no draft time)."""
        t0 = time.perf_counter()
        if budget <= 0:
            empty = np.zeros((0, 1), dtype=np.int32)
            return Drafted(np.zeros(0, dtype=np.int32), empty, empty.astype(np.float32), [],
                           0.0)
        logits = self._sync()
        ids: list[int] = []
        q_ids: list[np.ndarray] = []
        q_probs: list[np.ndarray] = []
        entropies: list[float] = []
        for j in range(budget):
            tok, sup, probs = top_k_proposal(logits, self.temperature, self.top_k, self.rng)
            ids.append(tok)
            q_ids.append(sup)
            q_probs.append(probs)
            ent = None
            if want_entropy:
                t = self.temperature if self.temperature > GREEDY_EPS else 1.0
                ent = entropy_nats(softmax(logits, t))
                entropies.append(ent)
            if is_eog(tok) or j + 1 >= budget or not keep_drafting(j + 1, ent):
                break
            logits = self.runner.eval([tok], 1)[0]
        n = len(ids)
        k = max((len(s) for s in q_ids), default=1)
        qi = np.zeros((n, k), dtype=np.int32)
        qp = np.zeros((n, k), dtype=np.float32)
        for row, (sup, probs) in enumerate(zip(q_ids, q_probs, strict=True)):
            qi[row, : len(sup)] = sup
            qi[row, len(sup) :] = sup[0]  # padding ids carry probability 0
            qp[row, : len(probs)] = probs
        return Drafted(
            np.asarray(ids, dtype=np.int32), qi, qp, entropies, time.perf_counter() - t0,
            catchup_tokens=max(self.last_sync_tokens - 1, 0),
        )

    def commit(self, tokens: list[int]) -> None:
        """Append verified tokens; the cache is reconciled lazily at the next draft."""
        self.out.extend(tokens)

    def generate_alone(self) -> int:
        """The draft model produces (and commits) one token from its full distribution."""
        token = sample_full(self._sync(), self.temperature, self.rng)
        self.out.append(token)
        return token
