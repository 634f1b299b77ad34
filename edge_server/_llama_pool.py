"""One llama.cpp context shared by many sequences: the edge's serving engine underneath.

``LlamaPool`` owns one context with ``n_seq`` sequence ids and one unified KV pool of
``kv_tokens`` cells that every sequence draws from (llama.cpp's ``kv_unified``). A *step*
decodes the work of several sequences in one ``llama_decode``: each ``Part`` appends tokens to
one sequence at its current end and asks logits for its last ``n_logits`` positions only.
The logits come back as zero-copy views into llama.cpp's output buffer, valid until the next
``step``; rollback is per sequence (``truncate``), as in ``LlamaRunner``.

Layout of one step's batch (llama.cpp's ``llama_batch``, one row per token)::

    row   token   pos                 seq_id   logits
    0..   part 0  len(seq0)+i         s0       last n_logits of part 0
    ...   part 1  len(seq1)+i         s1       last n_logits of part 1

The output buffer holds one row per flagged token in batch order, so part k's logits are the
rows after those of parts 0..k-1: ``[n_logits_k, n_vocab]``.

Synchronous, one caller at a time (the edge runs it in its compute thread); every native call
holds the model's lock, like ``LlamaRunner`` (both are ``LlamaContext``s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ondevice.common.llama_runtime import (
    LlamaConfig,
    LlamaContext,
    LlamaError,
    LlamaModel,
    llama_cpp,
    native_call,
)


@dataclass(frozen=True, slots=True)
class Part:
    """One sequence's share of a step: ``tokens`` appended at its end, logits for the last
    ``n_logits`` of them (0: none, e.g. a prefill chunk that is not the prompt's last)."""

    seq: int
    tokens: Sequence[int]
    n_logits: int


class PoolFull(LlamaError):
    """The step needs more KV cells than the pool has free."""


class LlamaPool(LlamaContext):
    """``n_seq`` sequences over one model in one context with a ``kv_tokens`` KV pool.

    ``lengths[s]`` is how many positions sequence ``s`` holds. ``max_step_tokens`` is the most
    tokens one step may carry (llama.cpp's batch size).
    """

    def __init__(self, model: LlamaModel, *, n_seq: int, kv_tokens: int,
                 config: LlamaConfig | None = None) -> None:
        super().__init__(model, replace(config or LlamaConfig(), n_ctx=kv_tokens),
                         n_seq_max=n_seq, unified_kv=True)
        self.n_seq = n_seq
        self.lengths = [0] * n_seq

    @property
    def kv_tokens(self) -> int:
        """KV cells of the pool, as llama.cpp made it."""
        return self.n_ctx

    @property
    def max_step_tokens(self) -> int:
        return self.n_batch

    @property
    def used_tokens(self) -> int:
        """KV cells held by all sequences together."""
        return sum(self.lengths)

    @property
    def free_tokens(self) -> int:
        return self.kv_tokens - self.used_tokens

    @native_call
    def truncate(self, seq: int, n: int) -> None:
        """Drop positions >= n of sequence ``seq`` (0 frees the whole sequence)."""
        if n >= self.lengths[seq]:
            return
        if not llama_cpp.llama_memory_seq_rm(self._memory, seq, n, -1):
            raise LlamaError(f"llama.cpp could not remove positions {n}.. of sequence {seq}")
        self.lengths[seq] = n

    @native_call
    def step(self, parts: Sequence[Part]) -> list[np.ndarray]:
        """Decode every part in one ``llama_decode``; return each part's logits, a read-only
        float32 view ``[n_logits, n_vocab]`` (``[0, n_vocab]`` when it asked none), valid
        until the next ``step``. Raises ValueError for a malformed step (two parts of one
        sequence, more than ``max_step_tokens`` tokens, a token outside the vocabulary) and
        PoolFull when the pool lacks the cells; the sequences are then unchanged."""
        total = sum(len(p.tokens) for p in parts)
        if total == 0:
            return [np.zeros((0, self.n_vocab), np.float32) for _ in parts]
        if total > self.max_step_tokens:
            raise ValueError(f"a step of {total} tokens exceeds the batch of "
                             f"{self.max_step_tokens}")
        seqs = [p.seq for p in parts]
        if len(set(seqs)) != len(seqs) or not all(0 <= s < self.n_seq for s in seqs):
            raise ValueError(f"a step needs distinct sequence ids in 0..{self.n_seq - 1}")
        if total > self.free_tokens:
            raise PoolFull(f"KV pool full: {self.used_tokens} of {self.kv_tokens} cells in "
                           f"use, this step needs {total} more")
        b = self._batch
        row = 0
        for p in parts:
            n = len(p.tokens)
            if not 0 <= p.n_logits <= n:
                raise ValueError(f"n_logits {p.n_logits} outside 0..{n}")
            base = self.lengths[p.seq]
            for i, tok in enumerate(p.tokens):
                if not 0 <= tok < self.n_vocab:
                    raise ValueError(f"token id {tok} outside the vocabulary of {self.n_vocab}")
                self._set_row(row, tok, base + i, p.seq, i >= n - p.n_logits)
                row += 1
        b.n_tokens = row
        rc = llama_cpp.llama_decode(self._ctx, b)
        if rc != 0:
            self._resync(seqs)
            if rc == 1:  # no KV slot for the batch
                raise PoolFull(f"llama.cpp found no KV slot for a step of {total} tokens")
            raise LlamaError(f"llama_decode failed with status {rc}")
        for p in parts:
            self.lengths[p.seq] += len(p.tokens)
        n_out = sum(p.n_logits for p in parts)
        out = np.zeros((0, self.n_vocab), np.float32)
        if n_out:
            ptr = llama_cpp.llama_get_logits(self._ctx)
            out = np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab))
            out.flags.writeable = False
        views, at = [], 0
        for p in parts:
            views.append(out[at : at + p.n_logits])
            at += p.n_logits
        return views

    def _resync(self, seqs: Sequence[int]) -> None:
        for s in seqs:
            self.lengths[s] = int(llama_cpp.llama_memory_seq_pos_max(self._memory, s)) + 1
