"""The draft's top1/margin in acceptance traces: files with and without them, recording them
from the fixture models, and the acceptance models' feature-set comparison on such a trace."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ondevice.bench import Trace, record_trace
from ondevice.bench.gelato_sim import acceptance_outcomes, policy_entropies
from ondevice.bench.trace import FEATURE_FIELDS, TRACE_VERSION
from ondevice.llm.acceptance import DEFAULT_SETS, compare_feature_sets

PROMPTS = ["Hello world", "Once upon a time", "The quick brown"]


def _hand(sampling: bool, features: bool = True) -> Trace:
    kw: dict[str, list[list[float]]] = {}
    if features:
        kw = {"top1": [[0.9, 0.5], [0.3]], "margin": [[0.8, 0.1], [0.05]]}
    return Trace.from_prompts([[0.1, 1.2], [2.5]], [[True, False], [False]],
                              p_accept=[[0.9, 0.4], [0.2]] if sampling else None, **kw)


@pytest.mark.parametrize("sampling", [False, True])
def test_round_trip_with_features(tmp_path: Path, sampling: bool) -> None:
    tr = _hand(sampling)
    tr.save(tmp_path / "t.npz")
    back = Trace.load(tmp_path / "t.npz")
    for name in ("entropy", "match", "offsets", *FEATURE_FIELDS):
        a, b = getattr(tr, name), getattr(back, name)
        if a is None:
            assert b is None, name
        else:
            assert np.array_equal(a, b), name
    assert back.top1 is not None and back.top1.dtype == np.float32
    t1, mg = back.features(sampling) or (None, None)
    assert t1 is not None and mg is not None
    assert np.allclose(t1, [0.9, 0.5, 0.3]) and np.allclose(mg, [0.8, 0.1, 0.05])
    if not sampling:
        assert back.top1_t is None and back.margin_t is None
        assert back.features(True) is None


def test_round_trip_without_features(tmp_path: Path) -> None:
    tr = _hand(sampling=True, features=False)
    tr.save(tmp_path / "t.npz")
    back = Trace.load(tmp_path / "t.npz")
    assert all(getattr(back, n) is None for n in FEATURE_FIELDS)
    assert back.features(False) is None and back.features(True) is None
    assert np.array_equal(back.p_accept, tr.p_accept)


def test_old_file_loads_without_features(tmp_path: Path) -> None:
    """A file as written before the feature arrays existed (same version) loads with None."""
    path = tmp_path / "old.npz"
    with path.open("wb") as fh:
        np.savez_compressed(
            fh, entropy=np.array([0.5, 0.7], np.float32), match=np.array([True, False]),
            offsets=np.array([0, 2], np.int64), tokens=np.array([5, 6], np.int32),
            prompt_tokens=np.array([3], np.int32),
            meta=np.array(json.dumps({"version": TRACE_VERSION, "temperature": 0.0})))
    tr = Trace.load(path)
    assert tr.n_positions == 2
    assert all(getattr(tr, n) is None for n in FEATURE_FIELDS)
    assert tr.features(False) is None


def test_feature_shapes_are_checked() -> None:
    tr = _hand(sampling=False)
    with pytest.raises(ValueError, match="top1"):
        Trace(entropy=tr.entropy, match=tr.match, offsets=tr.offsets, tokens=tr.tokens,
              prompt_tokens=tr.prompt_tokens, top1=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="both"):
        Trace.from_prompts([[0.1]], [[True]], top1=[[0.9]])


@pytest.fixture(scope="module")
def traces(fixture_models: tuple[Path, Path]) -> dict[str, Trace]:
    target, draft = fixture_models
    return {
        "greedy": record_trace(target, draft, PROMPTS, max_tokens=60),
        "sampling": record_trace(target, draft, PROMPTS[:2], max_tokens=30, temperature=0.8),
    }


@pytest.mark.parametrize("kind", ["greedy", "sampling"])
def test_record_trace_fills_features(traces: dict[str, Trace], kind: str) -> None:
    tr = traces[kind]
    sampling = kind == "sampling"
    assert tr.n_positions > 20
    pairs = [(tr.top1, tr.margin, tr.entropy)]
    if sampling:
        assert tr.entropy_t is not None
        pairs.append((tr.top1_t, tr.margin_t, tr.entropy_t))
    else:
        assert tr.top1_t is None and tr.margin_t is None
    for top1, margin, ent in pairs:
        assert top1 is not None and margin is not None
        assert top1.shape == margin.shape == (tr.n_positions,) and top1.dtype == np.float32
        assert np.all((top1 > 0) & (top1 <= 1)) and np.all((margin >= 0) & (margin <= top1))
        # the min-entropy -log(top1) never exceeds the Shannon entropy of the same softmax
        assert np.all(-np.log(top1.astype(np.float64)) <= ent + 1e-4)
    feats = tr.features(sampling)
    assert feats is not None and feats[0] is (tr.top1_t if sampling else tr.top1)


@pytest.mark.parametrize("kind", ["greedy", "sampling"])
def test_compare_feature_sets_on_a_recorded_trace(traces: dict[str, Trace], kind: str) -> None:
    tr = traces[kind]
    sampling = kind == "sampling"
    feats = tr.features(sampling)
    assert feats is not None
    res = compare_feature_sets(policy_entropies(tr, sampling=sampling), *feats,
                               acceptance_outcomes(tr, sampling=sampling))
    assert [r["features"] for r in res] == list(DEFAULT_SETS)
    n = res[0]["n"]
    assert 0 < n <= tr.n_positions
    for r in res:
        assert r["n"] == n
        assert math.isfinite(r["brier"]) and 0.0 <= r["brier"] <= 1.0
        assert sum(row["n"] for row in r["calibration"]) == n
