"""Issue 12: lossless per session whatever batch it rides in. Eight concurrent sessions of mixed
policies (fixed 1/4/8, edge-only, gelato; one short, one cancelled mid-way) against one batching
edge each produce exactly the tokens they produce alone (temperature 0, f32 KV)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from _edge import edge_server

from ondevice.common.llama_runtime import LlamaConfig
from ondevice.llm.generate import GenerateRequest, generate
from ondevice.llm.policies import EdgeOnlyPolicy, FixedPolicy, GelatoPolicy, Policy

PROMPTS = ["Hello world", "The quick brown fox jumps over", "Once", "In the beginning there was",
           "one two three four five six", "a b c", "Dear", "To install the package, run"]
SMALL = LlamaConfig(n_ctx=512, n_threads=1)


def _policy(i: int) -> Policy:
    return [FixedPolicy(1), FixedPolicy(4), FixedPolicy(8), EdgeOnlyPolicy(), GelatoPolicy()][i % 5]


async def test_eight_concurrent_sessions_equal_each_alone(
        fixture_models: tuple[Path, Path]) -> None:
    target, draft = fixture_models

    async def run(url: str, i: int) -> list[int]:
        n = 10 if i == 5 else 60  # session 5 closes early, mid-way through the others
        r = await generate(str(draft), GenerateRequest(prompt=PROMPTS[i], max_tokens=n),
                           _policy(i), edge_url=url, llama_config=SMALL)
        assert not r.degraded, r.degraded_reason
        return r.tokens

    with edge_server(target, "--kv-type", "f32", "--n-ctx", "512", "--max-sessions", "9",
                     "--max-sessions-per-client", "9") as e:
        alone = [await run(e.url, i) for i in range(8)]
        killed = asyncio.create_task(run(e.url, 0))  # a ninth session, cancelled mid-way
        together = asyncio.gather(*(run(e.url, i) for i in range(8)))
        await asyncio.sleep(0.5)
        killed.cancel()
        results = await together
        assert "Traceback" not in e.log()
    for i, (a, b) in enumerate(zip(alone, results, strict=True)):
        assert a == b, f"session {i} ({_policy(i).name}) differs at token " + str(
            next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), "end"))
