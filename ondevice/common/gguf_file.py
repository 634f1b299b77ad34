"""The one check that a path is a GGUF model file, shared by the runtime and `model-export`.

No llama.cpp import: `model-export llm check-pair` reads files with the `gguf` package only.
"""

from __future__ import annotations

from pathlib import Path

GGUF_MAGIC = b"GGUF"


class GgufFileError(ValueError):
    """The path exists but is not a readable GGUF file."""


def check_gguf_file(path: Path) -> None:
    """Raise FileNotFoundError or GgufFileError, with a message naming the path, unless ``path``
    is a readable regular file that starts with the GGUF magic."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    if not path.is_file():
        raise GgufFileError(f"model path {path} is not a regular file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise GgufFileError(f"cannot read model {path}: {exc.strerror or exc}") from exc
    if magic != GGUF_MAGIC:
        raise GgufFileError(
            f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})"
        )
