"""Random and mutated frames against a running edge-server for a bounded time.

The server must answer every binary frame with a frame or close that one socket, never crash,
never log an unhandled exception, keep serving a well-behaved client, and keep its memory
bounded (resident set growth under 64 MiB over the run).
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import pytest
from _edge import EdgeProc, Reference, edge_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ondevice.common import wire
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel
from ondevice.llm.generate import GenerateRequest, generate
from ondevice.llm.policies import FixedPolicy

FUZZ_SECONDS = 20.0  # bounded: the whole test stops by itself
RSS_GROWTH_LIMIT_KB = 64 * 1024


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def fuzz_edge(fixture_models: tuple[Path, Path]) -> EdgeProc:
    with edge_server(fixture_models[0], "--n-ctx", "256", "--max-frame-bytes", "65536",
                     "--max-sessions", "4") as e:
        yield e


@pytest.fixture(scope="module")
def good_open(fixture_models: tuple[Path, Path]) -> bytes:
    with LlamaModel(fixture_models[1]) as m:
        return wire.encode(wire.Open(np.array([382, 72, 105], np.int32), m.vocab_hash(), "d",
                                     0.7, 1, 8))


def _good_round(session: str, n: int, vocab: int) -> bytes:
    ids = (np.arange(n, dtype=np.int32) * 7) % vocab
    return wire.encode(wire.Round(session, ids, ids[:, None].copy(),
                                  np.ones((n, 1), np.float32)))


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=64))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                      | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
frame_types = st.sampled_from(["open", "round", "generate", "close", "verdict", "tokens", "x"])
keys = st.sampled_from(["t", "v", "prompt", "vocab", "draft", "temp", "seed", "top_k",
                        "session", "q_ids", "q_probs", "k", "max_tokens"])
structured = st.builds(
    lambda t, kv: msgpack.packb({"t": t, **kv}, use_bin_type=True),
    frame_types, st.dictionaries(keys, values, max_size=8),
)


def _mutate(frame: bytes, data: st.DataObject) -> bytes:
    b = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and b:
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut" and b:
            del b[data.draw(st.integers(0, len(b) - 1)):]
        else:
            b[data.draw(st.integers(0, len(b))):0] = data.draw(st.binary(min_size=1, max_size=8))
    return bytes(b)


async def test_fuzz_frames(fuzz_edge: EdgeProc, good_open: bytes,
                           fixture_models: tuple[Path, Path]) -> None:
    url = fuzz_edge.url.replace("http", "ws") + wire.WS_PATH
    rss0 = _rss_kb(fuzz_edge.proc.pid)
    deadline = time.monotonic() + FUZZ_SECONDS
    sent = 0
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        await ws.send_bytes(good_open)
        opened = wire.decode((await ws.receive(timeout=10)).data)
        assert isinstance(opened, wire.Opened)
        session = opened.session

        async def exchange(frame: bytes) -> None:
            nonlocal ws, session, sent
            if ws.closed:
                ws = await http.ws_connect(url)
                await ws.send_bytes(good_open)
                reply = wire.decode((await ws.receive(timeout=10)).data)
                session = reply.session if isinstance(reply, wire.Opened) else session
            await ws.send_bytes(frame)
            sent += 1
            msg = await ws.receive(timeout=10)
            if msg.type == aiohttp.WSMsgType.BINARY:
                wire.decode(msg.data)  # the edge only ever sends well-formed frames
            else:
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.CLOSING), msg

        # Hypothesis drives sync functions: draw a batch of frames, then send them.
        @settings(max_examples=300, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def draw_batch(data: st.DataObject) -> None:
            kind = data.draw(st.sampled_from(["structured", "mutated", "raw"]))
            if kind == "structured":
                frame = data.draw(structured)
            elif kind == "mutated":
                base = data.draw(st.sampled_from([good_open, _good_round(session, 3, 384)]))
                frame = _mutate(base, data)
            else:
                frame = data.draw(st.binary(max_size=256))
            pending.append(frame)

        pending: list[bytes] = []
        while time.monotonic() < deadline:
            pending.clear()
            draw_batch()
            for frame in pending:
                await exchange(frame)
                if time.monotonic() > deadline:
                    break
        await ws.close()
    assert sent > 200, f"only {sent} frames in {FUZZ_SECONDS} s"
    assert fuzz_edge.proc.poll() is None, "the edge died"
    log = fuzz_edge.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    growth = _rss_kb(fuzz_edge.proc.pid) - rss0
    assert growth < RSS_GROWTH_LIMIT_KB, f"edge RSS grew by {growth} kB"
    # Still serving correctly.
    ref = Reference(fixture_models[0])
    try:
        report = await generate(str(fixture_models[1]),
                                GenerateRequest(prompt="after the storm", max_tokens=12),
                                FixedPolicy(3), edge_url=fuzz_edge.url,
                                llama_config=LlamaConfig(n_ctx=256, n_threads=1))
        assert not report.degraded
        assert report.tokens == ref.greedy("after the storm", 12)
    finally:
        ref.close()
