"""The installed coinfer version, for every command's ``--version``."""

from __future__ import annotations


def coinfer_version() -> str:
    """The installed distribution's version (``importlib.metadata``), or "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("coinfer")
    except PackageNotFoundError:
        return "unknown"
