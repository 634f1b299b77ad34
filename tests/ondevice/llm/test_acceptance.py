"""Acceptance models (``ondevice.llm.acceptance``): the draft's free features, the logistic
model's prior, learning, calibration and censoring, and the feature-set comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ondevice.llm.acceptance import (
    DEFAULT_SETS,
    AcceptanceModel,
    AdaEDLAcceptance,
    BinnedAcceptance,
    LogisticAcceptance,
    TokenFeatures,
    compare_feature_sets,
    token_features,
    top_two,
)
from ondevice.llm.gelato import A_MAX, A_MIN, adaedl_bound

FULL = "entropy+top1+margin+position+running"


def test_token_features_by_hand() -> None:
    probs = np.array([0.1, 0.5, 0.0, 0.3, 0.1])
    f = token_features(probs, 2)
    h = -(2 * 0.1 * math.log(0.1) + 0.5 * math.log(0.5) + 0.3 * math.log(0.3))
    assert f.entropy == pytest.approx(h)
    assert f.top1 == pytest.approx(0.5)
    assert f.margin == pytest.approx(0.2)
    assert f.position == 2
    assert top_two(np.array([0.4, 0.4, 0.2])) == pytest.approx((0.4, 0.0))  # a tie
    assert top_two(np.array([1.0])) == (1.0, 1.0)


def test_first_prediction_is_adaedl() -> None:
    for h in (0.0, 0.05, 0.3, 0.6, 1.0, 2.0, 5.0):
        f = TokenFeatures(entropy=h, top1=0.9, margin=0.7, position=3)
        want = min(max(adaedl_bound(h), A_MIN), A_MAX)
        for feats in (FULL.split("+"), ["entropy"], []):
            assert LogisticAcceptance(feats).predict(f) == pytest.approx(want, abs=1e-12)
        assert AdaEDLAcceptance().predict(f) == pytest.approx(want, abs=1e-12)


def test_binned_adapter_matches_the_old_model() -> None:
    old, new = AcceptanceModel(), BinnedAcceptance()
    rng = np.random.default_rng(1)
    for _ in range(50):
        hs = rng.uniform(0, 4, 4).tolist()
        k = int(rng.integers(0, 5))
        old.observe_round(hs, k)
        new.observe_round([TokenFeatures(h, 0.5, 0.1, j) for j, h in enumerate(hs)], k)
    for h in np.linspace(0, 8, 33):
        assert new.predict(TokenFeatures(float(h), 0.5, 0.1, 0)) == old.predict(float(h))


def _synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Acceptance driven by top1 alone (logit 8 (top1 - 0.55)); entropy independent of it."""
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.0, 3.0, n)  # [n]
    top1 = rng.uniform(0.05, 1.0, n)  # [n]
    margin = top1 * rng.uniform(0.0, 1.0, n)  # [n]
    accepts = rng.random(n) < 1.0 / (1.0 + np.exp(-8.0 * (top1 - 0.55)))  # [n]
    return h, top1, margin, accepts


def test_top1_driven_acceptance_is_learned_and_calibrated() -> None:
    res = {r["features"]: r for r in compare_feature_sets(*_synthetic(8000))}
    assert list(res) == list(DEFAULT_SETS)
    assert len({r["n"] for r in res.values()}) == 1 and res[FULL]["n"] > 5000
    full = res[FULL]["brier"]
    # measured (seed 0, 7768 judged tokens): full 0.128, entropy-bins 0.251, entropy 0.250,
    # adaedl 0.344; calibration within 0.043 in every bin of n >= 100
    assert full <= 0.6 * res["entropy-bins"]["brier"]
    assert full <= 0.6 * res["adaedl"]["brier"]
    assert full <= 0.6 * res["entropy"]["brier"]
    for row in res[FULL]["calibration"]:
        if row["n"] >= 100:
            assert abs(row["predicted"] - row["observed"]) < 0.08, row


