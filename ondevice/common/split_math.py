"""The part of ENACHI's math that both sides run. Pure functions, numpy only.

- The edge divides its band among the devices it serves (`allocate_bandwidth`).
- Both sides read the progressive-transmission stop rule from a split's profile curves
  (`entropy_threshold`, `pooled_entropy_threshold`, `min_stop_fraction`; `dnn_profile`).

The device's controller (`ondevice.dnn.enachi`) re-exports them. Units: joules, bits, nats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def allocate_bandwidth(queues_j: Sequence[float], bits: Sequence[float],
                       spectral_eff: Sequence[float], *, floor: float = 0.05) -> np.ndarray:
    """Edge allocator: shares w_i >= floor/n, summing to 1, minimizing sum Q_i a_i / w_i with
    a_i = bits_i / efficiency_i (the airtime a device needs at full bandwidth): w_i ~ sqrt(Q_i a_i).

    Devices with empty queues get the floor; with every queue empty the split is even.
    """
    q = np.asarray(queues_j, dtype=float)  # [n]
    a = np.asarray(bits, dtype=float) / np.maximum(np.asarray(spectral_eff, dtype=float), 1e-9)
    n = q.shape[0]
    if n == 0:
        return np.zeros(0)
    weight = np.sqrt(np.maximum(q, 0.0) * np.maximum(a, 0.0))  # [n]
    if weight.sum() <= 0.0:
        return np.full(n, 1.0 / n)
    base = floor / n
    return base + (1.0 - floor) * weight / weight.sum()


def entropy_threshold(fractions: Sequence[float], accuracy: Sequence[float],
                      entropies: Sequence[float], *, tolerance: float = 0.01) -> float:
    """Stop threshold for progressive transmission, from the profile's curves.

    ``entropies`` is the mean tail-output entropy (nats) at each received fraction. The
    threshold is the entropy at the smallest fraction whose accuracy is within ``tolerance``
    of the full feature's: stopping when the edge is at least that sure loses at most about
    ``tolerance`` accuracy.
    """
    acc = np.asarray(accuracy, dtype=float)
    ok = np.flatnonzero(acc >= acc[-1] - tolerance)
    return float(np.asarray(entropies, dtype=float)[ok[0]])


def pooled_entropy_threshold(entropies: Sequence[float], accuracy: Sequence[float],
                             target: float) -> float:
    """The largest entropy (nats) whose pooled accuracy, over predictions at or under it at
    every fraction received, is at least ``target``; 0 (never stop) when none is.

    ``entropies`` ascending with ``accuracy`` the accuracy of all predictions at or under each
    (the profile's ``entropy_table``): it counts the confident early mistakes a curve of mean
    entropies hides.
    """
    ok = [float(e) for e, a in zip(entropies, accuracy, strict=True) if a >= target]
    return max(ok) if ok else 0.0


def min_stop_fraction(fractions: Sequence[float], entropies: Sequence[float]) -> float:
    """The earliest fraction at which an entropy stop may fire: where the profile's mean
    tail entropy peaks.

    With few channels received the rest sit at their calibration mean, and the tail answers
    that average feature, often confidently and wrongly (docs/export-dnn.md, "Caution"). Mean
    entropy then rises as real channels arrive and disagree with it, peaks, and falls as the
    evidence accumulates; only on the falling side does a low entropy speak of the image.
    """
    ent = np.asarray(entropies, dtype=float)  # [n]
    return float(np.asarray(fractions, dtype=float)[int(np.argmax(ent))])
