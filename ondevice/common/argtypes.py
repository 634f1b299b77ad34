"""argparse value types shared by the ``ondevice``, ``edge-server`` and ``model-export`` commands.

Each takes the flag's text and returns the value, or raises ``argparse.ArgumentTypeError`` with
a message naming the value and the allowed range; argparse prefixes the flag, prints the usage
line and exits with status 2 (a usage error), so no bad value reaches the code as a traceback.
"""

from __future__ import annotations

import argparse
import math
import re

from ondevice.common.seed import seed_problem

_HEX64 = re.compile(r"[0-9a-f]{64}")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _int_at_least(text: str, minimum: int) -> int:
    value = _int(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0)


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1)


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: the system picks a free one)."""
    value = _int_at_least(text, 0)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 0..65535, got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fingerprint(text: str) -> str:
    """A certificate's SHA-256 as 64 hex digits, colons allowed (``AB:CD:...``); returned as
    64 lower-case hex digits."""
    value = text.replace(":", "").strip().lower()
    if not _HEX64.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"expected the certificate's SHA-256: 64 hex digits, colons allowed "
            f"(as edge-server prints it), got {text!r}"
        )
    return value


def non_empty_text(text: str) -> str:
    """Text with at least one non-space character."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def seed(text: str) -> int:
    """A sampling seed, 0..``seed.MAX_SEED`` (the range a user may pass on every path)."""
    value = _int(text)
    problem = seed_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def edge_url(text: str) -> str:
    """An edge's URL: ``http://HOST[:PORT][/...]`` or ``https://...`` with a host, nothing
    else (no other scheme, no bare ``HOST:PORT``); returned without a trailing slash."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text.strip())
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a URL ({exc}): {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = f" (did you mean http://{text}?)" if "://" not in text else ""
        raise argparse.ArgumentTypeError(
            f"give http://HOST:PORT or https://HOST:PORT, got {text!r}{hint}")
    del port
    return text.strip().rstrip("/")


def edge_urls(text: str) -> tuple[str, ...]:
    """One edge URL or several, comma-separated (``--edge URL1,URL2``), each as ``edge_url``
    wants it; no empty piece, none twice."""
    pieces = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in pieces):
        raise argparse.ArgumentTypeError(
            f"give one edge URL or several separated by commas, got {text!r}")
    urls = tuple(edge_url(p) for p in pieces)
    twice = sorted({u for u in urls if urls.count(u) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"edge {twice[0]} is given twice in {text!r}")
    return urls


_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def site(text: str) -> str:
    """A site label (``--site``): 1-63 letters, digits, ``.``, ``_``, ``-``, starting with a
    letter or digit (it travels in a zeroconf TXT record)."""
    if not _SITE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"not a site label: {text!r} (1-63 letters, digits, '.', '_', '-')")
    return text

