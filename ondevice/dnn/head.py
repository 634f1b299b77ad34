"""The device's side of a split DNN: INT8 heads and the whole model on onnxruntime, the data.

``DeviceDnn`` runs every onnxruntime call in a worker thread (``asyncio.to_thread``), telling
the ``hw.Activity`` that a core is busy so that the ``sim`` meter charges it; real meters see
the work themselves.

Emulating a slower device (``device_slowdown`` > 1, ``ondevice classify --device-slowdown``):
the real model still runs and produces the real feature, then the worker stays busy until
``slowdown`` times the profile's latency for that part has passed (the profile was measured on
the machine that exported the model). A device that is really that slow runs with slowdown 1.
The benchmark uses this to put an x86 host's heads on a Raspberry-Pi-class time scale.

Data: ``digits`` is the held-out rows the profile names of the UCI digits that ship with
coinfer (``ondevice.dnn.shipped``: the rows of scikit-learn's load_digits, real labels; no
scikit-learn needed); ``samples`` is the profile's own evaluation inputs (for photos: the
seeded crops of the shipped photographs, labelled with the unsplit fp32 model's top-1, i.e.
fidelity). ``load_image`` reads one file (``.npy`` in raw units, or any image PIL opens,
brought to the model's input with a note saying how: ``load_image_noted``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hw import Activity
from ondevice.common.dnn_profile import DnnProfile, DnnProfileError

SAMPLES_EVAL_SEED_OFFSET = 1  # export's evaluation crops use seed + 1 (export/dnn/_split.py)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(sess: Any, x: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


class DeviceDnn:
    """Heads (INT8), local tails (fallback) and the whole model of one split directory."""

    def __init__(self, profile: DnnProfile, *, activity: Activity, threads: int = 1,
                 slowdown: float = 1.0, splits: list[int] | None = None) -> None:
        if slowdown < 1.0:
            raise ValueError("device slowdown must be >= 1")
        self.profile = profile
        self.activity = activity
        self.threads = threads
        self.slowdown = slowdown
        self._heads: dict[int, Any] = {}
        self._tails: dict[int, Any] = {}
        self._full: Any = None
        self._splits = splits if splits is not None else sorted(profile.splits)
        self._lock = threading.Lock()

    def load(self) -> None:
        """Open every head and the whole model (blocking; call in a thread before tasks)."""
        for i in self._splits:
            self._heads[i] = _session(self.profile.split(i).head_file, self.threads)
        if self.profile.full_file.is_file():
            self._full = _session(self.profile.full_file, self.threads)

    @property
    def has_full(self) -> bool:
        return self._full is not None

    def _busy(self, fn: Any, x: np.ndarray, emulated_s: float) -> tuple[np.ndarray, float]:
        """Run ``fn(x)`` with a busy core, stretched to ``emulated_s`` when emulating."""
        with self.activity.busy(float(self.threads)):
            t0 = time.perf_counter()
            out = fn(x)
            left = emulated_s - (time.perf_counter() - t0) if self.slowdown > 1.0 else 0.0
            if left > 0:
                time.sleep(left)
            return out, time.perf_counter() - t0

    async def async_head(self, split: int, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Feature ``[C, H, W]`` float32 of normalized input ``x`` ``[1, C, H, W]``, and the
        device seconds it took."""
        sess = self._heads[split]
        emulated = self.profile.split(split).head_ms / 1e3 * self.slowdown
        out, secs = await asyncio.to_thread(self._busy, lambda a: _run(sess, a), x, emulated)
        return out[0], secs

    async def async_full(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Logits ``[K]`` of the whole model on the device, and the seconds it took."""
        if self._full is None:
            raise DnnProfileError(f"{self.profile.full_file} is missing: no device-only path")
        emulated = self.profile.full_ms / 1e3 * self.slowdown
        out, secs = await asyncio.to_thread(self._busy, lambda a: _run(self._full, a), x,
                                            emulated)
        return out[0], secs

    def has_tail(self, split: int) -> bool:
        return split in self.profile.splits and self.profile.split(split).tail_file.is_file()

    async def async_tail(self, split: int, feature: np.ndarray) -> tuple[np.ndarray, float]:
        """Logits ``[K]`` of split ``split``'s tail run on the device (the lost-edge fallback);
        stretched like the rest: the tail holds the remaining FLOPs of the model."""
        def tail(a: np.ndarray) -> np.ndarray:
            with self._lock:
                if split not in self._tails:
                    self._tails[split] = _session(self.profile.split(split).tail_file,
                                                  self.threads)
            return _run(self._tails[split], a)

        s = self.profile.split(split)
        emulated = s.tail_ms / 1e3 * self.slowdown
        out, secs = await asyncio.to_thread(self._busy, tail, feature[None], emulated)
        return out[0], secs


@dataclass(frozen=True)
class Dataset:
    """Raw-unit inputs ``[N, C, H, W]`` uint8 with reference labels ``[N]``."""

    name: str
    raw: np.ndarray
    labels: np.ndarray
    source: str
    metric: str  # "top1-accuracy" (real labels) or "top1-agreement-with-fp32-model"


def _to_uint8(raw: np.ndarray, raw_range: tuple[float, float] | None) -> np.ndarray:
    if raw_range is None:
        raise DnnProfileError("this model takes normalized inputs (no raw range): no images")
    lo, hi = raw_range
    return np.clip(np.rint(raw), max(lo, 0), min(hi, 255)).astype(np.uint8)


def load_digits_dataset(profile: DnnProfile) -> Dataset:
    """The shipped UCI digits' rows the profile held out (all rows if it names none), with
    their labels (`ondevice.dnn.shipped.load_optdigits`)."""
    from ondevice.dnn.shipped import N_DIGITS, load_optdigits

    if profile.input_shape != (1, 8, 8):
        raise DnnProfileError(f"--dataset digits needs an 8x8 grey model, {profile.name} takes "
                              f"{list(profile.input_shape)}")
    idx = np.asarray(profile.eval_indices if profile.eval_indices else range(N_DIGITS))
    if idx.size and (idx.min() < 0 or idx.max() >= N_DIGITS):
        raise DnnProfileError(f"{profile.root}: evaluation indices outside the {N_DIGITS} "
                              "digits (not a load_digits split)")
    images, labels = load_optdigits()
    raw = images[idx][:, None, :, :]  # [N, 1, 8, 8] in 0..16
    return Dataset("digits", _to_uint8(raw, profile.raw_range), labels[idx],
                   f"UCI digits (load_digits' rows, shipped), {len(idx)} rows held out by the "
                   "export", "top1-accuracy")


def load_samples_dataset(profile: DnnProfile, reference: Any = None) -> Dataset:
    """The profile's evaluation inputs; for photo models the export's seeded crops labelled by
    ``reference(raw) -> top-1 [N]`` (the unsplit model), since the photos carry no labels."""
    if profile.input_shape == (1, 8, 8) and profile.metric == "top1-accuracy":
        return load_digits_dataset(profile)
    c, h, w = profile.input_shape
    if c != 3:
        raise DnnProfileError(f"no built-in samples for a {c}-channel model")
    from ondevice.common.sample_photos import NoPhotosError, natural_images, random_crops

    n = int(profile.raw["data"]["evaluation"]["samples"])
    seed = int(profile.raw.get("seed", 0)) + SAMPLES_EVAL_SEED_OFFSET
    try:  # the export's own crops, drawn by the same function
        crops, _ = random_crops(natural_images(), n, h, w, seed)  # [N, H, W, 3] uint8
    except NoPhotosError as exc:
        raise DnnProfileError(str(exc)) from exc
    raw = np.ascontiguousarray(crops.transpose(0, 3, 1, 2))  # [N, 3, H, W]
    if reference is None:
        raise DnnProfileError("samples of a photo model need the unsplit model as reference")
    labels = np.asarray(reference(raw), dtype=np.int64)
    return Dataset("samples", raw, labels, f"{n} seeded crops of the shipped photos "
                   f"(seed {seed})", "top1-agreement-with-fp32-model")


def reference_top1(profile: DnnProfile) -> Any:
    """A function raw ``[N, C, H, W]`` -> the unsplit fp32 model's top-1 ``[N]``."""
    sess = _session(profile.full_file, 1)

    def top1(raw: np.ndarray) -> np.ndarray:
        x = profile.normalize(raw)
        return np.concatenate([_run(sess, x[i:i + 16]).argmax(axis=1)
                               for i in range(0, len(x), 16)])

    return top1


def load_image(path: Path, profile: DnnProfile) -> np.ndarray:
    """One input ``[C, H, W]`` uint8 in the model's raw units from an image file or ``.npy``
    (`load_image_noted` without its note)."""
    return load_image_noted(path, profile)[0]


def light_on_dark(profile: DnnProfile) -> bool:
    """Whether the model was trained on light strokes on a dark background: digits-cnn, i.e.
    scikit-learn's load_digits (0 = background, 16 = ink)."""
    labels = profile.raw.get("model", {}).get("labels") or {}
    return profile.name == "digits-cnn" or "load_digits" in str(labels.get("source", ""))


def _border_mean(a: np.ndarray) -> float:
    """Mean of the outermost pixels of a 2-D array: the background's level."""
    return float(np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]]).mean())


