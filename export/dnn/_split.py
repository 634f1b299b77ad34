"""`model-export dnn split`: full ONNX export, split points, INT8 heads, fp32 tails, profile.

Per chosen split point s the output directory gets ``head_s.onnx`` (INT8 static QDQ),
``tail_s.onnx`` (fp32), and once ``model.onnx`` (the unsplit fp32 model) and ``profile.json``.
The command checks on the calibration inputs that the fp32 head followed by the tail computes
the unsplit model (max |difference| of the logits, printed and stored), then measures every
number of the profile with onnxruntime on real data (see `_channels` for the feature's).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export._errors import ExportError
from export.dnn import _data
from export.dnn._channels import (
    ChannelStats,
    accuracy_curve,
    channel_stats,
    importance,
    importance_order,
)
from export.dnn._graph import Boundary, GraphInfo, analyze, extract, fold_constants, graph_flops
from export.dnn._models import ModelSpec, export_onnx, resolve_model
from export.dnn._profile import PROFILE_NAME, write_profile
from export.dnn._quant import quantize_int8
from export.dnn._runtime import latency_ms, run, session
from ondevice.common.feature_codec import FeatureCodec
from ondevice.common.files import atomic_output

DIGITS_CALIB = 256  # default calibration samples (from the training split)
IMAGES_CALIB = 64  # default calibration crops
IMAGES_EVAL = 64  # default evaluation crops (another seed than calibration)
IMPORTANCE_SAMPLES = 8  # calibration samples used to score channels
CHECK_ATOL = 1e-4  # head+tail vs full: |diff| <= CHECK_ATOL * max(1, max |logit|)
AUTO_FRACTIONS = (0.05, 0.95)  # head share of FLOPs that makes a compute split useful
AUTO_EDGE = 0.01  # never auto-pick a split whose head or tail holds under 1% of FLOPs

Announce = Callable[[str], None]


@dataclass(frozen=True)
class SplitData:
    """Normalized model inputs: calibration ``[Nc, C, H, W]``, evaluation ``[Ne, C, H, W]``,
    evaluation labels ``[Ne]`` (None without labels) and how they were made."""

    calib: np.ndarray
    eval: np.ndarray
    labels: np.ndarray | None
    calib_source: str
    eval_source: str
    eval_indices: list[int] | None


@dataclass(frozen=True)
class SplitResult:
    """What `split_model` wrote: the profile (as written) and its path, and wall seconds."""

    out_dir: Path
    profile_path: Path
    profile: dict[str, Any]
    seconds: float

    def table(self) -> str:
        """One line per split: head/tail ms, feature KB, INT8 speed-up, agreement, metric."""
        metric = self.profile["data"]["evaluation"]["metric"]
        splits = self.profile["splits"]
        bw = max(5, *(len(s["block"]) for s in splits))
        rows = [
            f"{'split':>5} {'block':<{bw}} {'feature':<12} {'KB':>7} {'head ms':>8} "
            f"{'int8 x':>6} {'tail ms':>8} {'agree':>6} {'metric':>6}"
        ]
        for s in splits:
            f = s["feature"]
            rows.append(
                f"{s['index']:>5} {s['block']:<{bw}} {'x'.join(map(str, f['shape'])):<12} "
                f"{f['bytes'] / 1024:>7.2f} {s['head']['latency_ms']:>8.3f} "
                f"{s['head']['int8_speedup']:>6.2f} {s['tail']['latency_ms']:>8.3f} "
                f"{s['int8_agreement']:>6.3f} {s['int8_metric']:>6.3f}"
            )
        model = self.profile["model"]
        rows.append(
            f"{model['name']}: fp32 {metric} {model['fp32_metric']:.4f}, full model "
            f"{model['latency_ms']:.3f} ms; metric column: {metric} of INT8 head + 8-bit feature"
        )
        return "\n".join(rows)


def parse_splits(text: str) -> str | list[int]:
    """``auto``, ``all`` or a comma-separated list of split indices (>= 1)."""
    if text in ("auto", "all"):
        return text
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ExportError(f"--splits takes auto, all or indices like 1,3,5; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ExportError(f"--splits indices start at 1; got {text!r}")
    return sorted(set(values))


def auto_splits(boundaries: list[Boundary], total_flops: int, input_bytes: int) -> list[int]:
    """Stage outputs (the last boundary before the feature shape changes) where the 8-bit
    feature is smaller than the 8-bit input or the head holds AUTO_FRACTIONS of the FLOPs,
    and neither part holds under AUTO_EDGE of them."""
    picked = []
    for k, b in enumerate(boundaries):
        if k + 1 < len(boundaries) and boundaries[k + 1].shape == b.shape:
            continue  # a later block of the same stage
        frac = b.head_flops / max(total_flops, 1)
        if not AUTO_EDGE <= frac <= 1 - AUTO_EDGE:
            continue
        if b.feature_bytes < input_bytes or AUTO_FRACTIONS[0] <= frac <= AUTO_FRACTIONS[1]:
            picked.append(b.index)
    return picked


def _choose(spec: ModelSpec, info: GraphInfo, splits: str | list[int]) -> list[Boundary]:
    by_index = {b.index: b for b in info.boundaries}
    input_bytes = int(np.prod(spec.input_shape[1:]))
    if splits == "all":
        return list(info.boundaries)
    if splits == "auto":
        chosen = auto_splits(info.boundaries, info.flops, input_bytes)
        return [by_index[i] for i in chosen] or [info.boundaries[len(info.boundaries) // 2]]
    missing = [i for i in splits if i not in by_index]
    if missing:
        listing = ", ".join(f"{b.index} {b.block} {list(b.shape)}" for b in info.boundaries)
        raise ExportError(
            f"split point {missing[0]} does not exist: {spec.name} has split points "
            f"1..{len(info.boundaries)} ({listing})"
        )
    return [by_index[i] for i in splits]


def load_data(spec: ModelSpec, calib: int | None, n_eval: int | None, seed: int) -> SplitData:
    """Real calibration and evaluation inputs for `spec` (see `_data`)."""
    _, c, h, w = spec.input_shape
    if spec.data == "digits":
        split = _data.load_digits_split(int(spec.info.get("train_seed", seed)))
        rng = np.random.default_rng(seed)
        n = min(calib or DIGITS_CALIB, len(split.train_x))
        pick = np.sort(rng.permutation(len(split.train_x))[:n])
        norm = _data.normalize
        return SplitData(
            norm(split.train_x[pick], spec.mean, spec.std),
            norm(split.test_x, spec.mean, spec.std),
            split.test_y,
            f"load_digits training split, {n} seeded samples",
            f"load_digits held-out split ({_data.DIGITS_TEST_FRACTION:.0%}, stratified)",
            [int(i) for i in split.test_indices],
        )
    if spec.data == "images":
        photos = _data.natural_images()
        n_cal, n_ev = calib or IMAGES_CALIB, n_eval or IMAGES_EVAL
        raw_cal, _ = _data.random_crops(photos, n_cal, h, w, seed)
        raw_ev, _ = _data.random_crops(photos, n_ev, h, w, seed + 1)
        names = ", ".join(name for name, _ in photos)
        return SplitData(
            _data.normalize(raw_cal, spec.mean, spec.std),
            _data.normalize(raw_ev, spec.mean, spec.std),
            None,
            f"{n_cal} random crops/flips (seed {seed}) of {len(photos)} shipped photos: {names}",
            f"{n_ev} random crops/flips (seed {seed + 1}) of the same photos",
            None,
        )
    assert spec.user_data is not None
    arrays = _data.load_arrays(spec.user_data, (c, h, w))
    order = np.random.default_rng(seed).permutation(len(arrays))
    if len(arrays) >= 8:
        n_ev = len(arrays) // 4
        ev, rest = order[:n_ev], order[n_ev:]
        note = f"{n_ev} seeded samples of {spec.user_data}, not used for calibration"
    else:
        ev, rest = order, order
        note = f"all {len(arrays)} samples of {spec.user_data} (too few to hold any out)"
    cal = rest[: calib or len(rest)]
    return SplitData(
        arrays[np.sort(cal)],
        arrays[np.sort(ev)],
        None,
        f"{len(cal)} samples of {spec.user_data}",
        note,
        None,
    )


def _check_split(
    head: onnx.ModelProto, tail: onnx.ModelProto, x: np.ndarray, ref: np.ndarray, index: int
) -> float:
    """Max |head -> tail - full| over logits `ref` ``[N, K]`` on inputs `x`; ExportError past
    CHECK_ATOL relative to the logit scale."""
    out = run(session(tail), run(session(head), x))  # [N, K]
    diff = float(np.abs(out - ref).max())
    if diff > CHECK_ATOL * max(1.0, float(np.abs(ref).max())):
        raise ExportError(f"split {index}: head + tail differs from the full model by {diff:.3g}")
    return diff


def _write_pair(
    head: onnx.ModelProto,
    tail: onnx.ModelProto,
    calib: np.ndarray,
    head_path: Path,
    tail_path: Path,
) -> onnx.ModelProto:
    """Write `head` quantized to INT8 (calibrated on `calib` ``[Nc, C, H, W]``) and the fp32
    `tail`, each atomically; return the INT8 head."""
    with atomic_output(head_path) as tmp:
        head_q = quantize_int8(head, tmp, calib)
    with atomic_output(tail_path) as tmp:
        onnx.save(tail, tmp)
    return head_q


def _feature_entry(
    shape: tuple[int, int, int], stats: ChannelStats, scores: np.ndarray, order: np.ndarray
) -> dict[str, Any]:
    """The profile's ``feature`` entry of a split: the uint8 feature ``[C, H, W]`` its head
    sends, its per-channel codec parameters (`stats`) and channel importance (``[C]`` each)."""
    c, h, w = shape
    return {
        "name": "feature",
        "shape": [c, h, w],
        "channels": c,
        "bytes": c * h * w,
        "bytes_per_channel": h * w,
        "dtype": "uint8",
        "scale": stats.scale.tolist(),
        "zero_point": stats.zero_point.tolist(),
        "mean": stats.mean.tolist(),
        "min": stats.lo.tolist(),
        "max": stats.hi.tolist(),
        "importance_order": order.tolist(),
        "importance": scores.tolist(),
    }


def _split_one(
    b: Boundary,
    info: GraphInfo,
    data: SplitData,
    full_cal: np.ndarray,
    full_ev: np.ndarray,
    out_dir: Path,
    threads: int,
    n_importance: int,
    say: Announce,
) -> dict[str, Any]:
    """Write head_s/tail_s for boundary `b` and return its profile entry."""
    t0 = time.perf_counter()
    head, tail = extract(info, b)
    diff = _check_split(head, tail, data.calib, full_cal, b.index)
    say(
        f"split {b.index} ({b.block}, feature {list(b.shape)}): "
        f"head+tail vs full max |diff| {diff:.3g}"
    )
    head_path, tail_path = out_dir / f"head_{b.index}.onnx", out_dir / f"tail_{b.index}.onnx"
    head_q = _write_pair(head, tail, data.calib, head_path, tail_path)
    head_s, tail_s = session(head_q), session(tail)
    feat_cal = run(head_s, data.calib)  # [Nc, C, H, W] from the INT8 head
    feat_ev = run(head_s, data.eval)  # [Ne, C, H, W]
    stats = channel_stats(feat_cal)
    scores = importance(tail_s, feat_cal[:n_importance], stats.mean)
    order = importance_order(scores)
    codec = FeatureCodec(b.shape, stats.scale, stats.zero_point, stats.mean, order)
    ref_top1 = full_ev.argmax(axis=1)
    int8_agree = float((run(tail_s, feat_ev).argmax(axis=1) == ref_top1).mean())
    curve, table = accuracy_curve(tail_s, codec, feat_ev, ref_top1, data.labels)
    x1 = data.calib[:1]
    head_ms, head_fp32_ms = latency_ms(session(head_q, threads), session(head, threads), sample=x1)
    (tail_ms,) = latency_ms(session(tail, threads), sample=feat_cal[:1])
    say(
        f"split {b.index}: INT8 head {head_ms:.3f} ms ({head_fp32_ms / head_ms:.2f}x fp32), tail "
        f"{tail_ms:.3f} ms, INT8 top-1 agreement {int8_agree:.3f} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return {
        "index": b.index,
        "block": b.block,
        "tensor": b.tensor,
        "head": {
            "file": head_path.name,
            "format": "int8-qdq",
            "flops": graph_flops(head),
            "latency_ms": head_ms,
            "fp32_latency_ms": head_fp32_ms,
            "int8_speedup": head_fp32_ms / head_ms,
            "file_bytes": head_path.stat().st_size,
        },
        "tail": {
            "file": tail_path.name,
            "format": "fp32",
            "flops": graph_flops(tail),
            "latency_ms": tail_ms,
            "file_bytes": tail_path.stat().st_size,
        },
        "feature": _feature_entry(b.shape, stats, scores, order),
        "check": {"max_abs_diff": diff, "samples": len(data.calib)},
        "int8_agreement": int8_agree,
        "int8_metric": curve[-1].accuracy,
        "accuracy_curve": [vars(p) for p in curve],
        "entropy_table": table,
    }


def split_model(
    model: str,
    out_dir: Path,
    *,
    splits: str | list[int] = "auto",
    calib: int | None = None,
    n_eval: int | None = None,
    seed: int = 0,
    threads: int = 1,
    importance_samples: int = IMPORTANCE_SAMPLES,
    cache_dir: Path | None = None,
    input_shape: list[int] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    calib_data: Path | None = None,
    announce: Announce | None = None,
) -> SplitResult:
    """Split `model` (KNOWN_MODELS name or ``.pt`` path) at `splits` (``auto``, ``all``, split
    indices, or their comma-separated text) into `out_dir`.

    `calib`/`n_eval`: sample counts (defaults per model kind); `threads`: intra-op threads for
    the latency figures; `importance_samples`: calibration samples for channel scores. See
    docs/export-dnn.md for the files and the profile.
    """
    from export.dnn._digits import default_cache_dir

    say = announce or (lambda line: None)
    start = time.perf_counter()
    if isinstance(splits, str):
        splits = parse_splits(splits)
    if calib is not None and calib < 1:
        raise ExportError("--calib must be >= 1")
    spec = resolve_model(
        model,
        cache_dir=cache_dir or default_cache_dir(),
        seed=seed,
        input_shape=input_shape,
        mean=mean,
        std=std,
        calib_data=calib_data,
        announce=say,
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {out_dir}: {e}") from None
    full_path = out_dir / "model.onnx"
    with atomic_output(full_path) as tmp:
        export_onnx(spec, tmp)
        info = analyze(fold_constants(onnx.load(str(tmp))))
        onnx.save(info.model, tmp)
    chosen = _choose(spec, info, splits)
    say(
        f"{spec.name}: {len(info.boundaries)} split points, {info.flops / 1e6:.1f} MFLOPs; "
        f"splitting at {[b.index for b in chosen]}"
    )
    data = load_data(spec, calib, n_eval, seed)
    say(f"data: calibration {len(data.calib)}, evaluation {len(data.eval)} samples")
    full = session(info.model)
    full_cal, full_ev = run(full, data.calib), run(full, data.eval)  # [N, K] logits
    target = data.labels if data.labels is not None else full_ev.argmax(axis=1)
    fp32_metric = float((full_ev.argmax(axis=1) == target).mean())
    (full_ms,) = latency_ms(session(info.model, threads), sample=data.calib[:1])
    n_imp = max(1, min(importance_samples, len(data.calib)))
    entries = [
        _split_one(b, info, data, full_cal, full_ev, out_dir, threads, n_imp, say) for b in chosen
    ]
    auto = set(auto_splits(info.boundaries, info.flops, int(np.prod(spec.input_shape[1:]))))
    profile = _profile(spec, info, data, entries, auto, splits, seed, threads, fp32_metric, full_ms)
    path = out_dir / PROFILE_NAME
    write_profile(path, profile)
    return SplitResult(out_dir, path, profile, time.perf_counter() - start)


def _profile(
    spec: ModelSpec,
    info: GraphInfo,
    data: SplitData,
    entries: list[dict[str, Any]],
    auto: set[int],
    splits: str | list[int],
    seed: int,
    threads: int,
    fp32_metric: float,
    full_ms: float,
) -> dict[str, Any]:
    import onnxruntime

    _, c, h, w = spec.input_shape
    return {
        "format": "coinfer-dnn-profile",
        "version": 1,
        "seed": seed,
        "selection": splits if isinstance(splits, str) else ",".join(map(str, splits)),
        "model": {
            "name": spec.name,
            "source": spec.source,
            "file": "model.onnx",
            "input": {
                "name": "input",
                "shape": list(spec.input_shape),
                "dtype": "float32",
                "layout": "NCHW",
                "mean": list(spec.mean),
                "std": list(spec.std),
                "raw_range": list(spec.raw_range),
                "raw_bytes": c * h * w,
                "preprocess": spec.preprocess,
            },
            "output": {"name": "logits", "num_classes": spec.num_classes},
            "labels": {"source": spec.labels_source, "names": spec.label_names},
            "flops": info.flops,
            "latency_ms": full_ms,
            "fp32_metric": fp32_metric,
            "info": spec.info,
        },
        "data": {
            "calibration": {"source": data.calib_source, "samples": len(data.calib)},
            "evaluation": {
                "source": data.eval_source,
                "samples": len(data.eval),
                "metric": "top1-accuracy"
                if data.labels is not None
                else "top1-agreement-with-fp32-model",
                "indices": data.eval_indices,
            },
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "onnxruntime": onnxruntime.__version__,
            "threads": threads,
        },
        "candidates": [
            {
                "index": b.index,
                "block": b.block,
                "tensor": b.tensor,
                "shape": list(b.shape),
                "bytes": b.feature_bytes,
                "head_flops_fraction": b.head_flops / max(info.flops, 1),
                "auto": b.index in auto,
            }
            for b in info.boundaries
        ],
        "splits": entries,
    }
