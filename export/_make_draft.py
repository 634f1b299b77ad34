"""Make a draft model from a target GGUF: keep its first N layers and/or requantize it.

A self-draft shares the target's tokenizer by construction. `make_draft` writes it in up to two
steps, then proves the result:

1. ``keep_layers`` (layer truncation, "early exit"): copy the target with the gguf package's
   reader and writer, keeping every metadata key and tensor except the blocks ``blk.i.*`` with
   i >= N. ``{arch}.block_count`` becomes N and every per-layer array under ``{arch}.`` (an array
   with one entry per block, e.g. per-layer head counts or a sliding-window pattern) is cut to
   its first N entries. Only a prefix is kept, never arbitrary layers: llama.cpp derives some
   per-layer properties from the layer index alone (Gemma 2/3's sliding-window vs global
   attention and the local RoPE base, Cohere 2's window), so the first N layers of the copy
   behave exactly as the first N layers of the target. The output norm and head are kept.
2. ``qtype``: quantize (or requantize) with llama.cpp, e.g. Q4_K_M to q3_k_s.

Then the draft is loaded in llama.cpp and run on a few tokens, and `check_pair` must find it a
valid draft for its source. Models whose behaviour llama.cpp keys on the layer count itself are
refused (see _LAYER_COUNT_MEANS), as are architectures with layers that a prefix cannot keep
consistent (multi-token-prediction layers at the end, Gemma 3n's per-layer embeddings).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export._check_pair import PairReport, check_pair, field_value, open_reader, read_vocabulary
from export._errors import ExportError
from export._paths import check_output_file, output_name
from export._progress import Stages, show_progress
from export._quantize import QUANT_TYPES, quantize_gguf
from ondevice.common.files import atomic_output

_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.")

# (architecture, block_count) whose meaning in llama.cpp depends on that exact count, so a
# truncated copy would be computed differently, not just with fewer layers (llama-model.cpp,
# load_hparams).
_LAYER_COUNT_MEANS: dict[tuple[str, int], str] = {
    ("gemma2", 46): "llama.cpp picks Gemma 2 27B's attention scale from its 46 layers",
    ("gemma3", 62): "llama.cpp picks Gemma 3 27B's attention scale from its 62 layers",
    ("deepseek2", 27): "llama.cpp recognizes DeepSeek-V2-Lite (no q LoRA) by its 27 layers",
}

_REFUSED_ARCHS: dict[str, str] = {
    "gemma3n": "Gemma 3n's per-layer token embeddings and KV-sharing layers are sized by the "
    "layer count",
}

# Scalars that count layers from the start: clamped to the kept count.
_CLAMPED_SUFFIXES = ("leading_dense_block_count",)
# Arrays under {arch}. that are not per-layer even if their length happens to equal the count.
_NOT_PER_LAYER = ("rope.dimension_sections",)

# Architectures with a fixed sliding-window period in llama.cpp (set_swa_pattern(p): layer i
# uses the window iff i % p < p - 1); used only to describe what the draft keeps.
_SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "cohere2": 4}


@dataclass(frozen=True)
class DraftResult:
    """What `make_draft` made. Sizes in bytes, time in seconds; ``kept_layers`` is None when no
    layers were dropped, ``qtype`` None when the tensors were copied as they were."""

    source: Path
    out_path: Path
    architecture: str
    source_layers: int
    kept_layers: int | None
    qtype: str | None
    source_bytes: int
    out_bytes: int
    seconds: float
    pair: PairReport
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable: what was kept, sizes, the pair check's verdict, notes."""
        mib = 1024 * 1024
        layers = (
            f"{self.kept_layers} of {self.source_layers} layers"
            if self.kept_layers is not None
            else f"all {self.source_layers} layers"
        )
        qtype = self.qtype or "tensor types unchanged"
        lines = [
            f"{self.source.name} ({self.source_bytes / mib:.2f} MiB) -> {self.out_path} "
            f"({self.out_bytes / mib:.2f} MiB, {self.out_bytes / self.source_bytes:.1%}; "
            f"{self.architecture}, {layers}, {qtype}) in {self.seconds:.1f} s",
            f"check-pair against {self.source.name}: "
            + ("valid" if self.pair.valid else "INVALID"),
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _field_int(reader: Any, key: str) -> int | None:
    f = reader.fields.get(key)
    return None if f is None else int(f.contents())


def layer_types_note(arch: str, keep: int, n_swa: int | None) -> str | None:
    """For architectures with a fixed sliding-window period, which kept layers are global.

    Pure; None for other architectures. Example: gemma3, 6 -> layers 0-4 local, 5 global.
    """
    period = _SWA_PERIOD.get(arch)
    if period is None:
        return None
    global_layers = [i for i in range(keep) if i % period == period - 1]
    window = f"{n_swa}-token window" if n_swa else "sliding window"
    pattern = (
        f"{arch}: llama.cpp fixes the attention pattern by layer index (every {period}th layer "
        f"global, the rest a {window}); a kept prefix keeps it"
    )
    if not global_layers:
        return pattern + (
            f"; none of the {keep} kept layers is global, so the draft sees only the last "
            f"{n_swa or '?'} tokens (keep {period} or more layers to include one)"
        )
    return pattern + f"; global layers kept: {', '.join(map(str, global_layers))}"


def _truncatable(reader: Any, src: Path, keep: int) -> tuple[str, int]:
    """`src`'s architecture and block count; ExportError unless its first `keep` layers can
    stand alone (see the module docstring)."""
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise ExportError(f"{src} has no general.architecture: not a model file")
    arch = str(arch_field.contents())
    n_layer = _field_int(reader, f"{arch}.block_count")
    if n_layer is None:
        raise ExportError(f"{src} has no {arch}.block_count: cannot tell its layers")
    if not 1 <= keep < n_layer:
        raise ExportError(
            f"--keep-layers must be between 1 and {n_layer - 1} for {src.name} "
            f"({n_layer} layers), got {keep}"
        )
    if arch in _REFUSED_ARCHS:
        raise ExportError(f"cannot truncate {arch} models: {_REFUSED_ARCHS[arch]}")
    if (arch, n_layer) in _LAYER_COUNT_MEANS:
        raise ExportError(
            f"cannot truncate {src.name}: {_LAYER_COUNT_MEANS[arch, n_layer]}, so a "
            "truncated copy would compute differently; use --type alone"
        )
    nextn = _field_int(reader, f"{arch}.nextn_predict_layers")
    if nextn:
        raise ExportError(
            f"cannot truncate {src.name}: its last {nextn} layers are multi-token-prediction "
            "layers that llama.cpp locates from the layer count"
        )
    return arch, n_layer


def _copy_metadata(reader: Any, writer: Any, arch: str, keep: int, n_layer: int) -> list[str]:
    """Add `reader`'s metadata keys to `writer` as a `keep`-layer model has them (block count,
    name, clamped counts, per-layer arrays cut); return a note for each array cut or dropped."""
    import gguf

    prefix = f"{arch}."
    notes: list[str] = []
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # written by GGUFWriter itself
        vtype = f.types[0]
        sub_type = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field_value(f)
        if name == f"{prefix}block_count":
            value = keep
        elif name == "general.name":
            value = f"{value} (first {keep} of {n_layer} layers)"
        elif name.startswith(prefix) and name.endswith(_CLAMPED_SUFFIXES):
            value = min(int(value), keep)
        elif (
            sub_type is not None
            and name.startswith(prefix)
            and not name.endswith(_NOT_PER_LAYER)
            and len(value) == n_layer
        ):
            value = value[:keep]
            notes.append(f"per-layer array {name} cut to its first {keep} entries")
        if sub_type is not None and len(value) == 0:
            notes.append(f"dropped the empty array {name} (GGUFWriter cannot write one)")
            continue
        writer.add_key_value(name, value, vtype, sub_type=sub_type)
    return notes


def _write_gguf(reader: Any, writer: Any, kept: list[Any], show: bool) -> None:
    """Write `writer`'s header, metadata and tensor infos, then the data of `kept` (tensors of
    `reader`) with a byte bar when `show`; close `writer` in any case."""
    from tqdm import tqdm

    bar = tqdm(
        desc="write",
        total=sum(t.n_bytes for t in kept),
        unit="B",
        unit_scale=True,
        disable=not show,
        file=sys.stderr,
        leave=None,  # kept on its own, cleared when it stacks under make-draft's step bar
    )
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in kept:
            writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
            bar.update(t.n_bytes)
    finally:
        bar.close()
        writer.close()


def truncate_layers(
    src: Path,
    dst: Path,
    keep: int,
    *,
    progress: bool | None = None,
    announce: Callable[[str], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[str]:
    """Write `dst`: `src` with only its first `keep` blocks (see the module docstring).

    `on_step(name)` is called as reading and then writing start (for a caller's step bar);
    `progress` as in quantize_gguf, for the per-byte bar while writing.

    Returns notes for the user (per-layer arrays cut, the attention pattern kept). Raises
    ExportError for an input that is missing or not GGUF, has no ``{arch}.block_count``, a
    `keep` outside 1..block_count-1, or an architecture/layer count that cannot be truncated
    consistently.
    `dst`'s directory must exist; `dst` is written in place (callers use atomic_output).
    """
    import gguf

    if announce is not None:
        announce(f"reading {src}")
    if on_step is not None:
        on_step(f"reading {src.name}")
    reader = open_reader(src)
    arch, n_layer = _truncatable(reader, src, keep)
    read_vocabulary(src, reader=reader)  # the pair check after writing reuses it
    writer = gguf.GGUFWriter(str(dst), arch, endianess=reader.endianess)
    alignment = _field_int(reader, "general.alignment")
    if alignment is not None:
        writer.data_alignment = alignment
    notes = _copy_metadata(reader, writer, arch, keep, n_layer)
    kept = []
    for t in reader.tensors:
        m = _BLOCK_TENSOR.match(t.name)
        if m is None or int(m.group(1)) < keep:
            kept.append(t)
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    if announce is not None:
        total = sum(t.n_bytes for t in kept)
        announce(
            f"writing {len(kept)} of {len(reader.tensors)} tensors "
            f"({total / 2**20:.1f} MiB) to keep {keep} of {n_layer} layers"
        )
    if on_step is not None:
        on_step(f"writing {keep} layers")
    _write_gguf(reader, writer, kept, show_progress(progress))
    swa = layer_types_note(arch, keep, _field_int(reader, f"{arch}.attention.sliding_window"))
    if swa is not None:
        notes.append(swa)
    return notes


def smoke_run(path: Path, n_threads: int = 1) -> None:
    """Load `path` in llama.cpp and decode a short prompt; ExportError unless the logits come
    back finite."""
    import numpy as np

    from ondevice.common.llama_runtime import LlamaConfig, LlamaError, LlamaModel, LlamaRunner

    try:
        with LlamaModel(path) as model:
            cfg = LlamaConfig(n_ctx=64, n_batch=64, n_threads=n_threads)
            with LlamaRunner(model, cfg) as runner:
                tokens = model.tokenize("The quick brown fox")
                logits = runner.eval(tokens, 1)
                if not np.all(np.isfinite(logits)):
                    raise ExportError(f"draft {path} produces non-finite logits")
    except LlamaError as e:
        raise ExportError(f"draft {path} does not load or run in llama.cpp: {e}") from e


def _check_draft_options(
    src: Path, out: Path, keep_layers: int | None, qtype: str | None
) -> str | None:
    """`qtype` as a key of QUANT_TYPES (None if not given); ExportError if neither option is
    given, the type is unknown, or `out` is a directory, in a missing one, or is `src`."""
    if keep_layers is None and qtype is None:
        raise ExportError("make-draft needs --keep-layers N, --type T, or both")
    key = None if qtype is None else qtype.lower()
    if key is not None and key not in QUANT_TYPES:
        raise ExportError(f"unknown quantization type {qtype!r}; valid: {', '.join(QUANT_TYPES)}")
    tags = ([f"l{keep_layers}"] if keep_layers is not None else []) + ([key] if key else [])
    check_output_file(out, example=output_name(src, "-".join(["draft", *tags])))
    if not out.parent.is_dir():
        raise ExportError(f"output directory {out.parent} does not exist")
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise ExportError(f"output {out} is the input; choose another path")
    return key


def _truncate_and_quantize(
    src: Path,
    out: Path,
    tmp: Path,
    keep_layers: int,
    key: str,
    *,
    nthread: int,
    show: bool,
    announce: Callable[[str], None] | None,
    stages: Stages,
) -> list[str]:
    """Write `tmp`: `src`'s first `keep_layers` layers (in a scratch file beside `out`,
    removed after) quantized to `key`; return truncate_layers' notes."""
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".layers", dir=out.parent)
    os.close(fd)
    try:
        notes = truncate_layers(
            src,
            Path(name),
            keep_layers,
            progress=show,
            announce=announce,
            on_step=stages.step,
        )
        if announce is not None:
            announce(f"quantizing the {keep_layers}-layer copy to {key}")
        stages.step(f"quantizing to {key}")
        quantize_gguf(Path(name), tmp, key, nthread=nthread, progress=show)
    finally:
        Path(name).unlink(missing_ok=True)
    return notes


def _prove_draft(
    draft: Path, src: Path, stages: Stages, announce: Callable[[str], None] | None
) -> PairReport:
    """Load and run `draft` in llama.cpp, then check_pair it against `src`; ExportError if
    either fails."""
    if announce is not None:
        announce(f"checking that the draft loads and runs, and that it can draft for {src}")
    stages.step("loading and running the draft")
    smoke_run(draft)
    stages.step("check-pair against the source")
    pair = check_pair(draft, src, announce=None, progress=False)
    if not pair.valid:
        raise ExportError(
            f"internal error: the draft does not match its source: {pair.mismatches[0]}"
        )
    return pair


def make_draft(
    src: Path,
    out: Path,
    *,
    keep_layers: int | None = None,
    qtype: str | None = None,
    nthread: int = 0,
    progress: bool | None = None,
    announce: Callable[[str], None] | None = None,
) -> DraftResult:
    """Write a draft for the target `src` to `out`: its first `keep_layers` layers, quantized to
    `qtype` (a key of QUANT_TYPES) if given; at least one of the two is required.

    The draft is then loaded and run in llama.cpp and checked with `check_pair` against `src`.
    Raises ExportError for bad arguments or input (see truncate_layers and quantize_gguf), an
    `out` that is an existing directory, and if the check fails; `out` is then left as it was
    (written only on success, atomically).
    `nthread` is for quantization (0: all cores); `progress` and `announce` as in
    quantize_gguf.
    """
    src, out = Path(src), Path(out)
    start = time.perf_counter()
    key = _check_draft_options(src, out, keep_layers, qtype)
    notes: list[str] = []
    show = show_progress(progress)
    n_steps = 2 * (keep_layers is not None) + (key is not None) + 2
    # Build and check in a temporary file; `out` appears (or is replaced) only on success.
    with atomic_output(out) as tmp, Stages("make-draft", n_steps, show) as stages:
        if keep_layers is None:
            assert key is not None
            if announce is not None:
                announce(f"quantizing {src} to {key}")
            stages.step(f"quantizing to {key}")
            quantize_gguf(src, tmp, key, nthread=nthread, progress=show)
        elif key is None:
            notes = truncate_layers(
                src, tmp, keep_layers, progress=show, announce=announce, on_step=stages.step
            )
        else:
            notes = _truncate_and_quantize(
                src,
                out,
                tmp,
                keep_layers,
                key,
                nthread=nthread,
                show=show,
                announce=announce,
                stages=stages,
            )
        pair = _prove_draft(tmp, src, stages, announce)
    pair.draft = dataclasses.replace(pair.draft, path=out)
    return DraftResult(
        source=src,
        out_path=out,
        architecture=pair.target.architecture,
        source_layers=pair.target.block_count or 0,
        kept_layers=keep_layers,
        qtype=key,
        source_bytes=src.stat().st_size,
        out_bytes=out.stat().st_size,
        seconds=time.perf_counter() - start,
        pair=pair,
        notes=notes,
    )
