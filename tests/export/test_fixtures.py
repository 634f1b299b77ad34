"""The tiny GGUF fixtures: deterministic, loadable, one vocabulary, the promised behaviour.

Acceptance, entropy and the batch/sequential check are measured with llama-cpp-python itself,
the runtime the speculative pipeline uses; the weights' meaning is checked against a naive
numpy forward pass (llama_reference.py).
"""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from llama_reference import forward, read_gguf_tensors

from export import _bpe
from export._fixtures import BOS_ID, EOS_ID, VOCAB_SIZE, build_vocab, write_fixtures

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="needs llama-cpp-python: pip install 'coinfer[llm]'")

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [
    "The river",
    "A computer does",
    "In the morning",
    "She opened the",
    "We measured the power",
    "Good tools",
]
N_GEN = 64
GGML_TYPE_F32 = 0  # ggml.h enum ggml_type


def _llama(path: Path, **kwargs: object) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=512, n_threads=1, verbose=False, logits_all=True, **kwargs
    )


@pytest.fixture(scope="module")
def target(fixture_models: tuple[Path, Path]) -> Iterator[llama_cpp.Llama]:
    model = _llama(fixture_models[0])
    yield model
    model.close()


@pytest.fixture(scope="module")
def draft(fixture_models: tuple[Path, Path]) -> Iterator[llama_cpp.Llama]:
    model = _llama(fixture_models[1])
    yield model
    model.close()


def _greedy(model: llama_cpp.Llama, prompt_ids: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """Greedy continuation (one token per eval) and the logits that chose each token [n, V]."""
    model.reset()
    model.eval(prompt_ids)
    out: list[int] = []
    for _ in range(n):
        nxt = int(np.argmax(model.scores[model.n_tokens - 1]))
        out.append(nxt)
        model.eval([nxt])
    start = len(prompt_ids) - 1
    return out, np.array(model.scores[start : start + n])


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))  # [n, V]
    return z / z.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def greedy_runs(
    target: llama_cpp.Llama, draft: llama_cpp.Llama
) -> dict[str, tuple[list[int], np.ndarray, np.ndarray]]:
    """Per prompt: the target's greedy tokens, its logits [N_GEN, V] and the draft's logits on
    the same contexts [N_GEN, V]."""
    runs = {}
    for prompt in PROMPTS:
        ids = target.tokenize(prompt.encode())
        gen, target_logits = _greedy(target, ids, N_GEN)
        draft.reset()
        draft.eval(ids + gen)
        start = len(ids) - 1
        runs[prompt] = (gen, target_logits, np.array(draft.scores[start : start + N_GEN]))
    return runs


