"""`model-export llm quantize --preset BOARD`: per-board type and the runtime sidecar."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from export import ExportError
from export._presets import PRESETS, build_sidecar, quantize_for_board
from ondevice.common.model_sidecar import SCHEMA, SidecarError, load_sidecar, sidecar_path

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: pip install 'coinfer[llm]'")
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "export", "llm", "quantize", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_every_preset_names_a_type_and_a_source_per_choice() -> None:
    assert set(PRESETS) == {"rpi4", "rpi5", "jetson-orin", "jetson-nano", "x86"}
    for name, p in PRESETS.items():
        assert p.name == name
        assert set(p.sources) == {"type", "n_threads", "n_gpu_layers", "n_ctx"}
        assert all(len(reason) > 3 for reason in p.sources.values())
    # ARM boards without a usable GPU: Q4_0 (repacked for dotprod cores); CUDA offload: k-quant.
    assert PRESETS["rpi5"].qtype == "q4_0" and PRESETS["rpi5"].n_gpu_layers == 0
    assert PRESETS["jetson-orin"].qtype == "q4_k_m" and PRESETS["jetson-orin"].n_gpu_layers == -1


@pytest.mark.parametrize("board", ["rpi5", "jetson-orin"])
def test_preset_writes_a_sidecar_that_load_sidecar_reads(
    tmp_path: Path, fixture_models: tuple[Path, Path], board: str
) -> None:
    draft = fixture_models[1]
    out = tmp_path / f"draft-{board}.gguf"
    result = quantize_for_board(draft, out, board, nthread=1, progress=False)
    preset = PRESETS[board]
    assert result.quantize.qtype == preset.qtype
    assert result.sidecar_path == sidecar_path(out) == tmp_path / f"draft-{board}.gguf.json"
    side = load_sidecar(out, verify_sha256=True)
    assert side is not None
    assert side["schema"] == SCHEMA and side["preset"] == board and side["type"] == preset.qtype
    assert side["model"] == out.name and side["size_bytes"] == out.stat().st_size
    assert side["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    # The fixture was trained for 2048 tokens: the preset's 4096 is capped, and says why.
    assert preset.n_ctx == 4096
    assert side["runtime"] == {
        "n_threads": preset.n_threads,
        "n_gpu_layers": preset.n_gpu_layers,
        "n_ctx": 2048,
    }
    assert set(side["sources"]) == {"type", "n_threads", "n_gpu_layers", "n_ctx"}
    assert side["sources"]["n_ctx"] == ("2048: the model's trained context length (preset: 4096)")
    assert side["sources"]["type"] == preset.sources["type"]
    # The quantized file runs with the recommended settings.
    rt = side["runtime"]
    with LlamaModel(out) as model:
        cfg = LlamaConfig(n_ctx=rt["n_ctx"], n_threads=1)
        with LlamaRunner(model, cfg) as runner:
            assert runner.eval(model.tokenize("The river"), 1).shape == (1, 384)


def test_sidecar_is_deterministic_and_type_override_is_recorded(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    draft = fixture_models[1]
    a = quantize_for_board(draft, tmp_path / "a.gguf", "rpi4", qtype="Q8_0", progress=False)
    b = quantize_for_board(draft, tmp_path / "b.gguf", "rpi4", qtype="q8_0", progress=False)
    assert a.sidecar["type"] == "q8_0"
    assert a.sidecar["sources"]["type"] == "--type q8_0 (overrides the preset's q4_0)"
    assert a.sidecar["created_by"] == "model-export llm quantize --preset rpi4 --type q8_0"
    # Same input, preset and type: same bytes, apart from the file name it describes.
    text_a = a.sidecar_path.read_text().replace('"a.gguf"', '"X"')
    text_b = b.sidecar_path.read_text().replace('"b.gguf"', '"X"')
    assert text_a == text_b
    assert json.loads(text_a)["runtime"]["n_ctx"] == 2048


def test_build_sidecar_keeps_the_presets_context_when_the_model_allows() -> None:
    here = Path(__file__)
    side = build_sidecar(
        PRESETS["rpi5"], here, qtype="q4_0", type_overridden=False, n_ctx_train=32768,
        sha256="0" * 64,
    )  # fmt: skip
    assert side["runtime"] == {"n_threads": 4, "n_gpu_layers": 0, "n_ctx": 4096}
    assert side["sources"] == PRESETS["rpi5"].sources
    assert side["size_bytes"] == here.stat().st_size


def test_cli_preset_summary_and_errors(tmp_path: Path, fixture_models: tuple[Path, Path]) -> None:
    draft = fixture_models[1]
    out = tmp_path / "d.gguf"
    proc = _cli("--in", str(draft), "--preset", "x86", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "q4_k_m" in proc.stdout
    assert "preset x86: n_threads all, n_gpu_layers 0, n_ctx 2048" in proc.stdout
    assert load_sidecar(out)["runtime"]["n_threads"] is None  # type: ignore[index]
    # Re-quantizing without a preset removes the sidecar that described the old file.
    proc = _cli("--in", str(draft), "--type", "q8_0", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert f"removed {sidecar_path(out)}" in proc.stdout
    assert load_sidecar(out) is None

    for args, message in [
        (["--preset", "rpi9"], "unknown preset 'rpi9'; valid: rpi4, rpi5, jetson-orin"),
        ([], "needs --type TYPE or --preset BOARD"),
        (["--preset", "rpi5", "--type", "q7"], "unknown quantization type 'q7'"),
    ]:
        bad = tmp_path / "bad.gguf"
        proc = _cli("--in", str(draft), "--out", str(bad), "--no-progress", *args)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr
        assert not bad.exists() and not sidecar_path(bad).exists()
    with pytest.raises(ExportError, match="unknown preset"):
        quantize_for_board(draft, tmp_path / "c.gguf", "pi")


def test_load_sidecar_rejects_a_sidecar_of_another_file(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    draft = fixture_models[1]
    out = tmp_path / "d.gguf"
    quantize_for_board(draft, out, "rpi5", progress=False)
    data = out.read_bytes()
    # Same size, one byte changed: only the hash can tell, and only when asked.
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    out.write_bytes(bytes(flipped))
    assert load_sidecar(out) is not None
    with pytest.raises(SidecarError, match="records sha256"):
        load_sidecar(out, verify_sha256=True)
    # Another size: caught on every load, without hashing.
    out.write_bytes(data[:-32])
    with pytest.raises(SidecarError, match="belongs to another model"):
        load_sidecar(out)
