"""Online estimators for controllers that learn costs as they run: an exponentially weighted
mean with a prior, and an exponentially forgetting least-squares line. Pure math, no I/O.

Used by GELATO's round model (``ondevice.llm.gelato``), the DNN controller and the edge's
advice to stream (``ondevice.common.stream_advice``).
"""

from __future__ import annotations

import numpy as np


class Ewma:
    """Exponentially weighted mean that starts at a prior worth ``prior_weight`` samples."""

    def __init__(self, prior: float, *, alpha: float = 0.1, prior_weight: float = 3.0) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.value = float(prior)
        self.alpha = alpha
        self._weight = prior_weight  # early samples move the mean faster than alpha

    def update(self, x: float) -> float:
        self._weight += 1.0
        step = max(self.alpha, 1.0 / self._weight)
        self.value += step * (float(x) - self.value)
        return self.value


class LinearFit:
    """y ~ c0 + c1 x by exponentially forgetting least squares (verify time vs drafted tokens).

    While the x seen so far barely vary (a fixed drafting length gives no slope information)
    the slope is ``slope_ratio`` times the fitted level: a batch of b tokens costs about
    (1 + slope_ratio * b) single-token evaluations (hardware-profiles.md section 2: 1.05-1.3x
    at b = 2..8 on GPUs, more on CPUs)."""

    def __init__(self, c0: float, c1: float, *, decay: float = 0.97,
                 slope_ratio: float = 0.1) -> None:
        self.prior = (c0, c1)
        self.decay = decay
        self.slope_ratio = slope_ratio
        self.s = np.zeros(5)  # [n, sx, sy, sxx, sxy]

    def update(self, x: float, y: float) -> None:
        self.s *= self.decay
        self.s += (1.0, x, y, x * x, x * y)

    def coef(self) -> tuple[float, float]:
        n, sx, sy, sxx, sxy = self.s
        if n < 1.0:
            return self.prior
        var = sxx / n - (sx / n) ** 2
        if var < 0.25:  # x nearly constant: slope in proportion to the level
            c0 = max(sy / n / (1.0 + self.slope_ratio * sx / n), 0.0)
            return c0, self.slope_ratio * c0
        c1 = (sxy / n - sx / n * sy / n) / var
        c1 = max(c1, 0.0)
        return max(sy / n - c1 * sx / n, 0.0), c1


class BetaRate:
    """A success probability with its uncertainty: a Beta posterior whose evidence fades.

    Starts at ``prior_mean`` worth ``prior_weight`` trials; ``forget(f)`` scales the evidence
    (successes and failures beyond the prior) by f, so an estimate left unrefreshed returns
    to the prior's wide uncertainty: a controller then looks again, whether the stale
    evidence was lucky or unlucky."""

    def __init__(self, prior_mean: float, *, prior_weight: float = 4.0) -> None:
        if not 0.0 < prior_mean < 1.0 or prior_weight <= 0:
            raise ValueError("prior_mean must be in (0, 1) and prior_weight > 0")
        self.prior = (prior_mean * prior_weight, (1.0 - prior_mean) * prior_weight)
        self.successes = 0.0
        self.failures = 0.0

    def update(self, successes: float, trials: float) -> None:
        self.successes += successes
        self.failures += max(trials - successes, 0.0)

    def forget(self, factor: float) -> None:
        self.successes *= factor
        self.failures *= factor

    @property
    def alpha(self) -> float:
        return self.prior[0] + self.successes

    @property
    def beta(self) -> float:
        return self.prior[1] + self.failures

    @property
    def value(self) -> float:
        """The posterior mean."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def sd(self) -> float:
        """The posterior standard deviation."""
        a, b = self.alpha, self.beta
        return float(np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0))))

    @property
    def evidence(self) -> float:
        """Trials of evidence left (beyond the prior)."""
        return self.successes + self.failures


class RealizedRate:
    """What an action earned per second, from its outcomes, with a standard error.

    Each outcome is (tokens n, net energy X = E - C in joules, time T in seconds); its value
    at a queue Q is V n - Q X, so the rate is priced at the queue of *now* (``rate``), not of
    when the action ran. Outcomes carry weights (1 when added); ``forget(f)`` scales them by
    f, so the evidence of an action not taken fades: its estimate stays, its standard error
    grows as the weight W = sum(w) shrinks. The rate is sum(w v) / sum(w T); its variance
    s^2 / (W mean_T^2), with s^2 the weighted mean of (v - rate T)^2 (from the weighted
    moments of n, X and T)."""

    def __init__(self) -> None:
        self.s = np.zeros(10)  # w-weighted sums of [1, n, X, T, nn, nX, nT, XX, XT, TT]

    def add(self, tokens: float, net_energy_j: float, time_s: float) -> None:
        n, x, t = float(tokens), float(net_energy_j), float(time_s)
        self.s += (1.0, n, x, t, n * n, n * x, n * t, x * x, x * t, t * t)

    def forget(self, factor: float) -> None:
        self.s *= factor

    @property
    def count(self) -> float:
        """The evidence left, in outcomes (the sum of the weights)."""
        return float(self.s[0])

    def rate(self, v: float, q_j: float, *, typical: float | None = None,
             prior_cv: float = 0.5, prior_count: float = 2.0) -> tuple[float, float] | None:
        """(value per second, its standard error) at V = ``v`` and queue ``q_j``; None
        without outcomes.

        The spread of one outcome's value about rate * T is shrunk toward ``prior_cv`` times
        ``typical`` * mean T (``typical``: the size of a rate expected here, e.g. a model's
        prediction; default the estimate itself), worth ``prior_count`` outcomes, so that a
        couple of outcomes, alike or unlucky, do not pass for certainty:
        s^2 = (W s_obs^2 + n0 (cv typical mean_T)^2) / (W + n0)."""
        w, n, x, t, nn, nx, nt, xx, xt, tt = self.s
        if w <= 0 or t <= 0:
            return None
        rho = (v * n - q_j * x) / t
        # sum w (v n - q x - rho t)^2, expanded in the moments
        ss = (v * v * nn + q_j * q_j * xx + rho * rho * tt - 2 * v * q_j * nx
              - 2 * v * rho * nt + 2 * q_j * rho * xt)
        mean_t = t / w
        size = max(abs(rho), abs(typical)) if typical is not None else abs(rho)
        s2 = (max(ss, 0.0) + prior_count * (prior_cv * size * mean_t) ** 2) / (w + prior_count)
        return float(rho), float(np.sqrt(s2 / w)) / mean_t
