"""Online estimators for controllers that learn costs as they run: an exponentially weighted
mean with a prior, and an exponentially forgetting least-squares line. Pure math, no I/O.

Used by GELATO's round model (``ondevice.llm.gelato``), the DNN controller and the edge's
advice to stream (``edge_server._advice``).
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
