"""A split DNN as the device and the edge see it: ``profile.json`` and the files beside it.

``model-export dnn split`` writes a directory with ``model.onnx`` (the unsplit fp32 model),
``head_S.onnx`` (INT8) and ``tail_S.onnx`` (fp32) per split point S, and ``profile.json``
(docs/export-dnn.md). This module reads that directory with the standard library and numpy
only (no torch, no jsonschema, no onnxruntime), so both the device and the edge import it.

Both sides must agree on a split's feature codec (shape, per-channel scale, zero point and
mean, importance order): `codec_fingerprint` hashes it, the device sends the hash when it opens
a task and the edge refuses a task whose hash differs from its own (``codec-mismatch``).
Split 0 stands for the raw input (edge-only: the whole model runs on the edge).

Units: milliseconds for latencies (the export machine's medians), bytes, nats.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.common.feature_codec import CODEC_VERSION, CodecError, FeatureCodec
from ondevice.common.split_math import (
    entropy_threshold,
    min_stop_fraction,
    pooled_entropy_threshold,
)

PROFILE_NAME = "profile.json"
PROFILE_FORMAT = "coinfer-dnn-profile"
RAW_SPLIT = 0  # the raw input: edge-only
DEFAULT_STOP_TOLERANCE = 0.01  # accuracy the entropy stop may give up against all channels


class DnnProfileError(ValueError):
    """The directory is not a usable split DNN (missing file, bad profile)."""


@dataclass(frozen=True, slots=True)
class Curve:
    """Accuracy and mean tail entropy (nats) against the fraction of channels received, in
    importance order, the missing channels at their calibration mean (from the profile)."""

    fractions: tuple[float, ...]
    accuracy: tuple[float, ...]
    entropy: tuple[float, ...]
    table_entropy: tuple[float, ...] = ()  # entropy_table: pooled over every fraction ...
    table_accuracy: tuple[float, ...] = ()  # ... accuracy of the predictions at or under it

    def accuracy_at(self, fraction: float) -> float:
        """Accuracy at ``fraction`` (0..1), linear between the profile's points."""
        return float(np.interp(min(max(fraction, 0.0), 1.0), self.fractions, self.accuracy))


@dataclass(frozen=True, slots=True)
class StopRule:
    """Progressive transmission stops once the edge's entropy is under ``entropy_nats`` and at
    least ``min_fraction`` of the channels are in (see `stop_rule`)."""

    entropy_nats: float
    min_fraction: float

    def should_stop(self, entropy_nats: float, fraction: float) -> bool:
        return fraction >= self.min_fraction and entropy_nats < self.entropy_nats


def stop_rule(curve: Curve, tolerance: float = DEFAULT_STOP_TOLERANCE) -> StopRule:
    """The stop rule of a split, from its profile curves alone.

    Threshold: the smaller of `enachi.entropy_threshold` (the mean entropy at the first
    fraction whose accuracy is within ``tolerance`` of all channels') and, when the profile has
    an ``entropy_table``, `enachi.pooled_entropy_threshold` at all channels' accuracy
    (predictions that sure were, over every fraction, right at least as often as the whole
    feature's: this counts the confident early mistakes a curve of means hides). Floor:
    `enachi.min_stop_fraction`, the fraction where the mean entropy peaks; before it the tail
    answers the calibration mean with a confidence that says nothing about the image
    (docs/export-dnn.md, "Caution").
    """
    threshold = entropy_threshold(curve.fractions, curve.accuracy, curve.entropy,
                                  tolerance=tolerance)
    if curve.table_entropy:
        target = curve.accuracy[-1]
        threshold = min(threshold, pooled_entropy_threshold(curve.table_entropy,
                                                            curve.table_accuracy, target))
    return StopRule(entropy_nats=threshold,
                    min_fraction=min_stop_fraction(curve.fractions, curve.entropy))


