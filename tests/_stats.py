"""Statistics for the tests of the output distribution (speculative sampling)."""

from __future__ import annotations

import math

import numpy as np

P_REJECT = 1e-4


def chi2_pvalue(observed: np.ndarray, expected_p: np.ndarray) -> float:
    """Upper tail of Pearson's chi-square, bins with expected count < 5 merged."""
    n = observed.sum()
    exp = expected_p * n
    order = np.argsort(exp)
    obs_b, exp_b, acc_o, acc_e = [], [], 0.0, 0.0
    for i in order:
        acc_o += observed[i]
        acc_e += exp[i]
        if acc_e >= 5:
            obs_b.append(acc_o)
            exp_b.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0:
        obs_b[-1] += acc_o
        exp_b[-1] += acc_e
    o, e = np.array(obs_b), np.array(exp_b)
    stat = float(((o - e) ** 2 / e).sum())
    dof = len(o) - 1
    # Wilson-Hilferty approximation of the chi-square upper tail (accurate for dof >= 3).
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))
