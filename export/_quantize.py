"""``model-export llm quantize``: llama.cpp's quantizer with a progress bar and export's errors.

The quantization itself is `ondevice.common.gguf_quantize` (the device's demo runs it too);
this layer adds the per-tensor progress bar on a terminal and maps its failures to ExportError.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from export._errors import ExportError
from export._paths import check_output_file, output_name
from export._progress import show_progress
from ondevice.common import gguf_quantize
from ondevice.common.gguf_quantize import QUANT_TYPES, QuantizeError, QuantizeResult

__all__ = ["QUANT_TYPES", "QuantizeResult", "check_gguf_file", "quantize_gguf"]


def check_gguf_file(path: Path) -> None:
    """Raise ExportError unless `path` is a readable regular file starting with the GGUF magic."""
    try:
        gguf_quantize.check_gguf_file(path)
    except QuantizeError as e:
        raise ExportError(str(e)) from e


def quantize_gguf(
    in_path: Path,
    out_path: Path,
    qtype: str,
    *,
    nthread: int = 0,
    verbose: bool = False,
    progress: bool | None = None,
    announce: Callable[[str], None] | None = None,
    chat_template: str | None = None,
) -> QuantizeResult:
    """`ondevice.common.gguf_quantize.quantize_gguf` (which also gives the output a chat
    template: `chat_template`, else the input's, else its architecture's built-in one) with a
    per-tensor progress bar on stderr (`progress` None: only when stderr is a terminal);
    raises ExportError where it raises QuantizeError, leaving `out_path` untouched, and
    ExportError up front when `out_path` is an existing directory."""
    from tqdm import tqdm

    key = qtype.lower()
    check_output_file(Path(out_path), example=output_name(Path(in_path), key))
    show = show_progress(progress)
    bars: list[tqdm] = []

    def on_tensor(i: int, n: int) -> None:
        if show and not bars:
            bars.append(
                tqdm(
                    desc=f"quantize {key}",
                    total=n,
                    unit="tensor",
                    file=sys.stderr,
                    leave=None,  # kept on its own, cleared under make-draft's step bar
                )
            )
        for bar in bars:
            bar.update(i - bar.n)

    try:
        return gguf_quantize.quantize_gguf(
            in_path, out_path, qtype, nthread=nthread, verbose=verbose, on_tensor=on_tensor,
            announce=announce, chat_template=chat_template,
        )
    except QuantizeError as e:
        raise ExportError(str(e)) from e
    finally:
        for bar in bars:
            bar.close()
