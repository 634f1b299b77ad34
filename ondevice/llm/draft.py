"""The draft side of one generation stream: drafting rounds, committing, generating alone.

Synchronous; the generation loop runs each call in a worker thread. The draft's KV cache holds
a prefix of ``seq`` (prompt + generated); tokens after it are "pending" and are evaluated at
the start of the next draft. After a verdict the cache is trimmed to its longest prefix that
agrees with the committed sequence, so rejected draft tokens are rolled back and accepted ones
are never evaluated twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
from ondevice.llm.acceptance import TokenFeatures, top_two


@dataclass(slots=True)
class Drafted:
    """One round's proposal. ``q_ids``/``q_probs`` are ``[n, k]``; times in seconds."""

    ids: np.ndarray  # [n] int32
    q_ids: np.ndarray  # [n, k] int32
    q_probs: np.ndarray  # [n, k] float32
    entropies: list[float]
    draft_s: float
    catchup_tokens: int = 0  # committed tokens evaluated first beyond the usual one
    sync_s: float = 0.0  # of draft_s, the first evaluation (it took the catch-up batch)
    predrafted: int = 0  # of ``ids``, how many were drafted ahead during the last round
    features: list[TokenFeatures] = field(default_factory=list)  # per token, if asked


@dataclass(slots=True)
class Ahead:
    """Tokens drafted while a round was in flight, past its last drafted token: ``base`` is
    the sequence they continue (the committed tokens and the round's drafts)."""

    base: list[int]
    ids: list[int] = field(default_factory=list)
    q_ids: list[np.ndarray] = field(default_factory=list)
    q_probs: list[np.ndarray] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    features: list[TokenFeatures] = field(default_factory=list)
    draft_s: float = 0.0


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
        self._ready: Ahead | None = None  # drafted ahead, valid for the committed seq

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

    def _propose(self, logits: np.ndarray, want_entropy: bool, position: int
                 ) -> tuple[int, np.ndarray, np.ndarray, float | None, TokenFeatures | None]:
        """A drafted token, its top-k support and probabilities, and (if asked) its entropy
        and features, all from one softmax at the sampling temperature (T = 1 when greedy)."""
        tok, sup, probs = top_k_proposal(logits, self.temperature, self.top_k, self.rng)
        if not want_entropy:
            return tok, sup, probs, None, None
        p = softmax(logits, self.temperature if self.temperature > GREEDY_EPS else 1.0)
        ent = entropy_nats(p)
        top1, margin = top_two(p)
        return tok, sup, probs, ent, TokenFeatures(ent, top1, margin, position)

    def _take_ready(self) -> Ahead | None:
        """The tokens drafted ahead if they continue the committed sequence and the cache
        still holds what they were drafted from, else None (they are dropped)."""
        ready, self._ready = self._ready, None
        if ready is None or not ready.ids:
            return None
        seq = self.seq
        kv = self.runner.tokens
        n = len(seq)
        if ready.base != seq or kv[:n] != seq or kv[n : n + len(ready.ids) - 1] != (
                ready.ids[:-1]):
            return None
        return ready

    def draft(
        self,
        budget: int,
        keep_drafting: Callable[..., bool],
        *,
        want_entropy: bool,
        is_eog: Callable[[int], bool],
        want_features: bool = False,
    ) -> Drafted:
        """Draft up to ``budget`` tokens from the top-k-truncated draft distribution.

        A budget of 0 evaluates nothing: the committed tokens the cache lacks are taken in one
        batch by the next draft (a round that drafts nothing costs no draft time). Tokens
        drafted ahead during the last round (``adopt_ahead``) come first, at no cost, each
        still judged by ``keep_drafting``: ``keep_drafting(j, entropy)``, or with
        ``want_features`` ``keep_drafting(j, entropy, features)``."""
        t0 = time.perf_counter()
        ready = self._take_ready()
        if budget <= 0:
            empty = np.zeros((0, 1), dtype=np.int32)
            return Drafted(np.zeros(0, dtype=np.int32), empty, empty.astype(np.float32), [],
                           0.0)
        want_entropy = want_entropy or want_features
        out = Ahead(base=[])
        self.last_sync_tokens = 1

        def keep(j: int, ent: float | None, feats: TokenFeatures | None) -> bool:
            return keep_drafting(j, ent, feats) if want_features else keep_drafting(j, ent)

        if ready is not None:  # the cache holds seq + ready.ids[:-1]
            for j, tok in enumerate(ready.ids):
                ent = ready.entropies[j] if want_entropy and ready.entropies else None
                feats = ready.features[j] if want_features and ready.features else None
                self._push(out, tok, ready.q_ids[j], ready.q_probs[j], ent, feats)
                if is_eog(tok) or j + 1 >= budget or not keep(j + 1, ent, feats):
                    return self._pack(out, t0, j + 1)
            self._good = len(self.seq)
            logits = self.runner.eval([ready.ids[-1]], 1)[0]
            sync_s = 0.0
        else:
            s0 = time.perf_counter()
            logits = self._sync()
            sync_s = time.perf_counter() - s0
        pre = len(out.ids)
        for j in range(pre, budget):
            tok, sup, probs, ent, feats = self._propose(logits, want_entropy, j)
            self._push(out, tok, sup, probs, ent, feats)
            if is_eog(tok) or j + 1 >= budget or not keep(j + 1, ent, feats):
                break
            logits = self.runner.eval([tok], 1)[0]
        return self._pack(out, t0, pre, sync_s)

    @staticmethod
    def _push(out: Ahead, tok: int, sup: np.ndarray, probs: np.ndarray, ent: float | None,
              feats: TokenFeatures | None) -> None:
        out.ids.append(tok)
        out.q_ids.append(sup)
        out.q_probs.append(probs)
        if ent is not None:
            out.entropies.append(ent)
        if feats is not None:
            out.features.append(feats)

    def _pack(self, out: Ahead, t0: float, pre: int, sync_s: float = 0.0) -> Drafted:
        n = len(out.ids)
        k = max((len(s) for s in out.q_ids), default=1)
        qi = np.zeros((n, k), dtype=np.int32)
        qp = np.zeros((n, k), dtype=np.float32)
        for row, (sup, probs) in enumerate(zip(out.q_ids, out.q_probs, strict=True)):
            qi[row, : len(sup)] = sup
            qi[row, len(sup) :] = sup[0]  # padding ids carry probability 0
            qp[row, : len(probs)] = probs
        return Drafted(
            np.asarray(out.ids, dtype=np.int32), qi, qp, out.entropies,
            time.perf_counter() - t0, catchup_tokens=max(self.last_sync_tokens - 1, 0),
            predrafted=pre, features=out.features, sync_s=sync_s,
        )

    def draft_ahead(self, drafted: Drafted, n: int, stop: threading.Event, *,
                    want_entropy: bool, is_eog: Callable[[int], bool]) -> Ahead:
        """While ``drafted`` is being verified: draft up to ``n`` more tokens past it, on the
        bet that all of it is accepted. Stops early once ``stop`` is set (the verdict came;
        the token in progress is finished first) or at an end-of-generation token. Uses only
        the draft's cache and its generator; the committed sequence is not touched."""
        t0 = time.perf_counter()
        base = self.seq + drafted.ids.tolist()
        out = Ahead(base=base)
        if n <= 0 or drafted.ids.shape[0] == 0 or is_eog(int(drafted.ids[-1])):
            return out
        # The cache holds seq + drafted[:-1] (the last drafted token was never evaluated).
        logits = self.runner.eval([int(drafted.ids[-1])], 1)[0]
        for j in range(n):
            # Positions in the next round: the first token is the bet, the rest follow it.
            tok, sup, probs, ent, feats = self._propose(logits, want_entropy, max(j - 1, 0))
            self._push(out, tok, sup, probs, ent, feats)
            if stop.is_set() or is_eog(tok) or j + 1 >= n:
                break
            logits = self.runner.eval([tok], 1)[0]
        out.draft_s = time.perf_counter() - t0
        return out

    def adopt_ahead(self, ahead: Ahead) -> bool:
        """After the verdict is committed: keep the tokens drafted ahead for the next round if
        they continue the committed sequence (every drafted token accepted and the edge's
        next token equal to the first of them), else drop them; True when kept. The first is
        then committed already, so the rest head the next round."""
        seq = self.seq
        n = len(seq)
        if not ahead.ids or len(ahead.base) + 1 != n or seq[:-1] != ahead.base or (
                seq[-1] != ahead.ids[0]):
            self._ready = None
            return False
        self._ready = Ahead(base=list(seq), ids=ahead.ids[1:], q_ids=ahead.q_ids[1:],
                            q_probs=ahead.q_probs[1:], entropies=ahead.entropies[1:],
                            features=ahead.features[1:])
        return True

    def commit(self, tokens: list[int]) -> None:
        """Append verified tokens; the cache is reconciled lazily at the next draft."""
        self.out.extend(tokens)

    def generate_alone(self) -> int:
        """The draft model produces (and commits) one token from its full distribution."""
        token = sample_full(self._sync(), self.temperature, self.rng)
        self.out.append(token)
        return token
