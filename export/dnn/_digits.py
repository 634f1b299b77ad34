"""digits-cnn: a small CNN trained on scikit-learn's handwritten digits (real labels).

The network has three blocks and a classifier, so that split points fall at block
boundaries with different compute/feature trade-offs (8x8 grey input, 64 bytes raw)::

    input  [1, 8, 8]    raw 0..16, normalized to [0, 1] (mean 0, std 16)
    blocks.0  conv3x3 1->16, BN, ReLU               -> [16, 8, 8]   1,024 B at 8 bits
    blocks.1  conv3x3 16->32, BN, ReLU, maxpool 2   -> [32, 4, 4]     512 B
    blocks.2  conv3x3 32->64, BN, ReLU, maxpool 2   -> [64, 2, 2]     256 B
    classifier  flatten, dropout, linear 256->128, ReLU, linear 128->10  -> logits [10]

Training is seeded (torch and numpy generators, one thread-independent data order) and the
weights are cached as ``digits-cnn-v{VERSION}-seed{S}.pt`` in a cache directory, so the second
use costs a file read. Held-out accuracy is measured on the seeded split of `_data`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export._errors import ExportError
from export._paths import check_output_file
from export.dnn._data import load_digits_split
from ondevice.common.files import atomic_output

VERSION = 1  # bump when the architecture or the training recipe changes (invalidates caches)
EPOCHS = 40
BATCH = 64
LR = 3e-3  # Adam
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 1  # px: random translation used as augmentation
PIXEL_MEAN = 0.0  # raw units: input = (raw - mean) / std maps 0..16 to 0..1
PIXEL_STD = 16.0


class DigitsCNN(nn.Module):
    """The digits-cnn network; input ``[N, 1, 8, 8]`` normalized, output logits ``[N, 10]``."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
            nn.Sequential(
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2)
            ),
            nn.Sequential(
                nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)
            ),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, 10]`` for normalized images ``[N, 1, 8, 8]``."""
        return self.classifier(self.blocks(x))


@dataclass(frozen=True)
class DigitsModel:
    """A trained digits-cnn (eval mode), its held-out accuracy (0..1) and where it is cached."""

    module: DigitsCNN
    test_accuracy: float
    seed: int
    path: Path
    trained: bool  # False when loaded from the cache


def default_cache_dir() -> Path:
    """``$COINFER_CACHE`` if set, else ``~/.cache/coinfer``."""
    import os

    env = os.environ.get("COINFER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "coinfer"


def cache_path(cache_dir: Path, seed: int) -> Path:
    """Where the seed's weights are cached."""
    return cache_dir / f"digits-cnn-v{VERSION}-seed{seed}.pt"


def _shift(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image of ``[N, 1, 8, 8]`` moved by up to MAX_SHIFT px in x and y, zero filled."""
    out = np.zeros_like(x)
    n = len(x)
    dy = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=n)
    dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=n)
    for i in range(n):
        ys, yd = (
            (slice(0, 8 - dy[i]), slice(dy[i], 8))
            if dy[i] >= 0
            else (slice(-dy[i], 8), slice(0, 8 + dy[i]))
        )
        xs, xd = (
            (slice(0, 8 - dx[i]), slice(dx[i], 8))
            if dx[i] >= 0
            else (slice(-dx[i], 8), slice(0, 8 + dx[i]))
        )
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


def evaluate(module: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (0..1) of `module` on raw digits ``[N, 1, 8, 8]`` with labels ``[N]``."""
    module.eval()
    with torch.no_grad():
        x = torch.from_numpy((images - PIXEL_MEAN) / PIXEL_STD)  # [N, 1, 8, 8]
        pred = module(x).argmax(dim=1).numpy()  # [N]
    return float((pred == labels).mean())


def train_digits(
    seed: int = 0,
    epochs: int = EPOCHS,
    announce: Callable[[str], None] | None = None,
) -> tuple[DigitsCNN, float]:
    """Train a fresh digits-cnn on the seed's training split; return it (eval mode) and its
    held-out top-1 accuracy (0..1). Deterministic for a seed on one machine: it trains on one
    thread (the steps are tiny; more threads only add synchronization, and a fixed thread
    count keeps the float reductions in one order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(seed, epochs, announce)
    finally:
        torch.set_num_threads(threads)


def _train(
    seed: int, epochs: int, announce: Callable[[str], None] | None
) -> tuple[DigitsCNN, float]:
    split = load_digits_split(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    y_all = torch.from_numpy(split.train_y)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        x_aug = _shift(split.train_x, rng)  # [N, 1, 8, 8] raw
        x_all = torch.from_numpy((x_aug - PIXEL_MEAN) / PIXEL_STD)
        perm = torch.from_numpy(rng.permutation(len(x_all)))
        total = 0.0
        for i in range(0, len(perm), BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(x_all[idx]), y_all[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if announce and (epoch + 1) % 10 == 0:
            announce(
                f"digits-cnn epoch {epoch + 1}/{epochs}: train loss {total / len(perm):.4f} "
                f"({time.perf_counter() - start:.1f} s)"
            )
    model.eval()
    return model, evaluate(model, split.test_x, split.test_y)


def load_or_train_digits(
    cache_dir: Path,
    seed: int = 0,
    *,
    force: bool = False,
    announce: Callable[[str], None] | None = None,
) -> DigitsModel:
    """The cached digits-cnn for `seed`, training (and caching) it first if absent or `force`."""
    path = cache_path(cache_dir, seed)
    split = load_digits_split(seed)
    if path.exists() and not force:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = DigitsCNN()
            model.load_state_dict(state)
        except (RuntimeError, OSError, KeyError) as e:
            raise ExportError(f"cached digits-cnn {path} is unreadable ({e}); delete it") from None
        model.eval()
        return DigitsModel(model, evaluate(model, split.test_x, split.test_y), seed, path, False)
    if announce:
        announce(f"training digits-cnn (seed {seed}, {EPOCHS} epochs) -> {path}")
    model, accuracy = train_digits(seed, announce=announce)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            torch.save(model.state_dict(), tmp)
    except OSError as e:
        raise ExportError(f"cannot write the digits-cnn cache {path}: {e}") from None
    return DigitsModel(model, accuracy, seed, path, True)


def save_torchscript(module: nn.Module, path: Path) -> Path:
    """Save `module` as TorchScript (traced on a ``[1, 1, 8, 8]`` input) at `path`, so that it
    can be split like a user's own model (``dnn split --model PATH.pt``). ExportError if `path`
    is a directory or cannot be written."""
    check_output_file(path, example="digits-cnn.pt")
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, usable
        with torch.no_grad():
            traced = torch.jit.trace(module, torch.zeros(1, 1, 8, 8))
        try:
            with atomic_output(path) as tmp:
                torch.jit.save(traced, str(tmp))
        except OSError as e:
            raise ExportError(f"cannot write {path}: {e}") from None
    return path
