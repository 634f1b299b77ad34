"""The target side of one generation session: prefill, verify a round, generate alone.

Synchronous and single-threaded by contract: the app runs every call in its one compute
thread, so llama.cpp is never entered twice at once.

KV bookkeeping: ``committed`` is the whole sequence agreed so far (prompt and generated tokens).
The target's cache holds every committed token except the newest ones not yet evaluated
(normally one: the token the last verdict produced). A round evaluates those pending tokens and
the drafted ones in one batch, with logits only for the last ``n + 1`` positions, then rolls the
cache back to the accepted prefix. Nothing is ever evaluated twice.
"""

from __future__ import annotations

import time

import numpy as np

from ondevice.common import wire
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner
from ondevice.common.speculative import sample_full, session_rng, verify

MAX_SEED = 2**64 - 1  # the wire's largest unsigned integer; session_rng takes 0..MAX_SEED


def context_size(model: LlamaModel, llama_config: LlamaConfig) -> int:
    """The context llama.cpp gives a session opened with ``llama_config``: it rounds the
    requested ``n_ctx`` up (e.g. 128 to 256), so ask it once, with a context made and freed
    here. Raises LlamaError when such a context cannot be made at all."""
    with LlamaRunner(model, llama_config) as runner:
        return runner.n_ctx


class TargetSession:
    """One device's stream against the target model."""

    def __init__(
        self,
        model: LlamaModel,
        llama_config: LlamaConfig,
        prompt: np.ndarray,
        *,
        temperature: float,
        seed: int,
    ) -> None:
        self.runner = LlamaRunner(model, llama_config)
        self.model = model
        self.temperature = temperature
        self.rng = session_rng(seed, "target")
        self.committed: list[int] = prompt.tolist()
        t0 = time.perf_counter()
        if len(self.committed) > 1:
            self.runner.eval(self.committed[:-1], 1)
        self.prefill_ms = (time.perf_counter() - t0) * 1e3

    def close(self) -> None:
        self.runner.close()

    def _room(self, n_new: int) -> None:
        if len(self.committed) + n_new > self.runner.n_ctx:
            raise wire.WireError(
                "context-full",
                f"{len(self.committed)} tokens in context + {n_new} more exceed n_ctx"
                f" {self.runner.n_ctx}",
            )

    def verify_round(self, msg: wire.Round) -> tuple[int, int, float]:
        """Return ``(accepted, next_token, verify_ms)`` for one drafted round."""
        n = int(msg.draft.shape[0])
        self._room(n + 1)
        base = len(self.committed)
        pending = self.committed[self.runner.n_past :]
        t0 = time.perf_counter()
        logits = self.runner.eval(pending + msg.draft.tolist(), n + 1)  # [n + 1, vocab]
        accepted, token = verify(
            msg.draft, msg.q_ids, msg.q_probs, logits, self.temperature, self.rng
        )
        # Keep the cache for the accepted draft tokens; the new token stays pending.
        self.runner.truncate(base + accepted)
        verify_ms = (time.perf_counter() - t0) * 1e3
        self.committed.extend(msg.draft[:accepted].tolist())
        self.committed.append(token)
        return accepted, token, verify_ms

    def generate_one(self) -> tuple[int, float]:
        """The target alone produces one token; return ``(token, ms)``."""
        self._room(1)
        t0 = time.perf_counter()
        logits = self.runner.eval(self.committed[self.runner.n_past :], 1)
        token = sample_full(logits[0], self.temperature, self.rng)
        self.committed.append(token)
        return token, (time.perf_counter() - t0) * 1e3

    def is_eog(self, token: int) -> bool:
        return self.model.is_eog(token)
