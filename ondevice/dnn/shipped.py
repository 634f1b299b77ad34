"""The digits model and data that ship inside coinfer, so that ``coinfer[dnn]`` alone classifies.

``ondevice/dnn/digits/`` (its README.md names the source and the licence):

- ``optdigits.npz``: the 1,797 8x8 handwritten digits of the UCI *Optical Recognition of
  Handwritten Digits* test set, the rows scikit-learn's ``load_digits`` returns, in its order:
  ``images`` uint8 ``[1797, 8, 8]`` (ink counts 0..16) and ``labels`` uint8 ``[1797]``.
- ``digits-cnn/``: ``model-export dnn split --model digits-cnn`` (seed 0, auto splits):
  ``profile.json``, ``model.onnx``, ``head_S.onnx`` (INT8) and ``tail_S.onnx`` per split S.
  Its held-out rows (``profile.json``'s evaluation indices) index ``optdigits.npz``.

Both are made by ``model-export dnn ship-digits --out ondevice/dnn/digits`` (``make
digits-data``, which needs ``coinfer[export]``). Importing this module loads nothing heavy:
``ondevice classify`` names the directory in its ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DIGITS_DIR = Path(__file__).resolve().parent / "digits"
DIGITS_DATA = DIGITS_DIR / "optdigits.npz"
DIGITS_DNN = DIGITS_DIR / "digits-cnn"
N_DIGITS = 1797  # rows of the UCI test set (optdigits.tes), as load_digits has them


def load_optdigits() -> tuple[Any, Any]:
    """(images ``[1797, 8, 8]`` uint8 in 0..16, labels ``[1797]`` int64) from the shipped file.
    Raises OSError naming the file when it is missing or unreadable (a broken install)."""
    import numpy as np

    try:
        with np.load(DIGITS_DATA, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise OSError(f"the shipped digits {DIGITS_DATA} are unreadable ({exc}): reinstall "
                      "coinfer") from None
    if images.shape != (N_DIGITS, 8, 8) or labels.shape != (N_DIGITS,):
        raise OSError(f"the shipped digits {DIGITS_DATA} have shapes {images.shape}, "
                      f"{labels.shape}: reinstall coinfer")
    return images.astype(np.uint8), labels.astype(np.int64)


__all__ = ["DIGITS_DATA", "DIGITS_DIR", "DIGITS_DNN", "N_DIGITS", "load_optdigits"]
