"""Atomic file output: write to a temporary file next to the target, rename on success."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _default_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path in `path`'s directory; on normal exit it becomes `path`.

    The rename is atomic on one filesystem, so readers see the old file or the complete new
    one, never a partial one. If the body raises, the temporary file is removed and `path` is
    left untouched. The new file gets the usual umask-derived mode (mkstemp's is 0600).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _default_mode())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
