"""Strict JSON (``ondevice/common/jsonout.py``): NaN and infinities become null, numpy values
Python ones, and nothing non-finite is ever written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ondevice.common import jsonout


def test_non_finite_values_are_null_and_numpy_is_plain() -> None:
    data = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float32(2.5),
            "d": np.array([1.0, np.nan]), 3: Path("/x"), "e": (np.int64(7), None)}
    text = jsonout.dumps(data, sort_keys=True)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "a": None, "b": [None, None, 1.5], "c": 2.5, "d": [1.0, None], "3": "/x",
        "e": [7, None]}


def test_nothing_non_finite_gets_through() -> None:
    class Weird:
        def __str__(self) -> str:
            return "weird"

    assert jsonout.dumps({"x": Weird()}) == '{"x": "weird"}'  # str() as the last resort
    with pytest.raises(ValueError):
        json.dumps(math.nan, allow_nan=False)  # what dumps relies on after mapping
