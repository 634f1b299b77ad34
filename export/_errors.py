"""Exceptions of the export package."""

from __future__ import annotations


class ExportError(Exception):
    """A user-facing failure (bad input, missing file, unknown option); the message is one line
    that says what is wrong and, where there is one, what to do. The CLI exits with status 2."""
