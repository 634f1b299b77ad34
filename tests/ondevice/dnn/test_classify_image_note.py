"""``ondevice classify --image`` with a picture that is not the model's input: a 64x64 RGBA PNG
of a real load_digits digit drawn black on white (upsampled with Pillow) given to the 8x8
digits model. The real CLI (device only, no discovery) must say what the model takes and what
was done to the picture, and classify it right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ondevice.common.dnn_profile import load_dnn

pytest.importorskip("PIL", reason="needs Pillow: pip install 'coinfer[export]'")
pytest.importorskip("sklearn", reason="needs scikit-learn: pip install 'coinfer[export]'")


def _digit(digits_dnn: Path, k: int) -> tuple[np.ndarray, int]:
    """Held-out digit k: ([8, 8] 0..16 float, label)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    row = load_dnn(digits_dnn).eval_indices[k]
    return d.images[row], int(d.target[row])


def _png(path: Path, img: np.ndarray, *, transparent: bool) -> Path:
    """The digit as a 64x64 RGBA PNG, black ink: on opaque white paper, or on a transparent
    sheet (alpha = ink)."""
    from PIL import Image

    ink = Image.fromarray((img * 255 / 16).astype(np.uint8), "L").resize((64, 64),
                                                                       Image.BILINEAR)
    ink_a = np.asarray(ink)
    rgba = np.zeros((64, 64, 4), np.uint8)  # [H, W, RGBA]
    if transparent:
        rgba[..., 3] = ink_a  # black where inked, see-through elsewhere
    else:
        rgba[..., :3] = (255 - ink_a)[..., None]
        rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def _classify(digits_dnn: Path, image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "classify", "--dnn", str(digits_dnn), "--image",
         str(image), "--no-discover", "--policy", "device-only"],
        capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("k", "transparent"), [(4, False), (0, False), (2, True)])
def test_a_big_black_on_white_digit_is_explained_and_recognized(
    digits_dnn: Path, tmp_path: Path, k: int, transparent: bool
) -> None:
    img, label = _digit(digits_dnn, k)
    png = _png(tmp_path / f"digit{k}.png", img, transparent=transparent)
    out = _classify(digits_dnn, png)
    assert out.returncode == 0, out.stderr
    printed = (out.stdout + out.stderr).splitlines()  # the CLI may print notes on either
    notes = [x for x in printed if x.startswith(f"note: input {png.name}: ")]
    assert len(notes) == 1, out.stdout + out.stderr
    note = notes[0]
    assert "64x64 RGBA image -> grey" in note and "resized to 8x8" in note
    assert "inverted (it has a light background; digits-cnn was trained on light strokes on " \
           "a dark background)" in note
    assert "values 0..255 mapped to 0..16 (the model takes 1x8x8, raw 0..16)" in note
    assert ("transparent pixels laid on white" in note) == transparent
    task = next(x for x in out.stdout.splitlines() if x.startswith("task    0:"))
    assert task.split()[2] == str(label), (label, task)


def test_a_digit_already_in_the_models_form_is_only_rescaled(
    digits_dnn: Path, tmp_path: Path
) -> None:
    from PIL import Image

    from ondevice.dnn.head import load_image_noted

    img, _ = _digit(digits_dnn, 3)
    path = tmp_path / "d8.png"
    Image.fromarray((img * 255 / 16).astype(np.uint8), "L").save(path)
    raw, note = load_image_noted(path, load_dnn(digits_dnn))
    assert note == ("input d8.png: 8x8 L image -> grey, values 0..255 mapped to 0..16 "
                    "(the model takes 1x8x8, raw 0..16)")
    assert raw.shape == (1, 8, 8) and np.abs(raw[0].astype(int) - img).max() <= 1
    np.save(tmp_path / "d.npy", img.astype(np.uint8))
    assert load_image_noted(tmp_path / "d.npy", load_dnn(digits_dnn))[1] is None


def test_json_mode_keeps_the_note_in_the_report(digits_dnn: Path, tmp_path: Path) -> None:
    img, _ = _digit(digits_dnn, 1)
    png = _png(tmp_path / "d.png", img, transparent=False)
    out = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "classify", "--dnn", str(digits_dnn), "--image",
         str(png), "--no-discover", "--policy", "device-only", "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(e.startswith("input d.png: 64x64 RGBA image") for e in rep["errors"])
    assert "note: input d.png: 64x64 RGBA" in out.stderr  # --json prints notes on stderr
