"""Bad input against a running ``edge-server`` process: each case gets a clear error frame or
status, the server stays up, and a well-behaved client is served afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import pytest
from _edge import EdgeProc, Reference, edge_server

from ondevice.common import wire
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel
from ondevice.llm.generate import GenerateRequest, generate
from ondevice.llm.policies import FixedPolicy

LIMITS = ("--max-draft", "8", "--max-prompt", "64", "--max-frame-bytes", "65536",
          "--max-sessions", "3", "--n-ctx", "256")


@pytest.fixture(scope="module")
def limited_edge(fixture_models: tuple[Path, Path]) -> EdgeProc:
    with edge_server(fixture_models[0], *LIMITS) as e:
        yield e


@pytest.fixture(scope="module")
def vocab(fixture_models: tuple[Path, Path]) -> tuple[str, int]:
    with LlamaModel(fixture_models[1]) as m:
        return m.vocab_hash(), m.n_vocab


class Raw:
    """A bare WebSocket to the edge that sends whatever the test hands it."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http://", "ws://") + wire.WS_PATH

    async def __aenter__(self) -> Raw:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.http.close()

    async def ask(self, frame: bytes | wire.Message) -> wire.Message:
        data = frame if isinstance(frame, bytes) else wire.encode(frame)
        await self.ws.send_bytes(data)
        msg = await self.ws.receive(timeout=30)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        return wire.decode(msg.data)

    async def open(self, vocab: str, prompt: list[int] | None = None) -> wire.Opened:
        reply = await self.ask(
            wire.Open(np.array(prompt or [1, 2, 3], np.int32), vocab, "test-draft", 0.0, 0, 4)
        )
        assert isinstance(reply, wire.Opened), reply
        return reply


def _round(session: str, draft: list[int]) -> wire.Round:
    ids = np.array(draft, np.int32)
    return wire.Round(session, ids, ids[:, None].copy(), np.ones((len(draft), 1), np.float32))


async def _served_well(url: str, draft: Path, target_ref: Reference) -> None:
    req = GenerateRequest(prompt="a well behaved client", max_tokens=16)
    report = await generate(str(draft), req, FixedPolicy(3), edge_url=url,
                            llama_config=LlamaConfig(n_ctx=256, n_threads=1))
    assert not report.degraded, report.errors
    assert report.tokens == target_ref.greedy("a well behaved client", 16)


async def test_info(limited_edge: EdgeProc, vocab: tuple[str, int]) -> None:
    async with aiohttp.ClientSession() as http, http.get(limited_edge.url + wire.INFO_PATH) as resp:
        info = await resp.json()
    assert info["vocab_hash"] == vocab[0] and info["n_vocab"] == vocab[1]
    assert info["limits"]["max_draft_tokens"] == 8 and info["capabilities"] == ["llm"]


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"\xc1not msgpack", "bad-frame"),
        (msgpack.packb(["a", "list"]), "bad-frame"),
        (msgpack.packb({"t": "launch"}), "bad-frame"),
        (msgpack.packb({"t": "open", "v": 1}), "bad-frame"),
        (wire.encode(_round("nosuchsession", [1, 2])), "unknown-session"),
        (wire.encode(wire.Close("nosuchsession")), "unknown-session"),
        (wire.encode(wire.Verdict(1, 2, 0.0, 0.0)), "bad-frame"),
    ],
)
async def test_malformed_and_unknown(
    limited_edge: EdgeProc, frame: bytes, code: str, vocab: tuple[str, int]
) -> None:
    async with Raw(limited_edge.url) as raw:
        reply = await raw.ask(frame)
        assert isinstance(reply, wire.Error) and reply.code == code and reply.message
        # The same socket still works.
        await raw.open(vocab[0])


async def test_text_frame_is_refused(limited_edge: EdgeProc) -> None:
    async with Raw(limited_edge.url) as raw:
        await raw.ws.send_str("hello")
        msg = await raw.ws.receive(timeout=10)
        reply = wire.decode(msg.data)
        assert isinstance(reply, wire.Error) and reply.code == "bad-frame"


async def test_session_limits(limited_edge: EdgeProc, vocab: tuple[str, int]) -> None:
    vhash, n_vocab = vocab
    async with Raw(limited_edge.url) as raw:
        opened = await raw.open(vhash)
        too_long = await raw.ask(_round(opened.session, list(range(9))))
        assert isinstance(too_long, wire.Error) and too_long.code == "draft-too-long"
        assert "8" in too_long.message
        oor = await raw.ask(_round(opened.session, [1, n_vocab + 5]))
        assert isinstance(oor, wire.Error) and oor.code == "token-out-of-range"
        neg = await raw.ask(_round(opened.session, [-1]))
        assert isinstance(neg, wire.Error) and neg.code == "token-out-of-range"
        bad_q = wire.Round(opened.session, np.array([1], np.int32), np.array([[1]], np.int32),
                           np.array([[np.nan]], np.float32))
        reply = await raw.ask(bad_q)
        assert isinstance(reply, wire.Error) and reply.code == "bad-frame"
        wrong = await raw.ask(_round("x" + opened.session, [1]))
        assert isinstance(wrong, wire.Error) and wrong.code == "unknown-session"
        ok = await raw.ask(_round(opened.session, [1, 2]))
        assert isinstance(ok, wire.Verdict) and 0 <= ok.accepted <= 2


