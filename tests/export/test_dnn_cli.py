"""`model-export dnn ...` as a user runs it: own .pt files, own ONNX files, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'coinfer[export]'")
pytest.importorskip("onnx", reason="needs onnx: pip install 'coinfer[export]'")

import torch
from dnn_helpers import digits_cache, digits_split

from export.cli import main
from export.dnn import load_profile
from export.dnn._data import load_digits_split, normalize
from export.dnn._digits import load_or_train_digits

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = digits_cache(tmp_path_factory)
    load_or_train_digits(path, 0)  # train once if no other module did
    return path


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128 normalized training digits, as a user would ship calibration data."""
    split = load_digits_split(0)
    path = tmp_path_factory.mktemp("calib") / "digits.npz"
    np.savez(path, x=normalize(split.train_x[:128], [0.0], [16.0]))
    return path


def _err(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("model-export: error: ")
    assert len(err.strip().splitlines()) == 1
    return err


def test_train_digits_then_split_the_torchscript_file(
    cache: Path, digits_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pt = tmp_path / "digits.pt"
    assert main(["dnn", "train-digits", "--cache-dir", str(cache), "--out", str(pt)]) == 0
    out = capsys.readouterr().out
    assert "(cached," in out and "held-out accuracy 0.9" in out
    argv = ["dnn", "split", "--model", str(pt), "--out", str(tmp_path / "split")]
    argv += ["--input-shape", "1,8,8", "--calib-data", str(digits_npz), "--splits", "2,3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote 2 head/tail pairs" in out
    profile = load_profile(tmp_path / "split" / "profile.json")
    assert [s["block"] for s in profile["splits"]] == ["blocks.1", "blocks.2"]
    assert profile["data"]["evaluation"]["metric"] == "top1-agreement-with-fp32-model"
    assert all(s["int8_agreement"] >= 0.95 for s in profile["splits"])


def test_split_a_torch_export_program(
    cache: Path, digits_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_or_train_digits(cache, 0).module
    program = torch.export.export(module, (torch.zeros(1, 1, 8, 8),))
    path = tmp_path / "digits.pt2"
    torch.export.save(program, str(path))
    argv = ["dnn", "split", "--model", str(path), "--out", str(tmp_path / "split")]
    assert main([*argv, "--calib-data", str(digits_npz), "--splits", "all"]) == 0
    profile = load_profile(tmp_path / "split" / "profile.json")
    assert profile["model"]["input"]["shape"] == [1, 1, 8, 8]  # from the program itself
    shapes = [c["shape"] for c in profile["candidates"]]
    assert [64, 2, 2] in shapes and [32, 4, 4] in shapes


def test_quantize_a_users_onnx_model(
    tmp_path_factory: pytest.TempPathFactory,
    digits_npz: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = digits_split(tmp_path_factory).out_dir / "model.onnx"
    out = tmp_path / "m_int8.onnx"
    argv = ["dnn", "quantize", "--in", str(model), "--calib", str(digits_npz), "--out", str(out)]
    assert main(argv) == 0
    line = capsys.readouterr().out
    assert "INT8 QDQ" in line and "top-1 agreement" in line
    agreement = float(line.split("top-1 agreement ")[1].split(";")[0])
    assert agreement >= 0.98
    import onnx

    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node)
    # A directory of .npy files works too, one sample per file.
    calib_dir = tmp_path / "npy"
    calib_dir.mkdir()
    x = np.load(digits_npz)["x"]
    for i in range(16):
        np.save(calib_dir / f"{i:03d}.npy", x[i])
    argv[5] = str(calib_dir)
    assert main(argv) == 0
    assert "on 16 calibration samples" in capsys.readouterr().out


def test_bad_input_gives_one_clear_line(
    cache: Path,
    digits_npz: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = str(tmp_path / "out")
    err = _err(capsys, ["dnn", "split", "--model", str(tmp_path / "missing.pt"), "--out", out])
    assert "model file not found" in err and "missing.pt" in err
    err = _err(capsys, ["dnn", "split", "--model", "resnet-9000", "--out", out])
    assert "unknown model 'resnet-9000'" in err and "digits-cnn" in err
    base = ["dnn", "split", "--model", "digits-cnn", "--cache-dir", str(cache), "--out", out]
    err = _err(capsys, [*base, "--splits", "2,7"])
    assert "split point 7 does not exist" in err and "1..3" in err
    err = _err(capsys, [*base, "--splits", "two"])
    assert "--splits" in err
    state = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, state)
    err = _err(capsys, ["dnn", "split", "--model", str(state), "--out", out])
    assert "neither a torch.export nor a TorchScript file" in err
    ts = tmp_path / "digits.pt"
    assert main(["dnn", "train-digits", "--cache-dir", str(cache), "--out", str(ts)]) == 0
    capsys.readouterr()
    err = _err(capsys, ["dnn", "split", "--model", str(ts), "--out", out])
    assert "--input-shape" in err
    err = _err(capsys, ["dnn", "split", "--model", str(ts), "--out", out, "--input-shape", "1,8,8"])
    assert "--calib-data" in err
    model = digits_split(tmp_path_factory).out_dir / "model.onnx"
    q = ["dnn", "quantize", "--out", str(tmp_path / "q.onnx")]
    err = _err(capsys, [*q, "--in", str(tmp_path / "nope.onnx"), "--calib", str(digits_npz)])
    assert "model not found" in err
    err = _err(capsys, [*q, "--in", str(state), "--calib", str(digits_npz)])
    assert "is not an ONNX model" in err
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 3, 8, 8), np.float32))
    err = _err(capsys, [*q, "--in", str(model), "--calib", str(wrong)])
    assert "expected [1, 8, 8]" in err
    err = _err(capsys, [*q, "--in", str(model), "--calib", str(tmp_path / "none.npz")])
    assert "calibration data not found" in err
    assert not (tmp_path / "q.onnx").exists()


def test_the_installed_entry_point_reports_errors_with_status_2(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "export", "dnn", "split", "--model", "nope", "--out", "x"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown model 'nope'" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_profile_json_is_plain_json(tmp_path_factory: pytest.TempPathFactory) -> None:
    text = (digits_split(tmp_path_factory).out_dir / "profile.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["format"] == "coinfer-dnn-profile"
