"""The digits data and digits-cnn split that ship inside coinfer (``ondevice/dnn/digits``):
``ondevice classify`` runs on them with ``coinfer[dnn]`` alone, they classify the held-out
rows as their profile says, and they are what ``model-export dnn ship-digits`` writes.

"``[dnn]`` alone" is emulated at import level: the child Python gets a meta-path finder that
refuses the packages ``[dnn]`` does not install (scikit-learn, torch, onnx, ...), as a venv
without them would; the code under test is not touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ondevice.common.dnn_profile import load_dnn
from ondevice.common.feature_codec import partial_feature
from ondevice.dnn.shipped import DIGITS_DATA, DIGITS_DIR, DIGITS_DNN, N_DIGITS, load_optdigits

REPO = Path(__file__).resolve().parents[3]
# what coinfer[dnn] does not install, by top-level import name
NOT_IN_DNN = ("sklearn", "skimage", "torch", "torchvision", "onnx", "PIL", "matplotlib",
              "jsonschema", "gguf")
BLOCKER = f"""
import importlib.abc, runpy, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {NOT_IN_DNN!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
sys.argv = ["ondevice", *sys.argv[1:]]
runpy.run_module("ondevice.cli", run_name="__main__", alter_sys=True)
"""


def _dnn_only(*args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    """``ondevice ARGS`` in a child that cannot import what ``coinfer[dnn]`` lacks, run from
    an empty directory (the shipped files must be found through the package)."""
    return subprocess.run([sys.executable, "-c", BLOCKER, *args], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=tempfile.gettempdir())


def _run_json(*args: str) -> dict:
    out = _dnn_only("classify", *args, "--no-discover", "--quiet", "--json")
    assert out.returncode == 0, out.stderr
    assert "scikit-learn" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_blocker_really_hides_scikit_learn_and_torch() -> None:
    probe = BLOCKER.replace('runpy.run_module("ondevice.cli", run_name="__main__", '
                            'alter_sys=True)',
                            "import importlib\n"
                            "for m in ('sklearn', 'torch', 'onnx'):\n"
                            "    try:\n"
                            "        importlib.import_module(m)\n"
                            "    except ModuleNotFoundError:\n"
                            "        print('blocked', m)\n"
                            "import onnxruntime, numpy\n"
                            "print('onnxruntime ok')\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["blocked sklearn", "blocked torch", "blocked onnx",
                                          "onnxruntime ok"]


def test_classify_digits_with_dnn_alone_uses_the_shipped_split_and_data() -> None:
    profile = load_dnn(DIGITS_DNN)
    rep = _run_json("--dataset", "digits", "--policy", "device-only")
    s = rep["summary"]
    assert s["tasks"] == len(profile.eval_indices) == 450
    assert s["metric"] == "top1-accuracy"
    # device-only runs the shipped fp32 model on every held-out row: the profile's figure
    assert s["accuracy"] == pytest.approx(profile.fp32_metric, abs=1.5 / s["tasks"])
    assert s["accuracy"] >= 0.97
    assert rep["model"] == profile.model_id
    assert "UCI digits" in rep["data"]


def test_classify_samples_of_the_digits_model_with_dnn_alone() -> None:
    rep = _run_json("--dataset", "samples", "--limit", "40")
    assert rep["summary"]["tasks"] == 40 and rep["summary"]["metric"] == "top1-accuracy"
    assert rep["summary"]["accuracy"] >= 0.9
    labels = load_optdigits()[1][load_dnn(DIGITS_DNN).eval_indices[:40]]
    assert [t["label"] for t in rep["tasks"]] == labels.tolist()


def test_classify_without_an_edge_falls_back_to_the_device() -> None:
    rep = _run_json("--dataset", "digits", "--limit", "30")  # enachi, the default policy
    assert rep["edge"] is None and rep["summary"]["tasks"] == 30
    assert rep["summary"]["accuracy"] >= 0.9


def test_help_names_the_shipped_default() -> None:
    out = _dnn_only("classify", "--help")
    assert out.returncode == 0, out.stderr
    assert "ships with coinfer" in " ".join(out.stdout.split())


def test_shipped_data_shapes_and_labels() -> None:
    images, labels = load_optdigits()
    assert images.shape == (N_DIGITS, 8, 8) and images.dtype == np.uint8
    assert images.max() == 16 and images.min() == 0
    assert np.bincount(labels, minlength=10).tolist() == [178, 182, 177, 183, 181, 182, 181,
                                                          179, 174, 180]  # UCI's test set
    assert DIGITS_DATA.stat().st_size < 100_000


def test_shipped_split_classifies_as_its_profile_states() -> None:
    """Every head (INT8) + tail with all channels through the 8-bit codec, and the whole fp32
    model, on the held-out rows: the accuracies the profile states (one image of slack for
    another onnxruntime's rounding)."""
    import onnxruntime as ort

    profile = load_dnn(DIGITS_DNN)
    images, labels = load_optdigits()
    idx = np.asarray(profile.eval_indices)
    x = profile.normalize(images[idx][:, None])  # [450, 1, 8, 8]
    y = labels[idx]
    slack = 1.5 / len(idx)

    def run(path: Path, a: np.ndarray) -> np.ndarray:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: a})[0]

    full = run(profile.full_file, x).argmax(axis=1)
    assert float((full == y).mean()) == pytest.approx(profile.fp32_metric, abs=slack)
    assert profile.splits, "no split shipped"
    for s in profile.splits.values():
        feature = run(s.head_file, x)  # [450, C, H, W]
        c = s.codec.shape[0]
        top1 = run(s.tail_file, partial_feature(s.codec, feature, c)).argmax(axis=1)
        assert float((top1 == y).mean()) == pytest.approx(s.int8_metric, abs=slack), s.index


