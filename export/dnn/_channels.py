"""Per-channel statistics of a split's feature: 8-bit parameters, importance, accuracy curve.

All of it runs the real tail (onnxruntime) on features from the real INT8 head, and rebuilds
partial features with `ondevice.common.feature_codec`, the code the device and the edge run, so the
profile's numbers are those of the deployed path.

Importance of channel c (nats, higher = send earlier), averaged over samples::

    score_c = KL(p_full || p_without_c) + KL(p_full || p_none) - KL(p_full || p_only_c)

where p_full is the tail's softmax on the feature, p_without_c with channel c at its
calibration mean, p_none with every channel at its mean and p_only_c with every channel but c
at its mean. The first term is what c is worth when it is the last one missing, the other two
what it is worth when it arrives first: progressive transmission lives between those ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from export.dnn._runtime import entropy_nats, run, softmax
from ondevice.common.feature_codec import FeatureCodec, channel_params, partial_feature

FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ENTROPY_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MAX_BATCH_VALUES = 8_000_000  # floats per tail batch while scoring channels (~32 MB)


@dataclass(frozen=True)
class ChannelStats:
    """Calibration statistics of a feature ``[C, H, W]``: per-channel mean, min and max
    (``[C]`` float32, in the feature's units) and the uint8 scale/zero-point they imply."""

    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray


def channel_stats(features: np.ndarray) -> ChannelStats:
    """Statistics of calibration features ``[N, C, H, W]`` (from the INT8 head)."""
    mean = features.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)  # [C]
    lo = features.min(axis=(0, 2, 3)).astype(np.float32)  # [C]
    hi = features.max(axis=(0, 2, 3)).astype(np.float32)  # [C]
    scale, zero_point = channel_params(lo, hi)
    return ChannelStats(mean, lo, hi, scale, zero_point)


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) in nats per row of ``[N, K]`` probabilities -> ``[N]``."""
    return (p * (np.log(np.clip(p, 1e-12, 1)) - np.log(np.clip(q, 1e-12, 1)))).sum(axis=1)


def importance(tail: ort.InferenceSession, features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Importance score per channel, ``[C]`` float64 nats (module docstring), from features
    ``[n, C, H, W]``. Costs 2*C*n + 2n tail runs, batched to MAX_BATCH_VALUES floats."""
    n, c, h, w = features.shape
    fill = np.broadcast_to(mean[None, :, None, None], (1, c, h, w)).astype(np.float32)
    p_full = softmax(run(tail, features))  # [n, K]
    p_none = softmax(run(tail, fill))  # [1, K]
    kl_none = _kl(p_full, np.broadcast_to(p_none, p_full.shape))  # [n]
    per_chunk = max(1, MAX_BATCH_VALUES // (2 * n * c * h * w))
    scores = np.zeros(c, dtype=np.float64)
    for start in range(0, c, per_chunk):
        chans = np.arange(start, min(c, start + per_chunk))  # [k]
        k = len(chans)
        without = np.repeat(features[None], k, axis=0)  # [k, n, C, H, W]
        only = np.repeat(np.broadcast_to(fill, (n, c, h, w))[None], k, axis=0)  # [k, n, C, H, W]
        for j, ch in enumerate(chans):
            without[j, :, ch] = mean[ch]
            only[j, :, ch] = features[:, ch]
        batch = np.concatenate([without, only]).reshape(2 * k * n, c, h, w)
        p = softmax(run(tail, batch)).reshape(2, k, n, -1)  # [2, k, n, K]
        ref = np.broadcast_to(p_full[None], (k, n, p_full.shape[1])).reshape(k * n, -1)
        kl_without = _kl(ref, p[0].reshape(k * n, -1)).reshape(k, n)  # [k, n]
        kl_only = _kl(ref, p[1].reshape(k * n, -1)).reshape(k, n)  # [k, n]
        scores[chans] = (kl_without + kl_none[None, :] - kl_only).mean(axis=1)
    return scores


def importance_order(scores: np.ndarray) -> np.ndarray:
    """Channel ids by decreasing score; ties by channel id (stable), ``[C]`` int64."""
    return np.argsort(-scores, kind="stable").astype(np.int64)


@dataclass(frozen=True)
class CurvePoint:
    """Top-1 metrics after the first ``channels`` channels (``fraction`` of C) arrived."""

    fraction: float
    channels: int
    bytes: int
    accuracy: float  # against the labels, or against the unsplit fp32 model without labels
    agreement: float  # top-1 equal to the unsplit fp32 model's
    mean_entropy_nats: float


def accuracy_curve(
    tail: ort.InferenceSession,
    codec: FeatureCodec,
    features: np.ndarray,
    reference_top1: np.ndarray,
    labels: np.ndarray | None,
    fractions: Sequence[float] = FRACTIONS,
) -> tuple[list[CurvePoint], list[dict[str, float]]]:
    """The curve over `fractions` for evaluation features ``[N, C, H, W]`` (INT8 head), and an
    entropy table pooled over all its points: for each entropy quantile t, the accuracy and
    the share (coverage) of predictions whose entropy is <= t."""
    c, h, w = codec.shape
    target = labels if labels is not None else reference_top1
    points = []
    all_entropy, all_correct = [], []
    for f in fractions:
        k = min(c, math.ceil(f * c - 1e-9))
        x = partial_feature(codec, features, k)  # [N, C, H, W]
        p = softmax(run(tail, x))  # [N, K]
        top1 = p.argmax(axis=1)
        ent = entropy_nats(p)  # [N]
        correct = top1 == target
        points.append(
            CurvePoint(
                fraction=float(f),
                channels=k,
                bytes=k * h * w,
                accuracy=float(correct.mean()),
                agreement=float((top1 == reference_top1).mean()),
                mean_entropy_nats=float(ent.mean()),
            )
        )
        all_entropy.append(ent)
        all_correct.append(correct)
    ent = np.concatenate(all_entropy)
    ok = np.concatenate(all_correct)
    table = []
    for q in ENTROPY_QUANTILES:
        t = float(np.quantile(ent, q))
        below = ent <= t
        table.append(
            {
                "entropy_nats": t,
                "accuracy": float(ok[below].mean()) if below.any() else 0.0,
                "coverage": float(below.mean()),
            }
        )
    return points, table
