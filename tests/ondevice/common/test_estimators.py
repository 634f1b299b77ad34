"""The online estimators (``ondevice/common/estimators.py``): the weighted mean converges, the
forgetting line recovers a slope and falls back to the level when x never varies, the Beta
rate is the conjugate posterior and forgets back to its prior, the realized rate is the ratio
estimator with a delta-method error that grows as its evidence fades."""

from __future__ import annotations

import numpy as np
import pytest

from ondevice.common.estimators import BetaRate, Ewma, LinearFit, RealizedRate


def test_ewma_converges() -> None:
    e = Ewma(10.0, alpha=0.05)
    rng = np.random.default_rng(0)
    for x in rng.normal(3.0, 0.5, 2000):
        e.update(x)
    assert e.value == pytest.approx(3.0, abs=0.1)


def test_linear_fit_recovers_slope_and_falls_back() -> None:
    fit = LinearFit(0.5, 0.5)
    rng = np.random.default_rng(1)
    for _ in range(300):
        b = int(rng.integers(0, 9))
        fit.update(b, 0.02 + 0.003 * b + rng.normal(0, 1e-4))
    c0, c1 = fit.coef()
    assert c0 == pytest.approx(0.02, abs=1e-3) and c1 == pytest.approx(0.003, abs=3e-4)
    const = LinearFit(0.5, 0.5, slope_ratio=0.1)
    for _ in range(50):
        const.update(4.0, 0.028)  # only b = 4 ever seen: level c0 (1 + 0.1 * 4) = 0.028
    c0, c1 = const.coef()
    assert c0 == pytest.approx(0.02) and c1 == pytest.approx(0.002)


def test_beta_rate_is_the_conjugate_posterior_and_forgets_to_its_prior() -> None:
    r = BetaRate(0.6, prior_weight=2.0)
    assert r.value == pytest.approx(0.6) and r.alpha == pytest.approx(1.2)
    r.update(8, 10)  # 8 of 10 accepted: Beta(1.2 + 8, 0.8 + 2)
    assert r.value == pytest.approx(9.2 / 12.0)
    a, b = 9.2, 2.8
    assert r.sd == pytest.approx(np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))))
    sd_before = r.sd
    r.forget(0.5)
    assert r.evidence == pytest.approx(5.0) and r.sd > sd_before
    for _ in range(200):
        r.forget(0.9)
    assert r.value == pytest.approx(0.6, abs=1e-6) and r.evidence < 1e-6
    with pytest.raises(ValueError):
        BetaRate(1.0)


def test_realized_rate_is_the_ratio_estimator_priced_now() -> None:
    r = RealizedRate()
    assert r.rate(2.0, 0.0) is None
    outcomes = [(3, 0.2, 0.05), (1, 0.1, 0.04), (5, 0.3, 0.07)]  # (tokens, E - C, seconds)
    for o in outcomes:
        r.add(*o)
    n, x, t = (sum(o[i] for o in outcomes) for i in range(3))
    rho, se = r.rate(2.0, 0.0)  # type: ignore[misc]
    assert rho == pytest.approx(2.0 * n / t) and se > 0
    # the same outcomes priced at a queue of 10 J: their net energy costs 10 per joule
    assert r.rate(2.0, 10.0)[0] == pytest.approx((2.0 * n - 10.0 * x) / t)  # type: ignore[index]
    # forgetting keeps the estimate and widens its error
    r.forget(0.1)
    rho2, se2 = r.rate(2.0, 0.0)  # type: ignore[misc]
    assert rho2 == pytest.approx(rho) and se2 > 2 * se and r.count == pytest.approx(0.3)


def test_realized_rate_error_matches_the_spread_of_the_estimate() -> None:
    """Over many independent runs of 200 outcomes, the reported standard error is the
    standard deviation of the estimate (delta method; within 15 %)."""
    rng = np.random.default_rng(3)
    estimates, errors = [], []
    for _ in range(400):
        r = RealizedRate()
        for _ in range(200):
            n = int(rng.integers(1, 6))
            r.add(n, 0.0, 0.02 + 0.01 * n + 0.01 * rng.random())
        rho, se = r.rate(1.0, 0.0)  # type: ignore[misc]
        estimates.append(rho)
        errors.append(se)
    assert np.mean(errors) == pytest.approx(np.std(estimates), rel=0.15)


def test_realized_rate_does_not_trust_one_unlucky_outcome() -> None:
    """One outcome far below what was expected has an error the size of the expectation
    (``typical``), not of its own small value."""
    r = RealizedRate()
    r.add(1, 0.0, 0.2)  # 5 tokens/s where 50 were expected
    rho, se = r.rate(1.0, 0.0, typical=50.0)  # type: ignore[misc]
    assert rho == pytest.approx(5.0) and se > 15.0  # cv 0.5 of the expected 50
