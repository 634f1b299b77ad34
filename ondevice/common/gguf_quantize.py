"""Quantize (or requantize) a GGUF LLM with llama.cpp's own quantizer.

Shared: `model-export llm quantize` wraps it (progress bar, its own error type) and the device's
demo makes its draft with it, so it lives here and imports only llama-cpp-python.
`quantize_gguf` checks its inputs itself (so a bad path gives one clear line instead of a
llama.cpp log), runs `llama_cpp.llama_model_quantize` into a temporary file next to the output
and renames it into place only on success, so a failed run leaves no partial file.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ondevice.common import gguf_chat
from ondevice.common.files import atomic_output
from ondevice.common.gguf_file import GgufFileError
from ondevice.common.gguf_file import check_gguf_file as _check

# Type name -> name of the llama_cpp.LLAMA_FTYPE_MOSTLY_* constant. Only types that need no
# importance matrix (the IQ* and Q2_K_S types do) are offered.
QUANT_TYPES: dict[str, str] = {
    "f16": "F16",
    "bf16": "BF16",
    "q8_0": "Q8_0",
    "q6_k": "Q6_K",
    "q5_k_m": "Q5_K_M",
    "q5_k_s": "Q5_K_S",
    "q5_1": "Q5_1",
    "q5_0": "Q5_0",
    "q4_k_m": "Q4_K_M",
    "q4_k_s": "Q4_K_S",
    "q4_1": "Q4_1",
    "q4_0": "Q4_0",
    "q3_k_l": "Q3_K_L",
    "q3_k_m": "Q3_K_M",
    "q3_k_s": "Q3_K_S",
    "q2_k": "Q2_K",
}

# ggml.h: enum ggml_log_level {NONE, DEBUG, INFO, WARN, ERROR, CONT} (llama-cpp-python's
# _logger.py still documents an older order).
_GGML_LOG_LEVEL_ERROR = 4

# llama.cpp logs one line per tensor while quantizing: "[  12/ 236]  blk.1.attn_q.weight - ...".
_TENSOR_LINE = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]")
# ...and at the end "WARNING: 13 of 21 tensor(s) required fallback quantization".
_FALLBACK_LINE = re.compile(rb"(\d+) of \d+ tensor\(s\) required fallback")


class QuantizeError(ValueError):
    """A quantization that cannot run or failed; the message is one line naming the cause."""


@dataclass(frozen=True)
class QuantizeResult:
    """What a quantization did: paths, the type, sizes in bytes and wall time in seconds."""

    in_path: Path
    out_path: Path
    qtype: str
    in_bytes: int
    out_bytes: int
    seconds: float
    n_tensors: int
    n_fallback: int  # tensors llama.cpp stored in another type (row size vs block size)
    chat_template: str = "none"  # CHAT_TEMPLATE_NOTES key: what the output's template is

    def summary(self) -> str:
        """One line for humans: sizes before and after, ratio, time, the chat template."""
        mib = 1024 * 1024
        return (
            f"{self.in_path.name} ({self.in_bytes / mib:.2f} MiB) -> {self.out_path} "
            f"({self.out_bytes / mib:.2f} MiB, {self.qtype}, "
            f"{self.out_bytes / self.in_bytes:.1%} of input) in {self.seconds:.1f} s; "
            f"{self.n_tensors} tensors, {self.n_fallback} in a fallback type; "
            f"chat template: {CHAT_TEMPLATE_NOTES[self.chat_template]}"
        )


# QuantizeResult.chat_template -> what the summary says about it
CHAT_TEMPLATE_NOTES = {
    "kept": "the input's",
    "given": "the one given",
    **{arch: f"{arch}'s (built in; the input had none)" for arch in gguf_chat.BUILTIN_TEMPLATES},
    "none": "none (chat requests will be refused: give one with --chat-template FILE)",
}


def check_gguf_file(path: Path) -> None:
    """Raise QuantizeError unless `path` is a readable regular file starting with the GGUF magic."""
    try:
        _check(path)
    except (FileNotFoundError, GgufFileError) as e:
        raise QuantizeError(f"input {e}") from e


def _import_llama_cpp() -> ModuleType:
    try:
        import llama_cpp
    except ImportError as e:
        raise QuantizeError("quantizing needs llama-cpp-python: pip install 'coinfer[llm]'") from e
    return llama_cpp


class _LlamaLog:
    """Temporarily route llama.cpp's log through a callback that counts tensors for progress,
    keeps error lines for the exception message, and echoes everything when `verbose`.

    The callback is global in llama.cpp; `__exit__` restores coinfer's routing into logging.
    """

    def __init__(
        self, llama_cpp: ModuleType, on_tensor: Callable[[int, int], None], verbose: bool
    ) -> None:
        self._llama_cpp = llama_cpp
        self._on_tensor = on_tensor
        self._verbose = verbose
        self.errors: list[str] = []
        self.n_tensors = 0
        self.n_fallback = 0

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if self._verbose:
                sys.stderr.write(text.decode("utf-8", "replace"))
            if level == _GGML_LOG_LEVEL_ERROR:
                self.errors.append(text.decode("utf-8", "replace").strip())
            m = _TENSOR_LINE.match(text.lstrip())
            if m:
                self.n_tensors = int(m.group(2))
                self._on_tensor(int(m.group(1)), self.n_tensors)
            m = _FALLBACK_LINE.search(text)
            if m:
                self.n_fallback = int(m.group(1))

        self._callback = callback  # keep a reference: ctypes does not

    def __enter__(self) -> _LlamaLog:
        self._llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc: object) -> None:
        from ondevice.common.llama_runtime import route_llama_log

        route_llama_log()


def _check_job(in_path: Path, out_path: Path, qtype: str) -> str:
    """`qtype`'s key in QUANT_TYPES; QuantizeError for an unknown type, an input that is not a
    readable GGUF file, a missing output directory, or an output that is the input."""
    key = qtype.lower()
    if key not in QUANT_TYPES:
        raise QuantizeError(f"unknown quantization type {qtype!r}; valid: {', '.join(QUANT_TYPES)}")
    check_gguf_file(in_path)
    out_dir = out_path.parent
    if not out_dir.is_dir():
        raise QuantizeError(f"output directory {out_dir} does not exist")
    if out_path.exists() and out_path.resolve() == in_path.resolve():
        raise QuantizeError(f"output {out_path} is the input; choose another path")
    return key


def _output_chat_template(in_path: Path, chat_template: str | None) -> tuple[str | None, str]:
    """The chat template to write into the output (None: leave what llama.cpp copies) and its
    CHAT_TEMPLATE_NOTES key, chosen by `gguf_chat.choose_chat_template` from `chat_template`
    and the input's header; QuantizeError if the header cannot be read."""
    try:
        head = gguf_chat.read_header(in_path)
    except GgufFileError as e:
        raise QuantizeError(f"input {in_path}: {e}") from e
    existing = head.strings.get(gguf_chat.CHAT_TEMPLATE_KEY) or None
    arch = head.strings.get(gguf_chat.ARCHITECTURE_KEY)
    template = gguf_chat.choose_chat_template(existing, arch, chat_template)
    if chat_template is not None:
        return template, "given"
    if template is not None:
        return template, arch or "none"
    return template, "kept" if existing else "none"


