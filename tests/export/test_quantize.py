"""`model-export llm quantize` / quantize_gguf on the fixture models, through llama.cpp."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from export import QUANT_TYPES, ExportError, quantize_gguf

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="needs llama-cpp-python: pip install 'coinfer[llm]'")

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "export", "llm", "quantize", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def _run(path: Path, prompt: bytes, n: int, forced: list[int] | None = None) -> list[int]:
    """n tokens of greedy continuation of `prompt`; with `forced`, the model's argmax at each
    position of prompt + forced instead (same contexts as another model's text)."""
    model = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_threads=1, verbose=False, logits_all=True
    )
    try:
        ids = model.tokenize(prompt)
        if forced is not None:
            model.eval(ids + forced[:n])
            start = len(ids) - 1
            return [int(t) for t in np.argmax(model.scores[start : start + n], axis=1)]
        model.eval(ids)
        out = []
        for _ in range(n):
            nxt = int(np.argmax(model.scores[model.n_tokens - 1]))
            out.append(nxt)
            model.eval([nxt])
        return out
    finally:
        model.close()


@pytest.mark.parametrize(
    ("qtype", "max_ratio", "min_agree"), [("q8_0", 0.3, 0.9), ("q4_0", 0.2, 0.6)]
)
def test_quantized_fixture_loads_runs_and_shrinks(
    tmp_path: Path,
    fixture_models: tuple[Path, Path],
    qtype: str,
    max_ratio: float,
    min_agree: float,
) -> None:
    target = fixture_models[0]
    out = tmp_path / f"target-{qtype}.gguf"
    result = quantize_gguf(target, out, qtype, nthread=1, progress=False)
    assert out.is_file() and result.out_path == out and result.qtype == qtype
    assert result.in_bytes == target.stat().st_size and result.out_bytes == out.stat().st_size
    assert result.out_bytes < max_ratio * result.in_bytes
    assert result.n_tensors == 21
    # Rows of 128/256 fit the 32-element blocks: at most the output head (llama.cpp picks
    # q6_K for it, which needs 256) falls back.
    assert result.n_fallback <= 1
    assert list(tmp_path.iterdir()) == [out]  # no temp file left behind
    assert len(set(_run(out, b"The river", 32))) > 5
    # On the same contexts (the F32 model's greedy text), how often the argmax survives.
    agree = 0.0
    for prompt in (b"The river", b"Good tools", b"In the morning"):
        reference = _run(target, prompt, 64)
        agree += np.mean(np.array(_run(out, prompt, 64, forced=reference)) == reference) / 3
    print(f"{qtype}: {result.summary()}; argmax agreement with f32 {agree:.2f}")
    assert agree >= min_agree


def test_requantizes_an_already_quantized_model(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    q8 = quantize_gguf(fixture_models[1], tmp_path / "d-q8.gguf", "q8_0", progress=False)
    q4 = quantize_gguf(q8.out_path, tmp_path / "d-q4.gguf", "Q4_K_M", progress=False)
    assert q4.qtype == "q4_k_m" and q4.out_bytes < q8.out_bytes
    assert len(set(_run(q4.out_path, b"Good tools", 16))) > 3


def test_cli_success_prints_summary(tmp_path: Path, fixture_models: tuple[Path, Path]) -> None:
    out = tmp_path / "t.gguf"
    proc = _cli("--in", str(fixture_models[0]), "--type", "q8_0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert "MiB" in proc.stdout and "q8_0" in proc.stdout
    assert "quantizing" in proc.stderr


def test_cli_unknown_type_exits_2_naming_valid_types(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    out = tmp_path / "t.gguf"
    proc = _cli("--in", str(fixture_models[0]), "--type", "q9_z", "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "q9_z" in lines[0] and all(t in lines[0] for t in QUANT_TYPES)
    assert not out.exists()


def _not_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "notes.gguf"
    path.write_text("not a model\n")
    return path


def _truncated(tmp_path: Path, target: Path) -> Path:
    # Valid magic and header, tensor data cut off: only llama.cpp can tell.
    path = tmp_path / "truncated.gguf"
    path.write_bytes(target.read_bytes()[:100_000])
    return path


@pytest.mark.parametrize(
    ("make_input", "out_name", "message"),
    [
        (lambda tmp, _: tmp / "missing.gguf", "o.gguf", "does not exist"),
        (lambda tmp, _: tmp, "o.gguf", "not a regular file"),
        (lambda tmp, _: _not_gguf(tmp), "o.gguf", "not a GGUF file"),
        (lambda tmp, target: target, "no-such-dir/o.gguf", "output directory"),
        (lambda tmp, target: _truncated(tmp, target), "o.gguf", "llama.cpp failed"),
    ],
    ids=["missing", "directory", "not-gguf", "no-output-dir", "truncated"],
)
def test_cli_bad_input_exits_2_with_one_line(
    tmp_path: Path,
    fixture_models: tuple[Path, Path],
    make_input: Callable[[Path, Path], Path],
    out_name: str,
    message: str,
) -> None:
    inp = make_input(tmp_path, fixture_models[0])
    out = tmp_path / out_name
    proc = _cli("--in", str(inp), "--type", "q4_0", "--out", str(out), "--no-progress")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("model-export: error:") and message in last, proc.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_output_equal_to_input_is_refused(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    copy = tmp_path / "t.gguf"
    copy.write_bytes(fixture_models[0].read_bytes())
    with pytest.raises(ExportError, match="is the input"):
        quantize_gguf(copy, copy, "q8_0", progress=False)
    assert copy.read_bytes() == fixture_models[0].read_bytes()
