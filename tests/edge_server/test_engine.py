"""The edge's engine (KV rollback per sequence, batching, fairness, a full pool) and the
device's draft rollback: after a round with rejections, caches equal a fresh evaluation."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edge_server._engine import Engine
from edge_server._llama_pool import LlamaPool, Part
from ondevice.common import wire
from ondevice.common.llama_runtime import LlamaConfig, LlamaError, LlamaModel, LlamaRunner
from ondevice.llm.draft import DraftStream

CFG = LlamaConfig(n_ctx=256, n_threads=1)
F32 = LlamaConfig(n_ctx=256, n_threads=1, kv_type="f32")


@pytest.fixture(scope="module")
def target(fixture_models: tuple[Path, Path]) -> LlamaModel:
    with LlamaModel(fixture_models[0]) as m:
        yield m


def _fresh_logits(model: LlamaModel, seq: list[int]) -> np.ndarray:
    with LlamaRunner(model, CFG) as r:
        return np.array(r.eval(seq, 1)[0])


def _round(draft: list[int]) -> wire.Round:
    ids = np.array(draft, np.int32)
    return wire.Round("s", ids, ids[:, None].copy(), np.ones((len(draft), 1), np.float32))


async def test_target_rollback_after_rejection(target: LlamaModel) -> None:
    prompt = target.tokenize("rollback check")
    with LlamaPool(target, n_seq=2, kv_tokens=256, config=F32) as pool:
        async with Engine(pool, ThreadPoolExecutor(1)) as engine:
            session = engine.open(prompt, temperature=0.0, seed=0, n_ctx=256)
            await session.async_prefill()
            first = int(np.argmax(_fresh_logits(target, prompt)))
            wrong = (first + 1) % target.n_vocab
            # Draft: the right token, then a wrong one, then two more that must be rolled back.
            accepted, token, step = await session.async_verify(_round([first, wrong, 3, 4]))
            assert accepted == 1 and step.batch == 5  # one pending prompt token + 4 drafted
            assert session.committed == [*prompt, first, token]
            assert pool.lengths[session.seq] == len(prompt) + 1  # rejected positions removed
            logits = np.array(pool.step([Part(session.seq, [token], 1)])[0][0])
            np.testing.assert_allclose(logits, _fresh_logits(target, session.committed),
                                       rtol=1e-4, atol=1e-4)
            await engine.async_close(session)
            assert pool.lengths[session.seq] == 0


def test_draft_rollback_after_rejection(target: LlamaModel) -> None:
    prompt = target.tokenize("draft side")
    with LlamaRunner(target, CFG) as runner:
        stream = DraftStream(runner, prompt, temperature=0.0, top_k=4, seed=0)
        d = stream.draft(6, lambda j, h: True, want_entropy=False, is_eog=lambda t: False)
        assert d.ids.shape == (6,)
        assert len(runner.tokens) == len(prompt) + 5  # the last drafted token is not evaluated
        fix = (int(d.ids[2]) + 1) % target.n_vocab
        stream.commit([*d.ids[:2].tolist(), fix])  # two accepted, then the edge's token
        logits = stream._sync()
        assert runner.tokens == stream.seq
        np.testing.assert_allclose(np.array(logits), _fresh_logits(target, stream.seq),
                                   rtol=1e-5, atol=1e-5)


def test_eval_refuses_out_of_range_and_overflow(target: LlamaModel) -> None:
    with LlamaRunner(target, LlamaConfig(n_ctx=32, n_threads=1)) as r:
        with pytest.raises(LlamaError, match="outside the vocabulary"):
            r.eval([target.n_vocab])
        with pytest.raises(LlamaError, match="context full"):
            r.eval([1] * (r.n_ctx + 1))
        assert r.tokens == []
        r.eval([1, 2, 3], 3)
        assert r.n_past == 3


async def test_batched_steps_serve_every_session_as_alone(target: LlamaModel) -> None:
    """Four sessions verifying concurrently: their rounds share decodes (batch > one round's
    tokens), and every verdict is the one the session gets alone (serial scheduler)."""
    prompts = [target.tokenize(p) for p in ("alpha beta", "one two three", "x", "hello there")]

    async def run(scheduler: str) -> tuple[list[list[int]], float]:
        with LlamaPool(target, n_seq=4, kv_tokens=512, config=F32) as pool:
            async with Engine(pool, ThreadPoolExecutor(1), scheduler=scheduler) as engine:
                sessions = [engine.open(p, temperature=0.0, seed=i, n_ctx=256)
                            for i, p in enumerate(prompts)]
                await asyncio.gather(*(s.async_prefill() for s in sessions))
                batches: list[int] = []

                async def drive(s: object) -> None:
                    for _ in range(6):  # draft the committed tail's argmax-free filler
                        _, _, step = await s.async_verify(_round([5, 6, 7]))  # type: ignore
                        batches.append(step.batch)

                await asyncio.gather(*(drive(s) for s in sessions))
                return [s.committed for s in sessions], float(np.mean(batches))

    batched, mean_batch = await run("batched")
    serial, serial_batch = await run("serial")
    assert batched == serial
    assert serial_batch <= 4 and mean_batch > 4  # one round alone is 3 drafted + 1 pending


async def test_edge_only_streams_ride_in_every_step_together(target: LlamaModel) -> None:
    """Five edge-only streams, each asking its next token as soon as it has sent the last (a
    frame write between, as the server does, some quicker than others): after the first step
    every step carries all five, with no batch window; the serial scheduler carries one."""

    async def run(scheduler: str) -> list[int]:
        with LlamaPool(target, n_seq=5, kv_tokens=512, config=CFG) as pool:
            async with Engine(pool, ThreadPoolExecutor(1), scheduler=scheduler) as engine:
                sessions = [engine.open(target.tokenize(f"stream {i}"), temperature=0.0,
                                        seed=i, n_ctx=256) for i in range(5)]
                await asyncio.gather(*(s.async_prefill() for s in sessions))
                batches: list[int] = []

                async def stream(i: int, s: object) -> None:
                    for _ in range(12):
                        _, step = await s.async_generate_one()  # type: ignore[attr-defined]
                        batches.append(step.batch)
                        for _ in range(1 + i):  # the frame to the device, quicker for some
                            await asyncio.sleep(0)

                await asyncio.gather(*(stream(i, s) for i, s in enumerate(sessions)))
                return batches

    batched = await run("batched")
    assert batched[5:].count(5) >= len(batched[5:]) - 5, batched
    assert set(await run("serial")) == {1}


async def test_long_prefill_does_not_stall_others(target: LlamaModel) -> None:
    """A 600-token prompt prefills in chunks; another session's rounds are answered between
    its chunks, not after all of them."""
    with LlamaPool(target, n_seq=2, kv_tokens=1024, config=F32) as pool:
        async with Engine(pool, ThreadPoolExecutor(1), prefill_chunk=64) as engine:
            short = engine.open(target.tokenize("short"), temperature=0.0, seed=0, n_ctx=1000)
            await short.async_prefill()
            long = engine.open([7] * 600, temperature=0.0, seed=1, n_ctx=1000)
            order: list[str] = []

            async def prefill() -> None:
                await long.async_prefill()
                order.append("prefill done")

            async def rounds() -> None:
                for _ in range(3):
                    await short.async_verify(_round([5]))
                    order.append("round")

            await asyncio.gather(prefill(), rounds())
            assert order.index("prefill done") == len(order) - 1  # all rounds came first
            assert engine.steps >= 600 // 64


async def test_full_pool_refuses_new_sessions_and_overflowing_steps(target: LlamaModel) -> None:
    from ondevice.common import wire

    with LlamaPool(target, n_seq=3, kv_tokens=256, config=F32) as pool:
        async with Engine(pool, ThreadPoolExecutor(1)) as engine:
            a = engine.open([3] * 150, temperature=0.0, seed=0, n_ctx=256)
            await a.async_prefill()
            assert "KV pool full" in (engine.admit(80, 256) or "")
            with pytest.raises(wire.WireError, match="KV pool full"):
                engine.open([3] * 80, temperature=0.0, seed=1, n_ctx=256)
            b = engine.open([4] * 20, temperature=0.0, seed=1, n_ctx=256)
            await b.async_prefill()
            while pool.free_tokens > 10:  # fill what is left with a's rounds
                await a.async_verify(_round([5] * min(8, pool.free_tokens - 2)))
            with pytest.raises(wire.WireError) as err:
                await b.async_verify(_round([5] * 12))
            assert err.value.code == "kv-full"
            await engine.async_close(a)
            accepted, _, _ = await b.async_verify(_round([5] * 12))  # room again
            assert 0 <= accepted <= 12