def test_shipped_files_are_package_data() -> None:
    tomllib = pytest.importorskip("tomllib", reason="needs Python 3.11+ (tomllib)")

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["ondevice"]
    shipped = {p.relative_to(REPO / "ondevice").as_posix() for p in DIGITS_DIR.rglob("*")
               if p.is_file()}
    covered = {f for f in shipped for pat in patterns if Path(f).match(pat)}
    assert shipped == covered
    assert {"dnn/digits/README.md", "dnn/digits/optdigits.npz",
            "dnn/digits/digits-cnn/profile.json"} <= shipped
    note = (DIGITS_DIR / "README.md").read_text()
    assert "CC BY 4.0" in note and "10.24432/C50P49" in note


def test_shipped_data_is_what_ship_digits_writes(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="needs scikit-learn: pip install 'coinfer[export]'")
    from sklearn.datasets import load_digits

    from export.dnn._data import load_digits_split, write_digits_data

    written = write_digits_data(tmp_path / "optdigits.npz")
    assert written.read_bytes() == DIGITS_DATA.read_bytes()
    d = load_digits()
    images, labels = load_optdigits()
    assert np.array_equal(images, d.images) and np.array_equal(labels, d.target)
    profile = load_dnn(DIGITS_DNN)
    assert profile.eval_indices == load_digits_split(0).test_indices.tolist()


def test_shipped_model_is_what_the_export_trains(digits_dnn: Path) -> None:
    """The shipped fp32 model and a fresh export of digits-cnn (seed 0, tests/_dnn.py) are one
    model: same predictions on the held-out rows, logits within float noise."""
    import onnxruntime as ort

    shipped, fresh = load_dnn(DIGITS_DNN), load_dnn(digits_dnn)
    assert shipped.eval_indices == fresh.eval_indices
    images, _ = load_optdigits()
    x = shipped.normalize(images[np.asarray(shipped.eval_indices)][:, None])

    def logits(p: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]  # [450, 10]

    a, b = logits(shipped.full_file), logits(fresh.full_file)
    redo = "the export trains another model now: `make digits-data` and commit the files"
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.99, redo
    assert np.abs(a - b).max() < 1e-3 * max(1.0, float(np.abs(a).max())), redo
