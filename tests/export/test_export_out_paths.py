"""`model-export` commands that write one file refuse an existing directory as that file.

Each is run as the real CLI (a subprocess) with the output flag naming a directory: exit status
2, one line `model-export: error: --out DIR is a directory; ...` naming a file path to use
instead, nothing written into the directory, and no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from export import ExportError, make_draft, quantize_gguf

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: pip install 'coinfer[llm]'")

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "export", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def _onnx_stand_in(tmp: Path) -> Path:
    path = tmp / "m.onnx"  # only its existence matters: the output is checked before parsing
    path.write_bytes(b"not parsed")
    return path


# (arguments given the fixtures' target, draft, a scratch dir and the output dir; flag;
#  the file name the error suggests)
CASES: list[tuple[Callable[[Path, Path, Path, Path], list[str]], str, str]] = [
    (
        lambda t, d, tmp, out: ["llm", "quantize", "--in", str(d), "--type", "q4_0",
                                "--out", str(out), "--no-progress"],
        "--out",
        "draft-q4_0.gguf",
    ),
    (
        lambda t, d, tmp, out: ["llm", "quantize", "--in", str(d), "--preset", "rpi5",
                                "--out", str(out), "--no-progress"],
        "--out",
        "draft-q4_0.gguf",
    ),
    (
        lambda t, d, tmp, out: ["llm", "make-draft", "--from", str(t), "--out", str(out),
                                "--keep-layers", "1", "--no-progress"],
        "--out",
        "target-draft-l1.gguf",
    ),
    (
        lambda t, d, tmp, out: ["llm", "make-draft", "--from", str(t), "--out", str(out),
                                "--type", "q8_0", "--no-progress"],
        "--out",
        "target-draft-q8_0.gguf",
    ),
    (
        lambda t, d, tmp, out: ["llm", "rank-drafts", str(t), str(d), "--json", str(out),
                                "--no-progress"],
        "--json",
        "rank.json",
    ),
    (
        lambda t, d, tmp, out: ["dnn", "quantize", "--in", str(_onnx_stand_in(tmp)),
                                "--calib", str(tmp), "--out", str(out)],
        "--out",
        "m-int8.onnx",
    ),
    (
        lambda t, d, tmp, out: ["dnn", "train-digits", "--cache-dir", str(tmp / "cache"),
                                "--out", str(out)],
        "--out",
        "digits-cnn.pt",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make_args", "flag", "suggested"),
    CASES,
    ids=["quantize", "quantize-preset", "make-draft-layers", "make-draft-type", "rank-drafts-json",
         "dnn-quantize", "dnn-train-digits"],
)  # fmt: skip
def test_a_directory_as_output_file_is_one_clear_error(
    tmp_path: Path,
    fixture_models: tuple[Path, Path],
    make_args: Callable[[Path, Path, Path, Path], list[str]],
    flag: str,
    suggested: str,
) -> None:
    target, draft = fixture_models
    out_dir = tmp_path / "outdir"
    out_dir.mkdir()
    proc = _cli(*make_args(target, draft, tmp_path, out_dir))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"model-export: error: {flag} {out_dir} is a directory; {flag} takes the output file's "
        f"path, e.g. {flag} {out_dir / suggested}"
    ), proc.stderr
    assert list(out_dir.iterdir()) == []
    assert not (tmp_path / "cache").exists()  # train-digits refused before training


def test_library_functions_refuse_a_directory_before_any_work(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    target, draft = fixture_models
    with pytest.raises(ExportError, match="is a directory"):
        quantize_gguf(draft, tmp_path, "q8_0", progress=False)
    with pytest.raises(ExportError, match="is a directory"):
        make_draft(target, tmp_path, keep_layers=1, progress=False)
    assert list(tmp_path.iterdir()) == []
