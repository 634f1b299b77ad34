"""``model-export dnn ship-digits``: the digits model and data that ship inside coinfer.

Writes ``OUT/optdigits.npz`` (`_data.write_digits_data`: load_digits as uint8) and
``OUT/digits-cnn/`` (`split_model` of digits-cnn with SEED, SPLITS, one thread), the files
`ondevice.dnn.shipped` reads, so that a ``coinfer[dnn]`` install classifies digits without
scikit-learn or torch. ``make digits-data`` runs it into ``ondevice/dnn/digits``; the README.md
there (source and licence of the data) is kept as it is.

Reproducible: the data file is byte-identical for the same load_digits; the weights are
trained seeded on one thread (`_digits.train_digits`), so the same versions of torch, onnx and
onnxruntime give the same model; only the profile's latencies and machine fields are this
machine's.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from export._errors import ExportError
from export.dnn._data import write_digits_data
from export.dnn._split import Announce, SplitResult, split_model

SEED = 0  # training and calibration seed of the shipped split
SPLITS = "auto"  # the stage outputs worth splitting: the heads a device would use
DATA_NAME = "optdigits.npz"
MODEL_NAME = "digits-cnn"


@dataclass(frozen=True)
class ShipResult:
    """What `ship_digits` wrote: the data file and the split."""

    data: Path
    split: SplitResult

    def summary(self) -> str:
        """A few lines: the split's table, the files and their sizes."""
        files = [self.data, *sorted(self.split.out_dir.iterdir())]
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.0f} KiB" for p in files)
        total = sum(p.stat().st_size for p in files) / 1024
        return f"{self.split.table()}\nwrote {sizes} ({total:.0f} KiB in all)"


def ship_digits(out_dir: Path, *, cache_dir: Path | None = None,
                announce: Announce | None = None) -> ShipResult:
    """Write the shipped digits data and split into `out_dir` (created). The split directory
    is made beside and renamed into place, so heads of splits no longer chosen do not stay
    behind and a failure leaves the old one."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {out_dir}: {e}") from None
    data = write_digits_data(out_dir / DATA_NAME)
    final = out_dir / MODEL_NAME
    fresh = out_dir / f".{MODEL_NAME}.new"
    shutil.rmtree(fresh, ignore_errors=True)
    try:
        split = split_model(MODEL_NAME, fresh, splits=SPLITS, seed=SEED, threads=1,
                            cache_dir=cache_dir, announce=announce)
        shutil.rmtree(final, ignore_errors=True)
        fresh.rename(final)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    split = SplitResult(final, final / split.profile_path.name, split.profile, split.seconds)
    return ShipResult(data, split)
