"""argparse value types shared by the `model-export` commands."""

from __future__ import annotations

import argparse


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0, or an argparse error naming the value."""
    return _int_at_least(text, 0)


def positive_int(text: str) -> int:
    """An integer >= 1, or an argparse error naming the value."""
    return _int_at_least(text, 1)
