"""One seed range on every path a user passes a seed: ``ondevice generate --seed``,
``Device.stream(seed=...)`` and the ``seed`` of ``ondevice serve``'s API refuse the same
out-of-range seeds with the same message and take ``MAX_SEED``, which a real edge then
verifies with; the edge's ``open`` frame carries the wire's wider range (a resumed session's
seed is the user's plus the tokens so far). Real processes and sockets throughout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from _edge import EdgeProc
from _serve import post_completion, serve

from ondevice.common import wire
from ondevice.common.llama_runtime import LlamaModel
from ondevice.common.seed import MAX_SEED, WIRE_MAX_SEED, seed_problem
from ondevice.llm.device import Device

OUT_OF_RANGE = (-1, MAX_SEED + 1)
REFUSAL = "seed must be an integer in 0..2**63-1"
DEVICE_FLAGS = ("--n-ctx", "512", "--threads", "1", "--policy", "fixed")


def test_seed_problem_names_the_range_and_the_value() -> None:
    assert seed_problem(0) is None and seed_problem(MAX_SEED) is None
    for bad in (*OUT_OF_RANGE, True, 1.0, "7"):
        assert seed_problem(bad) == f"{REFUSAL}, got {bad!r}"
    assert seed_problem(WIRE_MAX_SEED, WIRE_MAX_SEED) is None
    assert seed_problem(WIRE_MAX_SEED + 1, WIRE_MAX_SEED) == (
        f"seed must be an integer in 0..2**64-1, got {WIRE_MAX_SEED + 1}")


# -- ondevice generate --seed ---------------------------------------------------------------

def generate(draft: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ondevice.cli", "generate", "--draft",
                           str(draft), "--prompt", "seeds", *DEVICE_FLAGS, *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("seed", OUT_OF_RANGE)
def test_cli_refuses_a_seed_out_of_range(fixture_models: tuple[Path, Path], seed: int) -> None:
    done = generate(fixture_models[1], "--no-discover", "--seed", str(seed))
    assert done.returncode == 2, done.stderr
    assert "--seed" in done.stderr and f"{REFUSAL}, got {seed}" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_takes_the_largest_seed(fixture_models: tuple[Path, Path], edge: EdgeProc) -> None:
    done = generate(fixture_models[1], "--no-discover", "--edge", edge.url, "--seed",
                    str(MAX_SEED), "--temperature", "1", "--max-tokens", "8", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["seed"] == MAX_SEED and not report["degraded"], report


# -- Device.stream(seed=...) -----------------------------------------------------------------

async def test_device_refuses_out_of_range_and_takes_the_largest_seed(
        fixture_models: tuple[Path, Path], edge: EdgeProc) -> None:
    async with Device(fixture_models[1], edge=edge.url) as dev:
        for seed in OUT_OF_RANGE:
            with pytest.raises(ValueError) as err:
                await dev.complete("seeds", max_tokens=4, seed=seed)
            assert str(err.value) == f"{REFUSAL}, got {seed}"
        report = await dev.complete("seeds", max_tokens=8, temperature=1.0, seed=MAX_SEED)
    assert report.seed == MAX_SEED and not report.degraded, report.errors


# -- ondevice serve: the OpenAI-compatible seed ----------------------------------------------

def complete_with_seed(url: str, seed: int) -> tuple[int, dict]:
    status, raw = post_completion(url, {"model": "draft", "prompt": "seeds", "max_tokens": 8,
                                        "temperature": 1.0, "seed": seed}, timeout_s=60)
    return status, json.loads(raw)


def test_serve_refuses_out_of_range_and_takes_the_largest_seed(
        fixture_models: tuple[Path, Path], edge: EdgeProc) -> None:
    with serve(fixture_models[1], *DEVICE_FLAGS, edge=edge.url) as s:
        for seed in OUT_OF_RANGE:
            status, body = complete_with_seed(s.url, seed)
            assert status == 400, body
            assert body["error"]["param"] == "seed"
            assert body["error"]["message"] == f"{REFUSAL}, got {seed}"
        status, body = complete_with_seed(s.url, MAX_SEED)
    assert status == 200, body
    assert body["coinfer"]["seed"] == MAX_SEED and not body["coinfer"]["degraded"], body


# -- the edge's open frame: the wire's range --------------------------------------------------

async def test_edge_open_takes_a_resumed_seed_and_refuses_a_negative_one(
        fixture_models: tuple[Path, Path], edge: EdgeProc) -> None:
    """A session resumed after ``n`` tokens opens with the user's seed + n: above MAX_SEED,
    within the wire's range. A negative seed is refused ``bad-frame`` naming the range."""
    with LlamaModel(fixture_models[1]) as m:
        vocab = m.vocab_hash()

    def open_frame(seed: int) -> wire.Open:
        return wire.Open(np.array([1, 2, 3], np.int32), vocab, "draft.gguf", 1.0, seed, 4)

    ws_url = edge.url.replace("http://", "ws://") + wire.WS_PATH
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        for seed, ok in ((-1, False), (MAX_SEED, True), (MAX_SEED + 1000, True)):
            await ws.send_bytes(wire.encode(open_frame(seed)))
            reply = wire.decode((await ws.receive(timeout=30)).data)
            if ok:
                assert isinstance(reply, wire.Opened), (seed, reply)
            else:
                assert isinstance(reply, wire.Error) and reply.code == "bad-frame", reply
                assert reply.message == f"seed must be an integer in 0..2**64-1, got {seed}"
