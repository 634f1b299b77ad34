"""onnxruntime sessions: batched inference and latency measurement (CPU execution provider).

Latency is the median wall time of single-sample runs after warm-up, in milliseconds, on this
machine with a fixed number of intra-op threads; models compared with each other are timed in
alternation (the device's figure is re-measured there:
ENACHI's controller uses online estimates, this is its prior).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from export._errors import ExportError

WARMUP_RUNS = 3
MIN_RUNS = 10
MIN_SECONDS = 0.25  # s of timed runs per measurement, after MIN_RUNS
MAX_RUNS = 200


def session(model: onnx.ModelProto | Path | bytes, threads: int = 0) -> ort.InferenceSession:
    """A CPU session for `model`; `threads` intra-op threads (0: onnxruntime's default)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: quantized graphs log fusion notes otherwise
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(
            str(data) if isinstance(data, Path) else data, opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ExportError(f"onnxruntime cannot load the model: {str(e).splitlines()[0]}") from None


def run(sess: ort.InferenceSession, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """The session's first output for every sample of `x` ``[N, ...]``, in batches of `batch`
    (1 if the model's batch dimension is fixed)."""
    name = sess.get_inputs()[0].name
    dim0 = sess.get_inputs()[0].shape[0]
    step = batch if not isinstance(dim0, int) else dim0
    outs = [sess.run(None, {name: x[i : i + step]})[0] for i in range(0, len(x), step)]
    return np.concatenate(outs, axis=0)


def latency_ms(*sessions: ort.InferenceSession, sample: np.ndarray) -> list[float]:
    """Median ms of one run of each session on `sample` ``[1, ...]``, after WARMUP_RUNS
    warm-up runs each. Sessions run in turn, one run each per round, so that on a shared
    machine they see the same interference and their ratios stay fair."""
    feeds = [
        {sess.get_inputs()[0].name: np.ascontiguousarray(sample, dtype=np.float32)}
        for sess in sessions
    ]
    for sess, feed in zip(sessions, feeds, strict=True):
        for _ in range(WARMUP_RUNS):
            sess.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    start = time.perf_counter()
    while len(times[0]) < MAX_RUNS and (
        len(times[0]) < MIN_RUNS or time.perf_counter() - start < MIN_SECONDS * len(sessions)
    ):
        for k, (sess, feed) in enumerate(zip(sessions, feeds, strict=True)):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times[k].append(time.perf_counter() - t0)
    return [float(np.median(t) * 1000.0) for t in times]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, K]`` logits, float64."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)  # [N, K]
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def entropy_nats(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row of probabilities ``[N, K]`` -> ``[N]``."""
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)
