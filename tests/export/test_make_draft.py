"""`model-export llm make-draft`: layer-truncated and requantized self-drafts of a target."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_variants import DELETE, rewrite_gguf
from llama_reference import forward, read_gguf_tensors

from export import ExportError
from export._check_pair import check_pair
from export._fixtures import TARGET_DIMS
from export._make_draft import layer_types_note, make_draft

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: pip install 'coinfer[llm]'")
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner

REPO = Path(__file__).resolve().parents[2]
PROMPT = "The river runs past the old mill, and the miller"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "export", "llm", "make-draft", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def _logits(path: Path, text: str) -> tuple[list[int], np.ndarray]:
    """llama.cpp's logits at every position of `text` (float64 [n, vocab])."""
    with LlamaModel(path) as model:
        tokens = model.tokenize(text)
        with LlamaRunner(model, LlamaConfig(n_ctx=128, n_batch=128, n_threads=1)) as runner:
            return tokens, np.array(runner.eval(tokens, len(tokens)), dtype=np.float64)


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(str(path))
    return {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF")}


def test_truncated_draft_is_the_targets_first_layers(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    target = fixture_models[0]
    out = tmp_path / "draft-l1.gguf"
    result = make_draft(target, out, keep_layers=1, progress=False)
    assert result.kept_layers == 1 and result.source_layers == 2 and result.qtype is None
    assert result.pair.valid and result.architecture == "llama"
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind
    fields = _fields(out)
    src_fields = _fields(target)
    assert fields["llama.block_count"] == 1
    # Everything else is copied: tokenizer, hyperparameters (the name records the cut).
    changed = {k for k in src_fields if fields.get(k) != src_fields[k]}
    assert changed == {"llama.block_count", "general.name"}
    assert fields["general.name"] == "coinfer-fixture-target-s0 (first 1 of 2 layers)"
    tensors = read_gguf_tensors(out)
    assert sorted(tensors) == sorted(
        n for n in read_gguf_tensors(target) if not n.startswith("blk.1.")
    )
    # llama.cpp runs it, and computes what the target's first layer plus its head compute.
    tokens, got = _logits(out, PROMPT)
    want, _ = forward(
        read_gguf_tensors(target),
        tokens,
        n_layer=1,
        n_head=TARGET_DIMS.n_head,
        n_head_kv=TARGET_DIMS.n_head_kv,
    )
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())
    # ...which is not what the full target computes.
    _, full = _logits(target, PROMPT)
    assert np.abs(full - got).max() > 0.1


def test_truncated_and_quantized_draft_loads_and_passes_check_pair(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    target = fixture_models[0]
    out = tmp_path / "draft-l1-q8.gguf"
    proc = _cli("--from", str(target), "--out", str(out), "--keep-layers", "1", "--type", "q8_0")
    assert proc.returncode == 0, proc.stderr
    assert "1 of 2 layers, q8_0" in proc.stdout
    assert "check-pair against target.gguf: valid" in proc.stdout
    assert "quantizing the 1-layer copy to q8_0" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert out.stat().st_size < 0.3 * target.stat().st_size
    assert check_pair(out, target).valid
    assert _fields(out)["llama.block_count"] == 1
    tokens, got = _logits(out, PROMPT)
    assert np.isfinite(got).all() and got.shape == (len(tokens), 384)


def test_requantized_draft_keeps_all_layers(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    target = fixture_models[0]
    out = tmp_path / "draft-q4.gguf"
    result = make_draft(target, out, qtype="Q4_0", progress=False)
    assert result.kept_layers is None and result.qtype == "q4_0"
    assert result.source_layers == 2 and result.out_bytes < 0.25 * result.source_bytes
    assert check_pair(out, target).valid
    _, got = _logits(out, PROMPT)
    assert np.isfinite(got).all()


def test_per_layer_arrays_are_cut_to_the_kept_layers(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    # A target whose KV head count and FFN width are per-layer arrays (llama.cpp reads either
    # a scalar or one entry per layer).
    u32 = gguf.GGUFValueType.UINT32
    target = rewrite_gguf(
        fixture_models[0],
        tmp_path / "arrays.gguf",
        fields={"llama.attention.head_count_kv": DELETE, "llama.feed_forward_length": DELETE},
        add={
            "llama.attention.head_count_kv": ([2, 2], gguf.GGUFValueType.ARRAY, u32),
            "llama.feed_forward_length": ([256, 256], gguf.GGUFValueType.ARRAY, u32),
        },
    )
    out = tmp_path / "arrays-l1.gguf"
    result = make_draft(target, out, keep_layers=1, progress=False)
    fields = _fields(out)
    assert fields["llama.attention.head_count_kv"] == [2]
    assert fields["llama.feed_forward_length"] == [256]
    assert fields["llama.block_count"] == 1
    assert result.notes == [
        "per-layer array llama.attention.head_count_kv cut to its first 1 entries",
        "per-layer array llama.feed_forward_length cut to its first 1 entries",
    ]
    _, got = _logits(out, PROMPT)
    _, plain = _logits(
        make_draft(fixture_models[0], tmp_path / "l1.gguf", keep_layers=1).out_path, PROMPT
    )
    np.testing.assert_allclose(got, plain, atol=1e-4)


def _tiny_model(path: Path, arch: str, block_count: int) -> Path:
    """A metadata-only GGUF: enough for make-draft to read the architecture and layer count."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(block_count)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("make_input", "args", "message"),
    [
        (lambda tmp, t: t, ["--keep-layers", "2"], "--keep-layers must be between 1 and 1"),
        (lambda tmp, t: t, [], "needs --keep-layers N, --type T, or both"),
        (lambda tmp, t: t, ["--type", "q9_k"], "unknown quantization type 'q9_k'"),
        (lambda tmp, t: tmp / "none.gguf", ["--keep-layers", "1"], "does not exist"),
        (
            lambda tmp, t: _tiny_model(tmp / "g27.gguf", "gemma3", 62),
            ["--keep-layers", "8"],
            "Gemma 3 27B's attention scale from its 62 layers",
        ),
        (
            lambda tmp, t: _tiny_model(tmp / "g3n.gguf", "gemma3n", 30),
            ["--keep-layers", "8"],
            "cannot truncate gemma3n models",
        ),
    ],
    ids=["too-many-layers", "nothing-to-do", "bad-type", "missing", "gemma3-27b", "gemma3n"],
)
def test_bad_input_exits_2_and_leaves_the_output_alone(
    tmp_path: Path,
    fixture_models: tuple[Path, Path],
    make_input: Callable[[Path, Path], Path],
    args: list[str],
    message: str,
) -> None:
    src = make_input(tmp_path, fixture_models[0])
    out = tmp_path / "out.gguf"
    out.write_bytes(b"an older draft")
    proc = _cli("--from", str(src), "--out", str(out), "--no-progress", *args)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("model-export: error:") and message in last, proc.stderr
    assert out.read_bytes() == b"an older draft"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_truncating_to_zero_layers_is_a_usage_error(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    out = tmp_path / "x.gguf"
    proc = _cli("--from", str(fixture_models[0]), "--out", str(out), "--keep-layers", "0")
    assert proc.returncode == 2 and "must be >= 1" in proc.stderr
    with pytest.raises(ExportError, match="between 1 and 1"):
        make_draft(fixture_models[0], out, keep_layers=0)
    assert list(tmp_path.iterdir()) == []


def test_gemma3_layer_pattern_note() -> None:
    # llama.cpp's Gemma 3 pattern: layer i is global iff i % 6 == 5.
    note = layer_types_note("gemma3", 12, 512)
    assert note is not None and note.endswith("global layers kept: 5, 11")
    assert "512-token window" in note
    short = layer_types_note("gemma3", 4, 512)
    assert short is not None and "none of the 4 kept layers is global" in short
    assert "only the last 512 tokens" in short and "keep 6 or more layers" in short
    assert layer_types_note("llama", 4, None) is None
