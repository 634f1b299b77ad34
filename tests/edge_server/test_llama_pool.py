"""LlamaPool: several sequences in one context decode as each would alone (fixture models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_server._llama_pool import LlamaPool, Part, PoolFull
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner

# Batch composition changes the order of float sums in the matmuls: equal up to ~1e-3.
TOL = 2e-3
F32 = LlamaConfig(n_ctx=512, n_batch=64, n_threads=1, kv_type="f32")
SEQS = [[1, 5, 9, 13, 40, 41], [2, 7, 7, 100, 3], [382, 60, 61, 62, 63, 64, 65, 66]]


@pytest.fixture(scope="module")
def model(fixture_models: tuple[Path, Path]) -> LlamaModel:
    with LlamaModel(fixture_models[0]) as m:
        yield m


def alone(model: LlamaModel, tokens: list[int], n_logits: int) -> np.ndarray:
    with LlamaRunner(model, F32) as r:
        return np.array(r.eval(tokens, n_logits))


def test_one_step_of_three_sequences_equals_each_alone(model: LlamaModel) -> None:
    with LlamaPool(model, n_seq=4, kv_tokens=512, config=F32) as pool:
        out = pool.step([Part(0, SEQS[0], 2), Part(2, SEQS[1], 1), Part(3, SEQS[2], 3)])
        assert [o.shape[0] for o in out] == [2, 1, 3]
        for seq, got, n in zip(SEQS, out, (2, 1, 3), strict=True):
            np.testing.assert_allclose(got, alone(model, seq, n), atol=TOL)
        assert pool.lengths == [6, 0, 5, 8] and pool.used_tokens == 19


def test_rollback_and_continue_per_sequence(model: LlamaModel) -> None:
    with LlamaPool(model, n_seq=2, kv_tokens=256, config=F32) as pool:
        pool.step([Part(0, SEQS[0], 0), Part(1, SEQS[1], 0)])
        pool.step([Part(0, [70, 71, 72], 1), Part(1, [80], 1)])  # then reject 71, 72 of seq 0
        pool.truncate(0, len(SEQS[0]) + 1)
        out = pool.step([Part(0, [73], 1), Part(1, [81, 82], 2)])
        np.testing.assert_allclose(out[0], alone(model, [*SEQS[0], 70, 73], 1), atol=TOL)
        np.testing.assert_allclose(out[1], alone(model, [*SEQS[1], 80, 81, 82], 2), atol=TOL)
        pool.truncate(1, 0)
        assert pool.lengths == [len(SEQS[0]) + 2, 0]


def test_malformed_steps_and_a_full_pool_leave_sequences_unchanged(model: LlamaModel) -> None:
    with LlamaPool(model, n_seq=2, kv_tokens=256, config=F32) as pool:
        with pytest.raises(ValueError, match="distinct"):
            pool.step([Part(0, [1], 1), Part(0, [2], 1)])
        with pytest.raises(ValueError, match="exceeds the batch"):
            pool.step([Part(0, [1] * (pool.max_step_tokens + 1), 1)])
        with pytest.raises(ValueError, match="vocabulary"):
            pool.step([Part(0, [1, 10**6], 1)])
        while pool.free_tokens > 40:
            pool.step([Part(0, [5] * 10, 0), Part(1, [6] * 10, 0)])
        before = list(pool.lengths)
        with pytest.raises(PoolFull, match="KV pool full"):
            pool.step([Part(0, [5] * (pool.free_tokens + 1), 1)])
        assert pool.lengths == before
        out = pool.step([Part(1, [9], 1)])  # still serving
        np.testing.assert_allclose(out[0], alone(model, [6] * before[1] + [9], 1), atol=TOL)
