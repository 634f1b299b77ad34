"""Per-board quantization presets and the runtime-settings sidecar they write.

`quantize_for_board` quantizes a GGUF model with the board's type (or a `--type` override),
loads the result once in llama.cpp to read its trained context length (and to prove it
loads), and writes ``Y.gguf.json`` (schema in ondevice/common/model_sidecar.py, example in
docs/export-llm.md) with the recommended ``n_threads``, ``n_gpu_layers``, ``n_ctx``, the file's
sha256, and the reason for each choice. The sidecar holds no timestamps: the same input, preset
and type give the same sidecar bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export._errors import ExportError
from export._quantize import QUANT_TYPES, QuantizeResult, quantize_gguf
from ondevice.common import jsonout
from ondevice.common.files import atomic_output
from ondevice.common.model_sidecar import SCHEMA, file_sha256, sidecar_path


@dataclass(frozen=True)
class BoardPreset:
    """What to build for one board. ``n_threads`` None: all cores (the runtime's default);
    ``n_gpu_layers`` -1: every layer on the GPU. ``sources`` gives the reason per field."""

    name: str
    qtype: str
    n_threads: int | None
    n_gpu_layers: int
    n_ctx: int
    sources: dict[str, str]


_NO_GPU = "has no llama.cpp GPU backend; inference runs on the CPU cores"
_FOUR_CORES = "4 cores; llama.cpp decoding is memory-bound, one thread per core"

PRESETS: dict[str, BoardPreset] = {
    "rpi4": BoardPreset(
        name="rpi4",
        qtype="q4_0",
        n_threads=4,
        n_gpu_layers=0,
        n_ctx=2048,
        sources={
            "type": "Cortex-A72 (ARMv8.0-A, NEON without dotprod): no repacked kernel applies, "
            "Q4_0 is the cheapest well-supported 4-bit NEON path",
            "n_threads": "Raspberry Pi 4 (BCM2711): " + _FOUR_CORES,
            "n_gpu_layers": "VideoCore VI " + _NO_GPU,
            "n_ctx": "2048: 1-8 GB of RAM shared with the OS; keeps the KV cache small",
        },
    ),
    "rpi5": BoardPreset(
        name="rpi5",
        qtype="q4_0",
        n_threads=4,
        n_gpu_layers=0,
        n_ctx=4096,
        sources={
            "type": "Cortex-A76 has dotprod: llama.cpp repacks Q4_0 at load time into "
            "interleaved Q4_0_4x4 rows (CPU_REPACK buffer), its fastest ARM kernel",
            "n_threads": "Raspberry Pi 5 (BCM2712): " + _FOUR_CORES,
            "n_gpu_layers": "VideoCore VII " + _NO_GPU,
            "n_ctx": "4096: 4-16 GB of RAM",
        },
    ),
    "jetson-orin": BoardPreset(
        name="jetson-orin",
        qtype="q4_k_m",
        n_threads=6,
        n_gpu_layers=-1,
        n_ctx=4096,
        sources={
            "type": "CUDA offload to the Ampere GPU: k-quants have CUDA kernels and keep more "
            "quality than Q4_0 at a similar size",
            "n_threads": "6 Cortex-A78AE cores on Orin Nano/NX (AGX has 8-12); with every layer "
            "on the GPU the CPU threads only feed it",
            "n_gpu_layers": "-1 (all layers): CPU and GPU share memory, offloading costs no copy",
            "n_ctx": "4096: 8-64 GB of unified memory",
        },
    ),
    "jetson-nano": BoardPreset(
        name="jetson-nano",
        qtype="q4_0",
        n_threads=4,
        n_gpu_layers=0,
        n_ctx=2048,
        sources={
            "type": "CPU inference on Cortex-A57 (ARMv8.0-A, no dotprod), as on rpi4: Q4_0",
            "n_threads": "Jetson Nano: " + _FOUR_CORES,
            "n_gpu_layers": "0: JetPack 4 ships CUDA 10.2 and gcc 7, which current llama.cpp's "
            "CUDA backend does not build with, so the Maxwell GPU is not used",
            "n_ctx": "2048: 4 GB shared by CPU and GPU",
        },
    ),
    "x86": BoardPreset(
        name="x86",
        qtype="q4_k_m",
        n_threads=None,
        n_gpu_layers=0,
        n_ctx=4096,
        sources={
            "type": "x86-64 with AVX2: Q4_K_M, llama.cpp's usual size/quality trade-off; "
            "its k-quant kernels are vectorized for AVX2",
            "n_threads": "null: all cores (the runtime's default); core counts vary too much "
            "to fix one",
            "n_gpu_layers": "0: the x86 preset is for CPU inference",
            "n_ctx": "4096",
        },
    ),
}


@dataclass(frozen=True)
class PresetResult:
    """A quantization for a board and the sidecar written next to it."""

    quantize: QuantizeResult
    sidecar_path: Path
    sidecar: dict[str, Any]

    def summary(self) -> str:
        """Two lines: the quantization summary and the recommended runtime settings."""
        rt = self.sidecar["runtime"]
        threads = "all" if rt["n_threads"] is None else rt["n_threads"]
        return (
            f"{self.quantize.summary()}\n"
            f"preset {self.sidecar['preset']}: n_threads {threads}, n_gpu_layers "
            f"{rt['n_gpu_layers']}, n_ctx {rt['n_ctx']} -> {self.sidecar_path}"
        )


def get_preset(name: str) -> BoardPreset:
    """The preset called `name`; ExportError naming the valid ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ExportError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}") from None


