"""End to end: the draft on the device, a real ``edge-server`` process, real sockets.

Greedy outputs are compared with llama-cpp-python's own greedy decoding of the target (or the
draft), computed in the test through the library's high-level ``Llama`` class.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _edge import EdgeProc, KillEdgeAfter, Reference, SeedRecorder, edge_server
from _stats import P_REJECT, chi2_pvalue

from ondevice.common.llama_runtime import LlamaConfig
from ondevice.common.speculative import softmax
from ondevice.llm.generate import GenerateRequest, generate
from ondevice.llm.policies import DeviceOnlyPolicy, EdgeOnlyPolicy, FixedPolicy

PROMPTS = ["Hello world", "The quick brown fox jumps", "In the beginning there was"]
N_TOKENS = 40
SMALL = LlamaConfig(n_ctx=512, n_threads=1)


@pytest.fixture(scope="module")
def target_ref(fixture_models: tuple[Path, Path]) -> Reference:
    ref = Reference(fixture_models[0])
    yield ref
    ref.close()


@pytest.fixture(scope="module")
def draft_ref(fixture_models: tuple[Path, Path]) -> Reference:
    ref = Reference(fixture_models[1])
    yield ref
    ref.close()


async def _gen(draft: Path, url: str | None, policy, prompt: str, **kw) -> object:  # type: ignore[no-untyped-def]
    timeout = kw.pop("edge_timeout_s", 15.0)
    req = GenerateRequest(prompt=prompt, max_tokens=kw.pop("max_tokens", N_TOKENS), **kw)
    return await generate(str(draft), req, policy, edge_url=url, llama_config=SMALL,
                          edge_timeout_s=timeout)


@pytest.mark.parametrize("gamma", [1, 3, 8])
async def test_fixed_gamma_greedy_equals_target(
    gamma: int, fixture_models: tuple[Path, Path], edge: EdgeProc, target_ref: Reference
) -> None:
    for prompt in PROMPTS:
        report = await _gen(fixture_models[1], edge.url, FixedPolicy(gamma), prompt)
        assert report.tokens == target_ref.greedy(prompt, N_TOKENS), prompt
        assert not report.degraded
        assert report.edge == edge.url
        assert report.rounds >= 1 and report.drafted >= report.accepted
        assert report.mean_drafted <= gamma
        assert report.energy_source == "modelled" and report.energy_j > 0


async def test_edge_only_greedy_equals_target(
    fixture_models: tuple[Path, Path], edge: EdgeProc, target_ref: Reference
) -> None:
    for prompt in PROMPTS:
        report = await _gen(fixture_models[1], edge.url, EdgeOnlyPolicy(), prompt)
        assert report.tokens == target_ref.greedy(prompt, N_TOKENS), prompt
        assert report.rounds == 0 and not report.degraded


async def test_device_only_greedy_equals_draft(
    fixture_models: tuple[Path, Path], draft_ref: Reference
) -> None:
    for prompt in PROMPTS:
        report = await _gen(fixture_models[1], None, DeviceOnlyPolicy(), prompt)
        assert report.tokens == draft_ref.greedy(prompt, N_TOKENS), prompt
        assert report.edge is None


async def test_acceptance_is_partial(fixture_models: tuple[Path, Path], edge: EdgeProc) -> None:
    """The fixture pair disagrees sometimes, so rounds with rejections (rollbacks) happen."""
    report = await _gen(fixture_models[1], edge.url, FixedPolicy(4), PROMPTS[0], max_tokens=64)
    assert 0.0 < report.acceptance < 1.0


async def test_seeded_sampling_is_reproducible(
    fixture_models: tuple[Path, Path], edge: EdgeProc
) -> None:
    runs = [
        await _gen(fixture_models[1], edge.url, FixedPolicy(3), PROMPTS[1], temperature=1.0,
                   seed=s, max_tokens=24)
        for s in (5, 5, 6)
    ]
    assert runs[0].tokens == runs[1].tokens
    assert runs[0].tokens != runs[2].tokens


async def test_sampling_follows_target_distribution(
    fixture_models: tuple[Path, Path], target_ref: Reference
) -> None:
    """Temperature 1: over many seeds, the first token follows the target's next-token law,
    and the second token, given the most frequent first token, follows the target's
    conditional law. Chi-square, rejected at p < 1e-4 (see test_speculative)."""
    prompt = PROMPTS[2]
    ids = target_ref.tokenize(prompt)
    p1 = softmax(target_ref.next_logits(ids), 1.0)
    rec = SeedRecorder(fixture_models[1], SMALL)
    try:
        with edge_server(fixture_models[0], "--n-ctx", "128") as e:
            outs = await rec.tokens(e.url, prompt, FixedPolicy(3), range(1500), 4)
    finally:
        rec.close()
    first = np.bincount([o[0] for o in outs], minlength=p1.shape[0]).astype(float)
    assert chi2_pvalue(first, p1) > P_REJECT
    top = int(np.argmax(first))
    p2 = softmax(target_ref.next_logits(ids + [top]), 1.0)
    second = np.bincount([o[1] for o in outs if o[0] == top and len(o) > 1],
                         minlength=p2.shape[0])
    assert second.sum() >= 100, "the fixture's first-token law is too flat for this test"
    assert chi2_pvalue(second.astype(float), p2) > P_REJECT




async def test_edge_killed_mid_generation_degrades_without_losing_tokens(
    fixture_models: tuple[Path, Path], target_ref: Reference, draft_ref: Reference
) -> None:
    target, draft = fixture_models
    n = 60
    with edge_server(target) as e:
        policy = KillEdgeAfter(3, e, rounds=4)
        report = await _gen(draft, e.url, policy, PROMPTS[0], max_tokens=n, edge_timeout_s=5.0)
        assert e.proc.poll() is not None, "the edge should be dead"
    assert report.degraded and report.errors
    assert report.n_tokens == n
    k = report.degraded_at_token
    assert 4 <= k < n  # four rounds each produced at least one token
    assert report.tokens[:k] == target_ref.greedy(PROMPTS[0], n)[:k]
    prefix = draft_ref.tokenize(PROMPTS[0]) + report.tokens[:k]
    assert report.tokens[k:] == draft_ref.greedy(prefix, n - k)


async def test_unreachable_edge_degrades_from_the_start(
    fixture_models: tuple[Path, Path], draft_ref: Reference
) -> None:
    report = await _gen(fixture_models[1], "http://127.0.0.1:9", FixedPolicy(3), PROMPTS[1],
                        max_tokens=12)
    assert report.degraded and report.degraded_at_token == 0
    assert report.tokens == draft_ref.greedy(PROMPTS[1], 12)


def test_cli_generate_json(fixture_models: tuple[Path, Path], edge: EdgeProc,
                           target_ref: Reference) -> None:
    draft = fixture_models[1]
    cmd = [
        sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(draft),
        "--edge", edge.url, "--no-discover", "--prompt", PROMPTS[0], "--max-tokens", "20",
        "--temperature", "0",
        "--seed", "1", "--policy", "fixed", "--gamma", "3", "--json", "--n-ctx", "512",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("text", "tokens", "tokens_per_s", "acceptance", "rounds", "policy", "edge",
                "degraded", "energy_j", "energy_source"):
        assert key in data
    assert data["tokens"] == target_ref.greedy(PROMPTS[0], 20)
    assert data["policy"] == "fixed" and data["edge"] == edge.url
    assert data["energy_source"] == "modelled"


def test_cli_reports_vocab_mismatch(fixture_models: tuple[Path, Path], gemma_path: Path) -> None:
    """A draft whose vocabulary differs from the target's is refused, naming both models."""
    with edge_server(gemma_path, "--n-ctx", "256") as e:
        done = subprocess.run(
            [sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(fixture_models[1]),
             "--edge", e.url, "--no-discover", "--prompt", "hi", "--max-tokens", "4",
             "--n-ctx", "256"],
            capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 1
    assert "vocab-mismatch" in done.stderr
    assert fixture_models[1].name in done.stderr and gemma_path.name in done.stderr


def test_cli_rejects_bad_arguments(fixture_models: tuple[Path, Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "generate", "--draft", "/nonexistent.gguf",
         "--prompt", "x", "--policy", "device-only", "--no-discover"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1 and "does not exist" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(fixture_models[1]),
         "--prompt", "x", "--policy", "nonsense"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "invalid choice" in done.stderr


async def test_generation_does_not_block_the_loop(
    fixture_models: tuple[Path, Path], edge: EdgeProc
) -> None:
    """llama.cpp runs in a worker thread: a ticker on the loop keeps ticking during a run."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    report = await _gen(fixture_models[1], edge.url, FixedPolicy(4), PROMPTS[0], max_tokens=48)
    stop.set()
    await task
    assert ticks >= report.elapsed_s / 0.005 * 0.3
