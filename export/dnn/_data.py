"""Real data for calibration and evaluation, shipped with installed packages (no downloads).

- digits: `sklearn.datasets.load_digits` (1,797 8x8 grey images, values 0..16, real labels),
  split once, stratified and seeded, into a training part and a held-out part.
- natural images (`ondevice.common.sample_photos`, which the device also runs): the colour
  photographs that scikit-learn (`load_sample_images`: china, flower) and scikit-image
  (`skimage.data`: astronaut, coffee, chelsea, rocket, ...) ship, cut into random crops with
  random horizontal flips.
- a user's own arrays: an ``.npz``/``.npy`` file or a directory of them.

No torch here: this module is plain numpy, scikit-learn, scikit-image and Pillow, so anything
that must reproduce the profile's data (the device's ``--dataset``) can import it alone.
Raw pixels stay in their stored range (digits 0..16, photos 0..255); `normalize` maps them to
the model's input with the profile's ``(raw - mean) / std`` per channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export._errors import ExportError
from ondevice.common import sample_photos
from ondevice.common.files import atomic_output
from ondevice.common.sample_photos import random_crops as random_crops

DIGITS_TEST_FRACTION = 0.25  # held-out share of load_digits, stratified by label
@dataclass(frozen=True)
class DigitsSplit:
    """load_digits split into train and held-out parts; images ``[N, 1, 8, 8]`` float32 raw
    0..16, labels ``[N]`` int64, and the held-out rows' indices into load_digits."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_indices: np.ndarray
    seed: int


def load_digits_split(seed: int) -> DigitsSplit:
    """The seeded stratified split of load_digits (DIGITS_TEST_FRACTION held out)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None, :, :]  # [1797, 1, 8, 8], 0..16
    labels = digits.target.astype(np.int64)  # [1797]
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=DIGITS_TEST_FRACTION, random_state=seed, stratify=labels
    )
    test_idx = np.sort(test_idx)
    train_idx = np.sort(train_idx)
    return DigitsSplit(
        images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], test_idx, seed
    )


def write_digits_data(path: Path) -> Path:
    """Write load_digits as the ``.npz`` that ships with coinfer (`ondevice.dnn.shipped`):
    ``images`` uint8 ``[1797, 8, 8]`` (0..16) and ``labels`` uint8 ``[1797]``, in load_digits'
    order. The bytes depend on the data alone: the zip entries carry a fixed date (numpy's
    own savez stamps the current time), so a rerun reproduces the committed file."""
    import io
    import zipfile

    from sklearn.datasets import load_digits

    digits = load_digits()
    arrays = {"images": digits.images.astype(np.uint8),  # [1797, 8, 8], ink counts 0..16
              "labels": digits.target.astype(np.uint8)}  # [1797]
    if not np.array_equal(arrays["images"], digits.images):
        raise ExportError("load_digits' images are not integers 0..16: not the UCI digits")
    try:
        with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, array in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(array),
                                          allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue(), compresslevel=9)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e}") from None
    return path


def natural_images() -> list[tuple[str, np.ndarray]]:
    """`ondevice.common.sample_photos.natural_images`, its failure as an ExportError."""
    try:
        return sample_photos.natural_images()
    except sample_photos.NoPhotosError as e:
        raise ExportError(str(e)) from e


def normalize(raw: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Model input float32 ``[N, C, H, W]`` from raw pixels ``[N, H, W, C]`` (photos) or
    ``[N, C, H, W]`` (when C == len(mean) already sits at axis 1): ``(raw - mean) / std`` per
    channel, mean and std in raw units."""
    c = len(mean)
    x = raw.astype(np.float32)
    if x.ndim == 4 and x.shape[1] != c and x.shape[-1] == c:
        x = x.transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    if x.ndim != 4 or x.shape[1] != c:
        raise ExportError(f"cannot normalize raw data of shape {raw.shape} with {c} channel(s)")
    m = np.asarray(mean, dtype=np.float32)[None, :, None, None]  # [1, C, 1, 1]
    s = np.asarray(std, dtype=np.float32)[None, :, None, None]  # [1, C, 1, 1]
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


def load_arrays(path: Path, sample_shape: Sequence[int]) -> np.ndarray:
    """User data as float32 ``[N, *sample_shape]`` from an ``.npz`` (every array), an ``.npy``,
    or a directory of them (sorted by name). Each array is one sample (`sample_shape`) or a
    batch of them (``[k, *sample_shape]``); values are used as they are (already normalized)."""
    if not path.exists():
        raise ExportError(f"calibration data not found: {path}")
    files = (
        sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
        if path.is_dir()
        else [path]
    )
    if not files:
        raise ExportError(f"no .npy or .npz files in {path}")
    shape = tuple(int(d) for d in sample_shape)
    batches = []
    for file in files:
        try:
            loaded = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ExportError(f"cannot read {file} as numpy data: {e}") from None
        arrays = [loaded[k] for k in loaded.files] if file.suffix == ".npz" else [loaded]
        for a in arrays:
            if tuple(a.shape) == shape:
                a = a[None]
            if tuple(a.shape[1:]) != shape:
                raise ExportError(
                    f"{file}: array of shape {a.shape}, expected {list(shape)} or "
                    f"[N, {', '.join(map(str, shape))}]"
                )
            batches.append(a.astype(np.float32))
    return np.concatenate(batches, axis=0)
