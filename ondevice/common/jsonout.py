"""Strict JSON for everything coinfer writes: stdout, HTTP bodies, files.

``json.dumps`` writes ``NaN`` and ``Infinity`` for non-finite floats by default, which is not
JSON (RFC 8259): JavaScript's ``JSON.parse`` and every strict parser reject it. ``dumps`` maps
them to ``null`` first (a missing figure, which is what they mean here), turns numpy scalars
and arrays into Python numbers and lists and paths into strings, and then serializes with
``allow_nan=False``, so a value that slipped through raises instead of writing bad JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import PurePath
from typing import Any


def finite(x: Any) -> Any:
    """``x`` with NaN and infinities as None, numpy scalars and arrays as Python numbers and
    lists, tuples as lists, paths as strings; dict keys as strings. Pure."""
    if isinstance(x, dict):
        return {str(k): finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    if isinstance(x, PurePath):
        return str(x)
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy arrays and scalars
        return finite(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps`` of ``finite(obj)``, strict (``allow_nan=False``); ``kw`` as json's
    (``indent``, ``sort_keys``, ``separators``)."""
    kw.setdefault("default", str)
    return json.dumps(finite(obj), allow_nan=False, **kw)


__all__ = ["dumps", "finite"]