def test_same_seed_gives_identical_bytes(tmp_path: Path, fixture_models: tuple[Path, Path]) -> None:
    start = time.perf_counter()
    again = write_fixtures(tmp_path / "again", seed=0)
    seconds = time.perf_counter() - start
    for first, second in zip(fixture_models, again, strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name
    assert seconds < 10.0, f"writing the fixtures took {seconds:.1f} s"


def test_different_seed_gives_different_models(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    other = write_fixtures(tmp_path, seed=1)
    for first, second in zip(fixture_models, other, strict=True):
        assert first.read_bytes() != second.read_bytes(), first.name


def test_cli_writes_the_same_files(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "export",
        "fixtures",
        "--out",
        str(tmp_path / "cli"),
        "--seed",
        "7",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    api = write_fixtures(tmp_path / "api", seed=7)
    for path in api:
        assert (tmp_path / "cli" / path.name).read_bytes() == path.read_bytes()
    assert "target.gguf" in proc.stdout and "draft.gguf" in proc.stdout


def test_cli_output_path_that_is_a_file_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cmd = [sys.executable, "-m", "export", "fixtures", "--out", str(blocker / "sub")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("model-export: error: cannot create output directory")


def test_size_and_metadata(
    fixture_models: tuple[Path, Path], target: llama_cpp.Llama, draft: llama_cpp.Llama
) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for path in fixture_models:
        assert path.stat().st_size < 4 * 1024 * 1024
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    for model in (target, draft):
        assert model.n_vocab() == VOCAB_SIZE
        assert (model.token_bos(), model.token_eos()) == (BOS_ID, EOS_ID)
        assert model._model.n_ctx_train() >= 2048
        assert model.metadata["general.architecture"] == "llama"
        assert model.metadata["tokenizer.ggml.model"] == "gpt2"
    assert int(target.metadata["llama.block_count"]) == 2
    assert int(draft.metadata["llama.block_count"]) == 1


def test_one_shared_vocabulary(fixture_models: tuple[Path, Path]) -> None:
    import gguf

    fields = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
    values = []
    for path in fixture_models:
        reader = gguf.GGUFReader(str(path))
        values.append([reader.fields[name].contents() for name in fields])
    assert values[0] == values[1]
    tokens, merges, _ = values[0]
    assert len(tokens) == VOCAB_SIZE and len(merges) > 0


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! The river runs 42 times.",
        "  two spaces,\ttab, new\nline; it's done's.",
        "energy per token (J/token): 0.25",
    ],
)
def test_tokenize_round_trip(target: llama_cpp.Llama, draft: llama_cpp.Llama, text: str) -> None:
    ids = target.tokenize(text.encode(), add_bos=False)
    assert draft.tokenize(text.encode(), add_bos=False) == ids
    assert target.detokenize(ids) == text.encode()
    assert target.tokenize(text.encode())[0] == BOS_ID
    # llama.cpp's GPT-2 pre-tokenizer and the BPE the vocabulary was trained with agree.
    vocab, _ = build_vocab()
    merges = [tuple(m.split(" ")) for m in vocab.merges]
    assert _bpe.encode(text, merges, {t: i for i, t in enumerate(vocab.tokens)}) == ids
    assert len(ids) < len(text.encode())  # merges fire


def test_llama_cpp_computes_the_reference_forward(
    fixture_models: tuple[Path, Path], target: llama_cpp.Llama, draft: llama_cpp.Llama
) -> None:
    ids = target.tokenize(b"The old clock in the hall stopped at ten past four.")
    for path, model, n_layer in ((fixture_models[0], target, 2), (fixture_models[1], draft, 1)):
        model.reset()
        model.eval(ids)
        got = np.array(model.scores[: len(ids)])  # [n, V]
        want, _ = forward(read_gguf_tensors(path), ids, n_layer=n_layer, n_head=4, n_head_kv=2)
        assert np.abs(got - want).max() < 1e-2 * np.abs(want).max()
        assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


def test_positional_heads_look_one_and_two_tokens_back(fixture_models: tuple[Path, Path]) -> None:
    tensors = read_gguf_tensors(fixture_models[0])
    ids = [BOS_ID, *range(97, 123), *range(65, 91)]  # 53 distinct tokens
    _, probs = forward(tensors, ids, n_layer=2, n_head=4, n_head_kv=2)
    layer0 = probs[0]  # [heads, query, key]
    for head, shift in ((0, 1), (1, 2)):
        queries = np.arange(shift, len(ids))
        weight = layer0[head, queries, queries - shift]
        assert (layer0[head, queries].argmax(axis=1) == queries - shift).all()
        assert weight.mean() > 0.4, (head, weight.mean())


def test_greedy_decoding_is_varied(
    greedy_runs: dict[str, tuple[list[int], np.ndarray, np.ndarray]],
) -> None:
    for prompt, (gen, _, _) in greedy_runs.items():
        assert len(set(gen)) >= 12, (prompt, gen)
        longest_run = max(len(list(g)) for _, g in itertools.groupby(gen))
        assert longest_run <= 4, (prompt, gen)
        assert EOS_ID not in gen and BOS_ID not in gen


def test_draft_greedy_acceptance_between_03_and_09(
    greedy_runs: dict[str, tuple[list[int], np.ndarray, np.ndarray]],
) -> None:
    rates = {
        prompt: float(np.mean(t.argmax(axis=1) == d.argmax(axis=1)))
        for prompt, (_, t, d) in greedy_runs.items()
    }
    mean = float(np.mean(list(rates.values())))
    print(f"greedy acceptance per prompt {rates}, mean {mean:.3f}")
    assert 0.3 <= mean <= 0.9, rates
    assert all(0.2 <= r <= 0.95 for r in rates.values()), rates


def test_sampling_distribution_is_spread_and_eos_rare(
    greedy_runs: dict[str, tuple[list[int], np.ndarray, np.ndarray]],
) -> None:
    logits = np.concatenate([t for _, t, _ in greedy_runs.values()])  # [positions, V]
    p = _softmax(logits)
    entropy = -(p * np.log(np.maximum(p, 1e-30))).sum(axis=1)  # [positions]
    print(f"mean entropy at T=1: {entropy.mean():.2f} nats, mean max prob {p.max(1).mean():.2f}")
    assert 1.5 <= entropy.mean() <= 5.0
    assert p.max(axis=1).mean() < 0.7
    # EOS: reachable (> 0) but rare, so a 64-token sample usually runs to length.
    p_eos = p[:, EOS_ID].mean()
    assert 1e-5 < p_eos < 5e-3, p_eos
    assert p[:, BOS_ID].max() < 1e-4


@pytest.mark.parametrize("kv_f32", [False, True], ids=["kv-f16", "kv-f32"])
def test_batch_equals_sequential(fixture_models: tuple[Path, Path], kv_f32: bool) -> None:
    """One batched eval gives the same argmax as token-by-token evals; with an F32 KV cache the
    logits agree to float32 rounding (the default F16 cache rounds K/V differently)."""
    kwargs = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if kv_f32 else {}
    text = b"The river runs through the middle of the city. In spring it is fast and brown"
    for path in fixture_models:
        model = _llama(path, **kwargs)
        try:
            ids = model.tokenize(text)
            model.eval(ids)
            batch = np.array(model.scores[: len(ids)])  # [n, V]
            model.reset()
            for token in ids:
                model.eval([token])
            sequential = np.array(model.scores[: len(ids)])  # [n, V]
        finally:
            model.close()
        diff = float(np.abs(batch - sequential).max())
        print(f"{path.name} kv_f32={kv_f32}: max |batch - sequential| = {diff:.2e}")
        assert (batch.argmax(axis=1) == sequential.argmax(axis=1)).all()
        assert diff < (1e-4 if kv_f32 else 2e-3)