def test_brier_is_prequential() -> None:
    m = LogisticAcceptance()
    f = TokenFeatures(entropy=0.1, top1=0.9, margin=0.8, position=0)
    p0 = m.predict(f)
    m.observe(f, False)
    prior, model = m.brier()
    assert model == pytest.approx(p0 ** 2)  # scored with the prediction before learning
    assert prior == pytest.approx(min(max(adaedl_bound(0.1), A_MIN), A_MAX) ** 2)
    assert m.predict(f) < p0
    assert math.isnan(LogisticAcceptance().brier()[0])


def test_round_predictions_come_before_the_round() -> None:
    """Every judged token of a round is scored with the model as it was when drafting."""
    fs = [TokenFeatures(0.2, 0.8, 0.6, j) for j in range(3)]
    m = LogisticAcceptance()
    before = [m.predict(f) for f in fs]
    m.observe_round(fs, 2)
    want = ((before[0] - 1) ** 2 + (before[1] - 1) ** 2 + before[2] ** 2) / 3
    assert m.brier()[1] == pytest.approx(want)


def test_tokens_after_the_first_rejection_teach_nothing() -> None:
    judged = [TokenFeatures(0.3, 0.7, 0.5, 0), TokenFeatures(1.5, 0.3, 0.05, 1)]
    unjudged = [TokenFeatures(h, t, m, j + 2) for j, (h, t, m) in
                enumerate([(0.01, 0.99, 0.98), (4.0, 0.1, 0.01)])]
    a, b = LogisticAcceptance(), LogisticAcceptance()
    a.observe_round(judged, 1)
    b.observe_round(judged + unjudged, 1)
    assert np.array_equal(a.w, b.w)
    assert np.array_equal(a.data_precision, b.data_precision)
    assert a.running == b.running
    assert a.brier() == b.brier() and a.calibration() == b.calibration()
    # all accepted: every token was judged
    c = LogisticAcceptance()
    c.observe_round(judged, 2)
    assert c.n_observed == 2


def test_running_rate_moves_after_rounds() -> None:
    m = LogisticAcceptance(running_decay=0.5)
    assert m.running == pytest.approx(0.6)
    m.observe_round([TokenFeatures(0.1, 0.9, 0.8, j) for j in range(4)], 4)
    assert m.running == pytest.approx(1 - 0.4 * 0.5 ** 4)
    m.observe(TokenFeatures(0.1, 0.9, 0.8, 0), False)
    assert m.running == pytest.approx(0.5 * (1 - 0.4 * 0.5 ** 4))


def test_predictions_stay_clipped() -> None:
    m = LogisticAcceptance(prior_precision=0.05)
    hi, lo = TokenFeatures(0.0, 1.0, 1.0, 0), TokenFeatures(6.0, 0.02, 0.0, 7)
    for _ in range(300):
        m.observe_round([hi, hi], 2)
        m.observe(lo, False)
    assert m.predict(hi) == A_MAX and m.predict(lo) == A_MIN
    rng = np.random.default_rng(2)
    for _ in range(200):
        f = TokenFeatures(float(rng.uniform(0, 8)), float(rng.uniform(0, 1)),
                          float(rng.uniform(0, 0.5)), int(rng.integers(0, 12)))
        assert A_MIN <= m.predict(f) <= A_MAX


def test_feature_names_are_checked() -> None:
    assert LogisticAcceptance(["margin", "top1"]).features == ("top1", "margin")
    assert LogisticAcceptance(["margin", "top1"]).design(
        TokenFeatures(1.0, 0.5, 0.2, 0)).shape == (4,)
    with pytest.raises(ValueError, match="unknown"):
        LogisticAcceptance(["perplexity"])


def test_compare_walks_rounds_to_the_first_rejection() -> None:
    # accepts: round 1 judges 0..2 (k = 2), round 2 starts at 3: judges 3..6 (all 4 accepted),
    # round 3 starts at 8 (k = 4 -> 3 + 4 + 1): judges 8 (rejected), round 4 judges 9.
    accepts = np.array([1, 1, 0, 1, 1, 1, 1, 0, 0, 1], dtype=bool)
    z = np.zeros(10)
    res = compare_feature_sets(z + 0.5, z + 0.5, z + 0.1, accepts, sets=("adaedl",))
    assert res[0]["n"] == 3 + 4 + 1 + 1
    with pytest.raises(ValueError):
        compare_feature_sets(z, z, z[:3], accepts)