def load_image_noted(path: Path, profile: DnnProfile) -> tuple[np.ndarray, str | None]:
    """One input ``[C, H, W]`` uint8 in the model's raw units, and a one-line note (None for a
    ``.npy``, taken as is) saying what the model takes and what was done to the image.

    An image PIL opens is brought to the model's input: transparent pixels are laid on white
    when its opaque pixels are mostly dark (ink on a transparent sheet), else on black; it is
    converted to grey or RGB and resized to H x W (bilinear, antialiased when shrinking; a
    digit is shrunk by area averages, as load_digits made its images); for a model trained on
    light strokes on a dark background (`light_on_dark`: the digits) an image whose border is
    light (a typical black-on-white drawing) is inverted; then 0..255 is mapped linearly onto
    the model's raw range (0..16 for the digits).
    """
    c, h, w = profile.input_shape
    if path.suffix == ".npy":
        a = np.load(path)
        if a.shape == (h, w) and c == 1:
            a = a[None]
        if a.shape == (h, w, c):
            a = a.transpose(2, 0, 1)
        if a.shape != (c, h, w):
            raise DnnProfileError(f"{path}: shape {a.shape}, the model takes {(c, h, w)}")
        return _to_uint8(a, profile.raw_range), None
    if profile.raw_range is None:
        raise DnnProfileError("this model takes normalized inputs: give a .npy")
    try:
        from PIL import Image
    except ImportError as exc:
        raise DnnProfileError("reading images needs Pillow (pip install pillow)") from exc
    try:
        img = Image.open(path)
        img.load()
    except OSError as exc:
        raise DnnProfileError(f"cannot read image {path}: {exc}") from None
    mode, (w0, h0) = img.mode, img.size
    done: list[str] = []
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)  # [H0, W0, 4]
        alpha = rgba[..., 3:] / 255.0
        grey = rgba[..., :3].mean(axis=2)
        opaque = grey[alpha[..., 0] >= 0.5]
        fill = 255.0 if opaque.size == 0 or float(opaque.mean()) < 128 else 0.0
        if float(alpha.min()) < 1.0:
            done.append(f"transparent pixels laid on {'white' if fill else 'black'}")
        img = Image.fromarray(np.rint(rgba[..., :3] * alpha + fill * (1 - alpha))
                              .astype(np.uint8), "RGB")
    img = img.convert("L" if c == 1 else "RGB")
    digits = c == 1 and light_on_dark(profile)
    if img.size != (w, h):
        # load_digits' 8x8 images are ink counts over 4x4 blocks of 32x32 bitmaps: shrinking
        # a digit by area averages (BOX) is what made them
        box = digits and w <= w0 and h <= h0
        img = img.resize((w, h), Image.BOX if box else Image.BILINEAR)
        done.append(f"resized to {w}x{h}{' by area averages' if box else ''}")
    a = np.asarray(img, dtype=np.float32)  # [H, W] or [H, W, 3], 0..255
    a = a[None] if c == 1 else a.transpose(2, 0, 1)
    if digits and _border_mean(a[0]) > 127.5:
        a = 255.0 - a
        done.append(f"inverted (it has a light background; {profile.name} was trained on "
                    "light strokes on a dark background)")
    lo, hi = profile.raw_range
    done.append(f"values 0..255 mapped to {lo:g}..{hi:g}")
    colour = "grey" if c == 1 else "RGB"
    note = (f"input {path.name}: {w0}x{h0} {mode} image -> {colour}, " + ", ".join(done)
            + f" (the model takes {c}x{h}x{w}, raw {lo:g}..{hi:g})")
    return _to_uint8(lo + a / 255.0 * (hi - lo), profile.raw_range), note