def codec_fingerprint(codec: FeatureCodec) -> str:
    """16 hex digits of SHA-256 over the codec version, shape, scales, zero points, means and
    importance order: equal on both sides exactly when they would decode alike."""
    h = hashlib.sha256()
    h.update(f"v{CODEC_VERSION}:{codec.shape}".encode())
    for arr, dtype in ((codec.scale, "<f4"), (codec.zero_point, "<i4"), (codec.mean, "<f4"),
                       (codec.order, "<i8")):
        h.update(np.ascontiguousarray(arr, dtype=dtype).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class SplitInfo:
    """One split point: its files, the profile's latencies (ms), codec and curve."""

    index: int
    block: str
    head_file: Path
    tail_file: Path
    head_ms: float
    tail_ms: float
    head_flops: int
    codec: FeatureCodec
    fingerprint: str
    curve: Curve
    int8_metric: float

    @property
    def feature_bytes(self) -> int:
        """All channels at 8 bits, without packet headers."""
        c, h, w = self.codec.shape
        return c * h * w


@dataclass(frozen=True)
class DnnProfile:
    """A split model directory, read. ``splits`` by index; ``raw_bytes`` is 0 when the model
    takes already-normalized user data (then there is no raw-input edge-only path)."""

    root: Path
    name: str
    model_id: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # raw units, per input channel
    std: tuple[float, ...]
    raw_range: tuple[float, float] | None
    num_classes: int
    label_names: list[str] | None
    full_file: Path
    full_ms: float
    full_flops: int
    fp32_metric: float
    metric: str  # "top1-accuracy" or "top1-agreement-with-fp32-model"
    eval_indices: list[int] | None
    splits: dict[int, SplitInfo]
    raw: dict[str, Any] = field(repr=False)

    @property
    def raw_bytes(self) -> int:
        c, h, w = self.input_shape
        return c * h * w if self.raw_range is not None else 0

    def split(self, index: int) -> SplitInfo:
        try:
            return self.splits[index]
        except KeyError:
            raise DnnProfileError(
                f"{self.name} has no split {index} (splits: {sorted(self.splits)})"
            ) from None

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Model input float32 ``[N, C, H, W]`` from raw-unit pixels ``[N, C, H, W]``."""
        m = np.asarray(self.mean, dtype=np.float32)[None, :, None, None]  # [1, C, 1, 1]
        s = np.asarray(self.std, dtype=np.float32)[None, :, None, None]  # [1, C, 1, 1]
        return np.ascontiguousarray((raw.astype(np.float32) - m) / s, dtype=np.float32)


def _model_id(name: str, splits: dict[int, SplitInfo], full_flops: int) -> str:
    h = hashlib.sha256(f"{name}:{full_flops}".encode())
    for index in sorted(splits):
        h.update(f"{index}:{splits[index].fingerprint}".encode())
    return f"{name}@{h.hexdigest()[:8]}"


def _split(root: Path, s: dict[str, Any]) -> SplitInfo:
    try:
        codec = FeatureCodec.from_profile(s)
    except (CodecError, KeyError, TypeError, ValueError) as exc:
        raise DnnProfileError(f"split {s.get('index')}: bad feature entry: {exc}") from None
    pts = s["accuracy_curve"]
    table = s.get("entropy_table") or []
    curve = Curve(tuple(float(p["fraction"]) for p in pts),
                  tuple(float(p["accuracy"]) for p in pts),
                  tuple(float(p["mean_entropy_nats"]) for p in pts),
                  tuple(float(e["entropy_nats"]) for e in table),
                  tuple(float(e["accuracy"]) for e in table))
    info = SplitInfo(
        index=int(s["index"]), block=str(s["block"]),
        head_file=root / s["head"]["file"], tail_file=root / s["tail"]["file"],
        head_ms=float(s["head"]["latency_ms"]), tail_ms=float(s["tail"]["latency_ms"]),
        head_flops=int(s["head"]["flops"]), codec=codec, fingerprint=codec_fingerprint(codec),
        curve=curve, int8_metric=float(s["int8_metric"]),
    )
    if info.index <= RAW_SPLIT:
        raise DnnProfileError(f"split index {info.index}: indices start at 1")
    return info


def load_dnn(root: str | Path) -> DnnProfile:
    """Read ``root/profile.json``; DnnProfileError if it or a file it names is unusable."""
    root = Path(root)
    path = root / PROFILE_NAME
    try:
        p = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DnnProfileError(f"{root} is not a split model: no {PROFILE_NAME} "
                              "(make one with `model-export dnn split`)") from None
    except (OSError, ValueError) as exc:
        raise DnnProfileError(f"cannot read {path}: {exc}") from None
    if not isinstance(p, dict) or p.get("format") != PROFILE_FORMAT:
        raise DnnProfileError(f"{path} is not a {PROFILE_FORMAT} file")
    try:
        model, inp = p["model"], p["model"]["input"]
        splits = {s.index: s for s in (_split(root, e) for e in p["splits"])}
        rr = inp.get("raw_range")
        raw_range = (float(rr[0]), float(rr[1])) if rr and rr[0] is not None else None
        labels = (model.get("labels") or {}).get("names")
        prof = DnnProfile(
            root=root, name=str(model["name"]), model_id="",
            input_shape=tuple(int(v) for v in inp["shape"][1:]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in inp["mean"]), std=tuple(float(v) for v in inp["std"]),
            raw_range=raw_range, num_classes=int(model["output"]["num_classes"]),
            label_names=list(labels) if labels else None, full_file=root / model["file"],
            full_ms=float(model["latency_ms"]), full_flops=int(model["flops"]),
            fp32_metric=float(model["fp32_metric"]),
            metric=str(p["data"]["evaluation"]["metric"]),
            eval_indices=p["data"]["evaluation"].get("indices"), splits=splits, raw=p,
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DnnProfileError(f"{path}: missing or ill-typed entry ({exc!r})") from None
    if not splits:
        raise DnnProfileError(f"{path} lists no split")
    missing = [f for s in splits.values() for f in (s.head_file, s.tail_file)
               if not f.is_file()]
    if missing:
        raise DnnProfileError(f"{root}: missing {', '.join(f.name for f in missing)}")
    object.__setattr__(prof, "model_id", _model_id(prof.name, splits, prof.full_flops))
    return prof


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax of logits ``[K]`` (float64)."""
    z = logits.astype(np.float64) - float(np.max(logits))
    e = np.exp(z)
    return e / e.sum()


def top1_summary(logits: np.ndarray) -> tuple[int, float, float]:
    """(top-1 class, its probability, entropy in nats) of one logits row ``[K]``."""
    p = probabilities(logits)
    k = int(np.argmax(p))
    entropy = float(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum())
    return k, float(p[k]), entropy
