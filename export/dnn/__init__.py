"""Split DNNs for ENACHI: INT8 ONNX heads for the device, fp32 tails for the edge, profile.json.

Public API: `split_model` (``model-export dnn split``) with its `SplitResult`,
`quantize_onnx_file` (``model-export dnn quantize``), `load_or_train_digits`
(``model-export dnn train-digits``), `load_profile`/`validate_profile`/`profile_schema`, and
`KNOWN_MODELS`. Importing this package loads numpy only; torch, onnx and onnxruntime load when
a function needs them. See docs/export-dnn.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

KNOWN_MODELS = ("digits-cnn", "efficientnet-lite0")

if TYPE_CHECKING:
    from export.dnn._digits import load_or_train_digits
    from export.dnn._profile import load_profile, profile_schema, validate_profile
    from export.dnn._quant import quantize_onnx_file
    from export.dnn._split import SplitResult, split_model

_LAZY = {
    "split_model": "export.dnn._split",
    "SplitResult": "export.dnn._split",
    "quantize_onnx_file": "export.dnn._quant",
    "load_or_train_digits": "export.dnn._digits",
    "load_profile": "export.dnn._profile",
    "validate_profile": "export.dnn._profile",
    "profile_schema": "export.dnn._profile",
}


def __getattr__(name: str) -> Any:
    """Load the heavy modules on first use of a public name (PEP 562)."""
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export.dnn' has no attribute {name!r}")


__all__ = [
    "KNOWN_MODELS",
    "SplitResult",
    "load_or_train_digits",
    "load_profile",
    "profile_schema",
    "quantize_onnx_file",
    "split_model",
    "validate_profile",
]
