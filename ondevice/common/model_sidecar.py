"""The runtime-settings sidecar of a GGUF model: ``Y.gguf.json`` next to ``Y.gguf``.

`model-export llm quantize --preset BOARD` writes it; `ondevice` reads it with `load_sidecar`
to pick ``n_threads``, ``n_gpu_layers`` and ``n_ctx`` for the board the file was made for.
The schema is defined here, once, and the writer imports it. Example (docs/export-llm.md)::

    {
      "schema": "coinfer.gguf-sidecar/1",
      "model": "draft-rpi5.gguf",
      "size_bytes": 241410624,
      "sha256": "5c1f...",
      "preset": "rpi5",
      "type": "q4_0",
      "runtime": {"n_threads": 4, "n_gpu_layers": 0, "n_ctx": 4096},
      "sources": {"type": "...", "n_threads": "...", "n_gpu_layers": "...", "n_ctx": "..."}
    }

Validation is cheap by default. `load_sidecar` always checks the schema and that the model
file has the recorded size (one ``stat``): that catches the realistic mistakes, a sidecar
left next to another quantization of the same name or a truncated copy. It hashes the file only
when asked (``verify_sha256=True``), because hashing on every start costs real time on a
device: about 2 s for a 250 MB Gemma 3 270M and 30-40 s for a 4 GB model on a Raspberry Pi 4,
whose SoC has no SHA extensions. Size and mtime were considered and mtime rejected: copying a
model to the device (``scp``, ``cp`` without ``-p``) changes its mtime, so it would flag good
files. A verified hash is memoized per process, keyed by (device, inode, size, mtime_ns), so a
long-running process that reopens the model does not hash it twice.

Pure apart from reading the two files; no llama.cpp import.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

SCHEMA = "coinfer.gguf-sidecar/1"
SUFFIX = ".json"  # the sidecar of X.gguf is X.gguf.json
RUNTIME_KEYS = ("n_threads", "n_gpu_layers", "n_ctx")
_HASH_CHUNK = 1 << 20  # bytes read per update

# (st_dev, st_ino, st_size, st_mtime_ns) -> sha256 hex, for files hashed in this process.
_verified: dict[tuple[int, int, int, int], str] = {}


class SidecarError(ValueError):
    """A sidecar exists but is unreadable, malformed, or describes another file. The message
    is one line naming the sidecar and what is wrong."""


def sidecar_path(gguf_path: str | os.PathLike[str]) -> Path:
    """The sidecar's path for a model: ``X.gguf`` -> ``X.gguf.json``."""
    p = Path(gguf_path)
    return p.with_name(p.name + SUFFIX)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes as 64 lowercase hex digits (streamed, constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_runtime(where: Path, runtime: object) -> dict[str, int | None]:
    if not isinstance(runtime, dict):
        raise SidecarError(f"sidecar {where}: 'runtime' must be an object")
    out: dict[str, int | None] = {}
    for key in RUNTIME_KEYS:
        if key not in runtime:
            raise SidecarError(f"sidecar {where}: runtime.{key} is missing")
        value = runtime[key]
        # n_threads may be null ("all cores"); n_gpu_layers -1 means "every layer".
        ok = isinstance(value, int) and not isinstance(value, bool)
        if key == "n_threads":
            ok = value is None or (ok and value >= 1)
        elif key == "n_gpu_layers":
            ok = ok and value >= -1
        else:
            ok = ok and value >= 1
        if not ok:
            raise SidecarError(f"sidecar {where}: runtime.{key} has an invalid value {value!r}")
        out[key] = value
    return out


def load_sidecar(
    gguf_path: str | os.PathLike[str], *, verify_sha256: bool = False
) -> dict[str, Any] | None:
    """The parsed sidecar of ``gguf_path``, or None when there is no ``gguf_path.json``.

    The returned dict has at least ``schema``, ``model``, ``size_bytes``, ``sha256``,
    ``preset``, ``type``, ``runtime`` (``n_threads``: int >= 1 or None for all cores;
    ``n_gpu_layers``: int, -1 for all layers; ``n_ctx``: int >= 1) and ``sources`` (one
    human-readable reason per choice). Raises SidecarError if the sidecar cannot be read or
    parsed, has another schema, lacks a field, does not match the model file's size, or (with
    ``verify_sha256``) its hash; FileNotFoundError if the model itself is missing.
    """
    model = Path(gguf_path)
    where = sidecar_path(model)
    st = model.stat()  # FileNotFoundError for a missing model, before looking for a sidecar
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise SidecarError(f"cannot read sidecar {where}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SidecarError(f"sidecar {where} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise SidecarError(f"sidecar {where} is not a JSON object")
    if data.get("schema") != SCHEMA:
        raise SidecarError(
            f"sidecar {where} has schema {data.get('schema')!r}, expected {SCHEMA!r}"
        )
    for key in ("model", "size_bytes", "sha256", "preset", "type", "runtime", "sources"):
        if key not in data:
            raise SidecarError(f"sidecar {where} lacks the field {key!r}")
    size, digest = data["size_bytes"], data["sha256"]
    if not isinstance(size, int) or isinstance(size, bool):
        raise SidecarError(f"sidecar {where}: size_bytes must be an integer")
    if not (isinstance(digest, str) and len(digest) == 64):
        raise SidecarError(f"sidecar {where}: sha256 must be 64 hex digits")
    data["runtime"] = _check_runtime(where, data["runtime"])
    if st.st_size != size:
        raise SidecarError(
            f"sidecar {where} describes a file of {size} bytes, {model} has {st.st_size}: "
            "it belongs to another model; re-export or delete it"
        )
    if verify_sha256:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        actual = _verified.get(key)
        if actual is None:
            actual = file_sha256(model)
            _verified[key] = actual
        if actual != digest.lower():
            raise SidecarError(
                f"sidecar {where} records sha256 {digest[:12]}..., {model} has {actual[:12]}...: "
                "the model changed after export; re-export or delete the sidecar"
            )
    return data
