"""The colour photographs the export calibrates and evaluates photo models on, as crops.

Shared: `model-export dnn split` draws its calibration and evaluation crops here, and the device
draws the same seeded evaluation crops for ``ondevice classify --dataset samples``, so both must
run this one function. The photos are the ones scikit-learn (`load_sample_images`) and
scikit-image (`skimage.data`) ship in their wheels; Pillow resizes. Those three are optional
data sources imported only inside the functions (a device with neither gets `NoPhotosError`);
at module level this imports numpy alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# skimage.data colour photographs bundled in the scikit-image wheel (others need pooch).
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
)
MAX_SIDE = 640  # px: photos are downscaled once so that crops are cheap
CROP_SCALE = (0.35, 1.0)  # crop side as a fraction of the photo's shorter side




class NoPhotosError(RuntimeError):
    """Neither scikit-learn nor scikit-image (with their bundled photos) is installed."""


def natural_images() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 ``[H, W, 3]`` RGB) for every colour photo shipped by the installed
    scikit-learn and scikit-image, longer side at most MAX_SIDE px."""
    from PIL import Image

    photos: list[tuple[str, np.ndarray]] = []
    # Either package may be absent: each adds what it ships; the check below covers neither.
    with contextlib.suppress(ImportError):
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        for filename, image in zip(sample.filenames, sample.images, strict=True):
            photos.append((f"sklearn:{Path(filename).stem}", image))
    with contextlib.suppress(ImportError):
        import skimage.data

        for name in SKIMAGE_PHOTOS:
            try:
                image = getattr(skimage.data, name)()
            except (AttributeError, ModuleNotFoundError, OSError, ValueError):
                continue  # not bundled in this scikit-image version
            photos.append((f"skimage:{name}", image[..., :3]))
    if not photos:
        raise NoPhotosError(
            "no sample photographs found: install scikit-learn and scikit-image "
            "(pip install scikit-learn scikit-image)"
        )
    out = []
    for name, image in photos:
        img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
        if max(img.size) > MAX_SIDE:
            ratio = MAX_SIDE / max(img.size)
            size = (max(1, round(img.width * ratio)), max(1, round(img.height * ratio)))
            img = img.resize(size, Image.BILINEAR)
        out.append((name, np.asarray(img.convert("RGB"))))
    return out


def random_crops(
    photos: Sequence[tuple[str, np.ndarray]], n: int, height: int, width: int, seed: int
) -> tuple[np.ndarray, list[str]]:
    """`n` random crops, uint8 ``[n, height, width, 3]``, and the photo each came from.

    Photos are taken in turn (crop i from photo i mod len); each crop is a random window whose
    side is CROP_SCALE of the photo's shorter side with an aspect of height:width, flipped left
    to right with probability 1/2, resized bilinearly.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    crops = np.empty((n, height, width, 3), dtype=np.uint8)
    names = []
    for i in range(n):
        name, photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = rng.uniform(*CROP_SCALE) * min(h, w)
        ch = max(1, min(h, round(side)))
        cw = max(1, min(w, round(side * width / height)))
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        img = Image.fromarray(photo[y : y + ch, x : x + cw]).resize((width, height), Image.BILINEAR)
        crop = np.asarray(img)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops[i] = crop
        names.append(name)
    return crops, names
