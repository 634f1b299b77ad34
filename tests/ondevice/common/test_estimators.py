"""The online estimators (``ondevice/common/estimators.py``): the weighted mean converges, the
forgetting line recovers a slope and falls back to the level when x never varies."""

from __future__ import annotations

import numpy as np
import pytest

from ondevice.common.estimators import Ewma, LinearFit


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