async def test_open_refusals(limited_edge: EdgeProc, vocab: tuple[str, int]) -> None:
    vhash, n_vocab = vocab
    async with Raw(limited_edge.url) as raw:
        long_prompt = wire.Open(np.ones(65, np.int32), vhash, "d", 0.0, 0, 4)
        reply = await raw.ask(long_prompt)
        assert isinstance(reply, wire.Error) and reply.code == "prompt-too-long"
        mismatch = await raw.ask(wire.Open(np.ones(3, np.int32), "0" * 32, "other.gguf", 0, 0, 4))
        assert isinstance(mismatch, wire.Error) and mismatch.code == "vocab-mismatch"
        assert "other.gguf" in mismatch.message and "target.gguf" in mismatch.message
        oor = await raw.ask(wire.Open(np.array([1, n_vocab], np.int32), vhash, "d", 0, 0, 4))
        assert isinstance(oor, wire.Error) and oor.code == "token-out-of-range"
        old = await raw.ask(wire.Open(np.ones(3, np.int32), vhash, "d", 0, 0, 4, version=99))
        assert isinstance(old, wire.Error) and old.code == "protocol"


async def test_context_full(limited_edge: EdgeProc, vocab: tuple[str, int]) -> None:
    async with Raw(limited_edge.url) as raw:
        opened = await raw.open(vocab[0], prompt=[1] * 60)
        last = None
        for _ in range(300):  # n_ctx 256: at most 196 more tokens fit, >= 1 per round
            last = await raw.ask(_round(opened.session, [1] * 8))
            if isinstance(last, wire.Error):
                break
        assert isinstance(last, wire.Error) and last.code == "context-full"


async def _wait_idle(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            async with http.get(url + wire.INFO_PATH) as resp:
                if (await resp.json())["sessions"] == 0:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError("sessions of earlier tests were not closed")


async def test_too_many_sessions(limited_edge: EdgeProc, vocab: tuple[str, int]) -> None:
    await _wait_idle(limited_edge.url)
    clients = [Raw(limited_edge.url) for _ in range(4)]
    for c in clients:
        await c.__aenter__()
    try:
        for c in clients[:3]:
            await c.open(vocab[0])
        reply = await clients[3].ask(wire.Open(np.ones(3, np.int32), vocab[0], "d", 0, 0, 4))
        assert isinstance(reply, wire.Error) and reply.code == "too-many-sessions"
    finally:
        for c in clients:
            await c.__aexit__()


async def test_oversize_frame_closes_only_that_socket(
    limited_edge: EdgeProc, vocab: tuple[str, int]
) -> None:
    async with Raw(limited_edge.url) as raw:
        await raw.ws.send_bytes(b"\x00" * 70000)
        msg = await raw.ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    async with Raw(limited_edge.url) as raw:
        await raw.open(vocab[0])


async def test_good_client_served_after_abuse(
    limited_edge: EdgeProc, fixture_models: tuple[Path, Path], target_ref: Reference
) -> None:
    """Runs last in this module: after every case above the server still serves correctly."""
    assert limited_edge.proc.poll() is None
    await _served_well(limited_edge.url, fixture_models[1], target_ref)
    log = limited_edge.log()
    assert "Traceback" not in log, log


async def test_replies_carry_the_edges_advice(limited_edge: EdgeProc,
                                              vocab: tuple[str, int]) -> None:
    """Every verdict and tokens frame says whether the edge advises streaming (a bool, never
    absent), and /v1/info shows the figures the advice is made of, counting the rounds."""
    async with aiohttp.ClientSession() as http, http.get(limited_edge.url + wire.INFO_PATH) as resp:
        seen = (await resp.json())["engine"]["advice"]["rounds_seen"]
    async with Raw(limited_edge.url) as raw:
        opened = await raw.open(vocab[0])
        for i in range(4):
            verdict = await raw.ask(_round(opened.session, [1 + i, 2]))
            assert isinstance(verdict, wire.Verdict), verdict
            assert isinstance(verdict.advise, bool) and verdict.batch is not None
        await raw.ws.send_bytes(wire.encode(wire.Generate(opened.session, 3)))
        chunks = []
        while not chunks or not chunks[-1].done:
            chunks.append(wire.decode((await raw.ws.receive(timeout=30)).data))
        assert all(isinstance(c, wire.Tokens) for c in chunks)
        assert all(isinstance(c.advise, bool) for c in chunks if len(c.ids))
    async with aiohttp.ClientSession() as http, http.get(limited_edge.url + wire.INFO_PATH) as resp:
        advice = (await resp.json())["engine"]["advice"]
    assert advice["rounds_seen"] == seen + 4
    assert 0.0 <= advice["busy"] <= 1.0 and advice["step_ms_per_token"] >= 0.0
    assert set(advice) >= {"advise_stream", "stream_ms_per_token", "verify_ms_per_token",
                           "active_sessions"}
