"""Static INT8 quantization of an fp32 ONNX model with onnxruntime.quantization.

The recipe (onnxruntime's documented static-quantization path):

1. `quant_pre_process`: symbolic shape inference, onnxruntime's basic graph optimizations
   (constant folding, Conv+BN/Add fusion), and ONNX shape inference, so that the quantizer sees
   fused ops with known shapes;
2. `quantize_static` in QDQ format: weights int8 symmetric per output channel, activations
   uint8 asymmetric per tensor, ranges from MinMax calibration on real samples fed by a
   `CalibrationDataReader`. The model's input and output stay float32 (a DequantizeLinear ends
   the graph), so the caller feeds and reads it like the fp32 model.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export._errors import ExportError
from export._paths import check_output_file, output_name
from ondevice.common.files import atomic_output

CALIB_BATCH = 16  # samples per calibration batch (memory vs. calls)


def _reader(input_name: str, data: np.ndarray, batch: int) -> object:
    """A CalibrationDataReader over `data` ``[N, ...]`` in batches of `batch`."""
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(())
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter([{input_name: data[i : i + batch]} for i in range(0, len(data), batch)])

    return ArrayReader()


def quantize_int8(
    model: onnx.ModelProto, out_path: Path, calib: np.ndarray, *, batch: int = CALIB_BATCH
) -> onnx.ModelProto:
    """Write the INT8 QDQ version of fp32 `model` (one input) to `out_path` and return it,
    calibrated on `calib` ``[N, *input_shape[1:]]`` float32 (already normalized)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if len(calib) == 0:
        raise ExportError("calibration needs at least one sample")
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise ExportError(f"quantization expects one model input, found {inputs}")
    # Batches must match a fixed batch dimension if the model has one.
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    if dim0.HasField("dim_value") and dim0.dim_value > 0:
        batch = dim0.dim_value
        calib = calib[: len(calib) - len(calib) % batch] if len(calib) >= batch else calib
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs hints at WARNING
    try:
        with tempfile.TemporaryDirectory(prefix="coinfer-quant-") as tmp:
            src = Path(tmp) / "fp32.onnx"
            pre = Path(tmp) / "pre.onnx"
            onnx.save(model, src)
            try:
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            except Exception:  # symbolic shape inference fails on some graphs: ONNX's only
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            try:
                quantize_static(
                    str(pre),
                    str(out_path),
                    _reader(inputs[0], np.ascontiguousarray(calib, dtype=np.float32), batch),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"CalibTensorRangeSymmetric": False},
                )
            except Exception as e:  # onnxruntime's errors for graphs it cannot quantize
                raise ExportError(f"INT8 quantization failed: {str(e).splitlines()[0]}") from None
    finally:
        logging.getLogger().setLevel(quiet)
    return onnx.load(str(out_path))


@dataclass(frozen=True)
class QuantizeReport:
    """What `quantize_onnx_file` did; latencies in ms (batch 1), sizes in bytes."""

    in_path: Path
    out_path: Path
    samples: int
    max_abs_diff: float
    top1_agreement: float | None  # None unless the output is [N, classes]
    fp32_ms: float
    int8_ms: float
    in_bytes: int
    out_bytes: int

    def summary(self) -> str:
        """One line for humans."""
        agree = (
            "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.3f}"
        )
        return (
            f"{self.in_path.name} ({self.in_bytes / 1024:.0f} KiB) -> {self.out_path} "
            f"({self.out_bytes / 1024:.0f} KiB, INT8 QDQ); on {self.samples} calibration samples: "
            f"max |diff| {self.max_abs_diff:.4g}{agree}; {self.fp32_ms:.3f} ms fp32 -> "
            f"{self.int8_ms:.3f} ms INT8 ({self.fp32_ms / self.int8_ms:.2f}x)"
        )


def quantize_onnx_file(
    in_path: Path,
    calib_path: Path,
    out_path: Path,
    *,
    calib: int | None = None,
    seed: int = 0,
    threads: int = 1,
) -> QuantizeReport:
    """Quantize a user's fp32 ONNX model (one ``[N, ...]`` input) to INT8 QDQ at `out_path`,
    calibrated on the arrays of `calib_path` (``.npz``, ``.npy`` or a directory of them, one
    sample or a batch per array, already normalized); at most `calib` seeded samples. Compares
    the two models on the calibration samples and times both with `threads` threads.
    ExportError (before any work) for a missing or non-ONNX input, an `out_path` that is a
    directory or whose directory does not exist."""
    from export.dnn._data import load_arrays
    from export.dnn._runtime import latency_ms, run, session

    if not in_path.is_file():
        raise ExportError(f"model not found: {in_path}")
    check_output_file(out_path, example=output_name(in_path, "int8"))
    try:
        model = onnx.load(str(in_path))
    except Exception as e:  # protobuf DecodeError and friends: not an ONNX file
        raise ExportError(f"{in_path} is not an ONNX model: {str(e).splitlines()[0]}") from None
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise ExportError(f"{in_path}: quantize needs a model with one input, not {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim[1:]
    if not all(d.HasField("dim_value") for d in dims):
        raise ExportError(f"{in_path}: the input's non-batch dimensions must be fixed")
    data = load_arrays(calib_path, [d.dim_value for d in dims])
    if calib is not None:
        pick = np.random.default_rng(seed).permutation(len(data))[:calib]
        data = data[np.sort(pick)]
    if not out_path.parent.is_dir():
        raise ExportError(f"output directory does not exist: {out_path.parent}")
    with atomic_output(out_path) as tmp:
        quantized = quantize_int8(model, tmp, data)
    fp32, int8 = session(model), session(quantized)
    ref, out = run(fp32, data), run(int8, data)
    agreement = float((ref.argmax(axis=1) == out.argmax(axis=1)).mean()) if ref.ndim == 2 else None
    return QuantizeReport(
        in_path,
        out_path,
        len(data),
        float(np.abs(ref - out).max()),
        agreement,
        *latency_ms(session(model, threads), session(quantized, threads), sample=data[:1]),
        in_path.stat().st_size,
        out_path.stat().st_size,
    )
