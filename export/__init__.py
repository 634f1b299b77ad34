"""Workstation-side tools: test fixtures, GGUF quantization (and later DNN splitting).

Public API: `write_fixtures` (tiny deterministic target/draft GGUF models), `quantize_gguf`
(llama.cpp quantization) with its `QuantizeResult` and `QUANT_TYPES`, and `ExportError`, the
one exception a caller needs to catch for bad input. Importing this package pulls in numpy
only: gguf, llama-cpp-python and torch load when a function needs them.
"""

from export._errors import ExportError
from export._fixtures import write_fixtures
from export._quantize import QUANT_TYPES, QuantizeResult, quantize_gguf

__all__ = ["QUANT_TYPES", "ExportError", "QuantizeResult", "quantize_gguf", "write_fixtures"]
