"""Checks of output paths shared by the `model-export` commands that write one file."""

from __future__ import annotations

from pathlib import Path

from export._errors import ExportError


def check_output_file(path: Path, *, flag: str = "--out", example: str | None = None) -> None:
    """Raise ExportError when `path`, given with `flag`, is an existing directory.

    Commands that write one file take its full path; a directory is refused up front (before
    any work), with one line naming `flag` and, when `example` (a file name) is given, the path
    the user probably meant: ``path / example``. Anything else passes, including a path whose
    directory is missing: the writing function reports that itself.
    """
    path = Path(path)
    if path.is_dir():
        hint = f", e.g. {flag} {path / example}" if example else ""
        raise ExportError(
            f"{flag} {path} is a directory; {flag} takes the output file's path{hint}"
        )


def output_name(in_path: Path, tag: str, suffix: str | None = None) -> str:
    """``<input stem>-<tag><suffix>`` (suffix default: the input's): the file name suggested
    when an output path is a directory. Pure."""
    in_path = Path(in_path)
    return f"{in_path.stem}-{tag}{in_path.suffix if suffix is None else suffix}"