def build_sidecar(
    preset: BoardPreset,
    model_path: Path,
    *,
    qtype: str,
    type_overridden: bool,
    n_ctx_train: int,
    sha256: str,
) -> dict[str, Any]:
    """The sidecar dict (schema ondevice.common.model_sidecar.SCHEMA) for a file made with `preset`.

    ``n_ctx`` is the preset's, capped at the model's trained context `n_ctx_train` (if > 0);
    ``type`` is `qtype`, recorded as an override when `type_overridden`. Pure.
    """
    sources = dict(preset.sources)
    if type_overridden:
        sources["type"] = f"--type {qtype} (overrides the preset's {preset.qtype})"
    n_ctx = preset.n_ctx
    if 0 < n_ctx_train < n_ctx:
        n_ctx = n_ctx_train
        sources["n_ctx"] = (
            f"{n_ctx_train}: the model's trained context length (preset: {preset.n_ctx})"
        )
    return {
        "schema": SCHEMA,
        "model": model_path.name,
        "size_bytes": model_path.stat().st_size,
        "sha256": sha256,
        "preset": preset.name,
        "type": qtype,
        "runtime": {
            "n_threads": preset.n_threads,
            "n_gpu_layers": preset.n_gpu_layers,
            "n_ctx": n_ctx,
        },
        "sources": sources,
        "created_by": f"model-export llm quantize --preset {preset.name}"
        + (f" --type {qtype}" if type_overridden else ""),
    }


def write_sidecar(model_path: Path, sidecar: dict[str, Any]) -> Path:
    """Write `sidecar` as ``model_path.json`` atomically (sorted keys, 2-space indent)."""
    path = sidecar_path(model_path)
    with atomic_output(path) as tmp:
        tmp.write_text(jsonout.dumps(sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _n_ctx_train(path: Path) -> int:
    """The trained context length llama.cpp reads from `path` (loading it proves it loads)."""
    from ondevice.common.llama_runtime import LlamaError, LlamaModel

    try:
        with LlamaModel(path) as model:
            return int(model.n_ctx_train)
    except LlamaError as e:
        raise ExportError(f"the quantized model does not load in llama.cpp: {e}") from e


def quantize_for_board(
    in_path: Path,
    out_path: Path,
    preset_name: str,
    *,
    qtype: str | None = None,
    nthread: int = 0,
    verbose: bool = False,
    progress: bool | None = None,
    announce: Callable[[str], None] | None = None,
    chat_template: str | None = None,
) -> PresetResult:
    """Quantize `in_path` for the board `preset_name` into `out_path` and write its sidecar.

    `qtype` (a key of QUANT_TYPES) overrides the preset's type. The other arguments
    (`chat_template` too) are quantize_gguf's. Raises ExportError for an unknown preset or
    type and everything quantize_gguf raises for; a failure leaves neither the model nor the
    sidecar behind (an old sidecar next to a failed output is left untouched).
    """
    preset = get_preset(preset_name)
    key = preset.qtype if qtype is None else qtype.lower()
    if key not in QUANT_TYPES:
        raise ExportError(f"unknown quantization type {qtype!r}; valid: {', '.join(QUANT_TYPES)}")
    result = quantize_gguf(
        in_path,
        out_path,
        key,
        nthread=nthread,
        verbose=verbose,
        progress=progress,
        announce=announce,
        chat_template=chat_template,
    )
    try:
        if announce is not None:
            announce(f"hashing {out_path} and checking that it loads")
        sidecar = build_sidecar(
            preset,
            out_path,
            qtype=key,
            type_overridden=qtype is not None and key != preset.qtype,
            n_ctx_train=_n_ctx_train(out_path),
            sha256=file_sha256(out_path),
        )
        path = write_sidecar(out_path, sidecar)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    return PresetResult(quantize=result, sidecar_path=path, sidecar=sidecar)
