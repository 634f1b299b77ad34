"""Shared by the dnn test modules: one digits-cnn cache and one digits split per session.

The cache lives under pytest's session base temp, so every module that asks gets the same
trained weights (trained once, seed 0, about 10 s on one thread) and the same split output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from export.dnn import SplitResult, split_model

_SPLITS: dict[Path, SplitResult] = {}


def digits_cache(factory: pytest.TempPathFactory) -> Path:
    """The session's digits-cnn weight cache directory."""
    path = factory.getbasetemp() / "coinfer-dnn-cache"
    path.mkdir(exist_ok=True)
    return path


def digits_split(factory: pytest.TempPathFactory) -> SplitResult:
    """`model-export dnn split --model digits-cnn --splits all` (calib 128), run once."""
    out = factory.getbasetemp() / "coinfer-dnn-digits"
    if out not in _SPLITS:
        _SPLITS[out] = split_model(
            "digits-cnn",
            out,
            splits="all",
            calib=128,
            seed=0,
            cache_dir=digits_cache(factory),
        )
    return _SPLITS[out]
