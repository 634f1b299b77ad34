"""KV rollback: after a round with rejections, both sides' caches equal a fresh evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_server._target import TargetSession
from ondevice.common import wire
from ondevice.common.llama_runtime import LlamaConfig, LlamaError, LlamaModel, LlamaRunner
from ondevice.llm.draft import DraftStream

CFG = LlamaConfig(n_ctx=256, n_threads=1)


@pytest.fixture(scope="module")
def target(fixture_models: tuple[Path, Path]) -> LlamaModel:
    with LlamaModel(fixture_models[0]) as m:
        yield m


def _fresh_logits(model: LlamaModel, seq: list[int]) -> np.ndarray:
    with LlamaRunner(model, CFG) as r:
        return np.array(r.eval(seq, 1)[0])


def _round(draft: list[int]) -> wire.Round:
    ids = np.array(draft, np.int32)
    return wire.Round("s", ids, ids[:, None].copy(), np.ones((len(draft), 1), np.float32))


def test_target_rollback_after_rejection(target: LlamaModel) -> None:
    prompt = target.tokenize("rollback check")
    session = TargetSession(target, CFG, np.array(prompt, np.int32), temperature=0.0, seed=0)
    try:
        first = int(np.argmax(_fresh_logits(target, prompt)))
        wrong = (first + 1) % target.n_vocab
        # Draft: the right token, then a wrong one, then two more that must be rolled back.
        accepted, token, _ = session.verify_round(_round([first, wrong, 3, 4]))
        assert accepted == 1
        assert session.committed == [*prompt, first, token]
        assert session.runner.tokens == [*prompt, first]  # rejected positions removed
        logits = np.array(session.runner.eval([token], 1)[0])
        np.testing.assert_allclose(logits, _fresh_logits(target, session.committed),
                                   rtol=1e-5, atol=1e-5)
    finally:
        session.close()


def test_draft_rollback_after_rejection(target: LlamaModel) -> None:
    prompt = target.tokenize("draft side")
    with LlamaRunner(target, CFG) as runner:
        stream = DraftStream(runner, prompt, temperature=0.0, top_k=4, seed=0)
        d = stream.draft(6, lambda j, h: True, want_entropy=False, is_eog=lambda t: False)
        assert d.ids.shape == (6,)
        assert len(runner.tokens) == len(prompt) + 5  # the last drafted token is not evaluated
        fix = (int(d.ids[2]) + 1) % target.n_vocab
        stream.commit([*d.ids[:2].tolist(), fix])  # two accepted, then the edge's token
        logits = stream._sync()
        assert runner.tokens == stream.seq
        np.testing.assert_allclose(np.array(logits), _fresh_logits(target, stream.seq),
                                   rtol=1e-5, atol=1e-5)


def test_eval_refuses_out_of_range_and_overflow(target: LlamaModel) -> None:
    with LlamaRunner(target, LlamaConfig(n_ctx=32, n_threads=1)) as r:
        with pytest.raises(LlamaError, match="outside the vocabulary"):
            r.eval([target.n_vocab])
        with pytest.raises(LlamaError, match="context full"):
            r.eval([1] * (r.n_ctx + 1))
        assert r.tokens == []
        r.eval([1, 2, 3], 3)
        assert r.n_past == 3
