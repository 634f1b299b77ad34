"""Workstation-side tools: test fixtures, GGUF quantization (and later DNN splitting).

Public API: `write_fixtures` (tiny deterministic target/draft GGUF models), `quantize_gguf`
(llama.cpp quantization) with its `QuantizeResult` and `QUANT_TYPES`, `quantize_for_board`
with the per-board `PRESETS` (and the runtime sidecar), `check_pair` (is a draft valid for a
target?), `make_draft` (layer-truncated or requantized self-draft), `rank_drafts` (measured
acceptance and expected speedup), and `ExportError`, the one exception a caller needs to catch
for bad input. Importing this package pulls in numpy only: gguf, llama-cpp-python and torch
load when a function needs them.
"""

from export._check_pair import PairReport, check_pair
from export._errors import ExportError
from export._fixtures import write_fixtures
from export._make_draft import DraftResult, make_draft
from export._presets import PRESETS, PresetResult, quantize_for_board
from export._quantize import QUANT_TYPES, QuantizeResult, quantize_gguf
from export._rank_drafts import RankReport, rank_drafts

__all__ = [
    "PRESETS",
    "QUANT_TYPES",
    "DraftResult",
    "ExportError",
    "PairReport",
    "PresetResult",
    "QuantizeResult",
    "RankReport",
    "check_pair",
    "make_draft",
    "quantize_for_board",
    "quantize_gguf",
    "rank_drafts",
    "write_fixtures",
]
