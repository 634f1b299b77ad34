"""Test helper: a digits-cnn split directory, made once and kept between runs.

``model-export dnn split --model digits-cnn --splits all`` (seed 0, 128 calibration samples)
takes about 30 s on two shared cores, most of it training the CNN. Its output is deterministic
given the code that makes it, so it is cached under ``$COINFER_CACHE`` (default
``~/.cache/coinfer``) in ``test-dnn/digits-<key>``, the key a hash of the export code, the
feature codec and the versions of torch, onnxruntime and scikit-learn: any change to them
makes a fresh one. The directory is written beside and renamed into place, so an interrupted
run never leaves half of one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ROOT / "ondevice" / "common"
SOURCES = (*sorted((ROOT / "export" / "dnn").glob("*.py")),
           ROOT / "export" / "dnn" / "profile.schema.json",
           *(COMMON / f for f in ("feature_codec.py", "sample_photos.py", "split_math.py")))


def _key() -> str:
    h = hashlib.sha256()
    for path in SOURCES:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    for dist in ("torch", "onnxruntime", "scikit-learn", "onnx"):
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=-".encode())
    return h.hexdigest()[:16]


def digits_split_dir() -> Path:
    """The cached split directory (made on first use)."""
    base = Path(os.environ.get("COINFER_CACHE") or Path.home() / ".cache" / "coinfer")
    target = base / "test-dnn" / f"digits-{_key()}"
    if (target / "profile.json").is_file():
        return target
    from export.dnn import split_model

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="digits-", dir=target.parent))
    try:
        split_model("digits-cnn", tmp / "out", splits="all", calib=128, seed=0,
                    cache_dir=target.parent)
        try:
            os.rename(tmp / "out", target)
        except OSError:  # another run made it meanwhile
            if not (target / "profile.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