def quantize_gguf(
    in_path: Path,
    out_path: Path,
    qtype: str,
    *,
    nthread: int = 0,
    verbose: bool = False,
    on_tensor: Callable[[int, int], None] | None = None,
    announce: Callable[[str], None] | None = None,
    chat_template: str | None = None,
) -> QuantizeResult:
    """Quantize the GGUF model `in_path` to `qtype` (a key of QUANT_TYPES) into `out_path`.

    Already-quantized inputs are requantized (allow_requantize). `nthread` <= 0 lets llama.cpp
    use all cores. `verbose` echoes llama.cpp's log to stderr; `on_tensor(i, n)` is called as
    llama.cpp reaches tensor i of n (for a progress bar); `announce`, if given, gets
    one line describing the job once the inputs have passed their checks. Tensors whose rows
    are not a multiple of the type's block size are stored in a fallback type llama.cpp picks.
    The output's ``tokenizer.chat_template`` is `chat_template` when given, else the input's,
    else the built-in template of the input's architecture (`gguf_chat.choose_chat_template`:
    Gemma 3's for a Gemma 3 GGUF without one), else none.
    Raises QuantizeError for an unknown type, an input that is missing, unreadable or not GGUF,
    an output directory that does not exist, an output equal to the input, or a llama.cpp
    failure; `out_path` is then left untouched.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    key = _check_job(in_path, out_path, qtype)
    template, template_note = _output_chat_template(in_path, chat_template)
    llama_cpp = _import_llama_cpp()
    if announce is not None:
        size_mib = in_path.stat().st_size / (1024 * 1024)
        announce(f"quantizing {in_path} ({size_mib:.2f} MiB) to {key} -> {out_path}")

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{QUANT_TYPES[key]}")
    params.nthread = max(nthread, 0)
    params.allow_requantize = True

    start = time.perf_counter()
    with atomic_output(out_path) as tmp, _LlamaLog(
        llama_cpp, on_tensor or (lambda i, n: None), verbose
    ) as log:
        rc = llama_cpp.llama_model_quantize(
            os.fsencode(in_path), os.fsencode(tmp), ctypes.byref(params)
        )
        if rc != 0:
            detail = "; ".join(log.errors[-3:]) or "see --verbose for llama.cpp's log"
            raise QuantizeError(f"llama.cpp failed to quantize {in_path} (status {rc}): {detail}")
        if template is not None:
            _set_chat_template(tmp, template)
    return QuantizeResult(
        in_path=in_path,
        out_path=out_path,
        qtype=key,
        in_bytes=in_path.stat().st_size,
        out_bytes=out_path.stat().st_size,
        seconds=time.perf_counter() - start,
        n_tensors=log.n_tensors,
        n_fallback=log.n_fallback,
        chat_template=template_note,
    )


def _set_chat_template(path: Path, template: str) -> None:
    """Give the GGUF at `path` the chat template `template` (through a copy beside it)."""
    with atomic_output(path) as tmp:
        gguf_chat.copy_with_chat_template(path, tmp, template)
