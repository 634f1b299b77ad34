"""``EdgeClient`` and ``EdgePool`` against a real ``edge-server`` (fixture target and the
digits DNN), over real sockets.

Between client and edge sits a TCP relay of this module that records every byte the client
sends and counts the open connections, so the tests read what really crossed the socket
(WebSocket frames as RFC 6455 lays them out) and which sockets the pool left open. Nothing of
the client is replaced or patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from _edge import EdgeProc, Reference, edge_server
from _listening import free_port
from _waiting import wait_until

from ondevice.common import wire
from ondevice.common.dnn_profile import DnnProfile, load_dnn
from ondevice.common.llama_runtime import LlamaModel
from ondevice.edge.client import EdgeClient, EdgePool, EdgeUnavailable

PROMPT = "a well behaved client"


@pytest.fixture(scope="module")
def both_edge(fixture_models: tuple[Path, Path], digits_dnn: Path) -> EdgeProc:
    """One edge serving the fixture target and the digits DNN."""
    with edge_server(fixture_models[0], "--dnn", str(digits_dnn), "--n-ctx", "256") as e:
        yield e


@pytest.fixture(scope="module")
def draft_vocab(fixture_models: tuple[Path, Path]) -> str:
    with LlamaModel(fixture_models[1]) as m:
        return m.vocab_hash()


@pytest.fixture(scope="module")
def profile(digits_dnn: Path) -> DnnProfile:
    return load_dnn(digits_dnn)


class Relay:
    """A TCP relay to the edge: ``url`` to connect to, ``sent`` every byte clients sent,
    ``open`` the connections not closed yet, ``cut()`` drops them all."""

    def __init__(self, edge_url: str) -> None:
        parts = urlsplit(edge_url)
        self.edge = (parts.hostname, parts.port)
        self.sent = bytearray()
        self.open = 0
        self.url = ""
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def cut(self) -> None:
        for w in self._writers:
            w.transport.abort()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        self.open += 1
        e_reader, e_writer = await asyncio.open_connection(*self.edge)
        self._writers += [c_writer, e_writer]
        try:
            await asyncio.gather(self._pump(c_reader, e_writer, self.sent),
                                 self._pump(e_reader, c_writer, None))
        finally:
            self.open -= 1
            for w in (c_writer, e_writer):
                w.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    record: bytearray | None) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if record is not None:
                    record += data
                writer.write(data)
                await writer.drain()
        writer.transport.abort()  # one side ended: end the other

    async def wait_closed(self, timeout_s: float = 10.0) -> None:
        await wait_until(lambda: self.open == 0, timeout_s,
                         "every relayed connection to close")


@contextlib.asynccontextmanager
async def relay(edge: EdgeProc) -> AsyncIterator[Relay]:
    async with Relay(edge.url) as r:
        yield r


def binary_payloads(stream: bytes) -> list[bytes]:
    """The payloads of the binary WebSocket frames a client sent (RFC 6455 section 5.2: the
    HTTP upgrade request, then frames, each masked with its 4-byte key)."""
    at = stream.index(b"\r\n\r\n") + 4
    out = []
    while at < len(stream):
        opcode, n = stream[at] & 0x0F, stream[at + 1] & 0x7F
        assert stream[at + 1] & 0x80, "a client's frame is masked"
        at += 2
        if n == 126:
            n, at = int.from_bytes(stream[at:at + 2], "big"), at + 2
        elif n == 127:
            n, at = int.from_bytes(stream[at:at + 8], "big"), at + 8
        key, at = stream[at:at + 4], at + 4
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(stream[at:at + n]))
        at += n
        if opcode == 0x2:
            out.append(payload)
    return out


async def sessions_drop_to_zero(edge: EdgeProc, timeout_s: float = 10.0) -> None:
    """Wait until the edge counts no open session (it learns of a closed socket a moment
    after the device closed it)."""
    async def none_open() -> bool:
        return await asyncio.to_thread(lambda: edge.info()["sessions"]) == 0

    await wait_until(none_open, timeout_s, "the edge to count no open session", poll_s=0.05)


def dnn_open(profile: DnnProfile, split: int) -> wire.DnnOpen:
    return wire.DnnOpen(model=profile.model_id, split=split,
                        codec=profile.split(split).fingerprint, device="client-test",
                        queue_j=0.0, bits=4096, spectral_eff=3.0, deadline_ms=100.0)


async def open_llm(client: EdgeClient, target_ref: Reference, vocab: str) -> wire.Opened:
    return await client.async_open(target_ref.tokenize(PROMPT), vocab_hash=vocab,
                                   draft_model="draft.gguf", temperature=0.0, seed=0, top_k=1)


# -- a session: request and response ---------------------------------------------------------

async def test_session_rounds_and_stream_follow_the_target(
        both_edge: EdgeProc, target_ref: Reference, draft_vocab: str) -> None:
    """A round that drafts the target's own greedy tokens is accepted whole and answered with
    the next one; an edge-only stream continues the same text; a second session runs on the
    same socket after the first ends."""
    greedy = target_ref.greedy(PROMPT, 12)
    async with EdgeClient(both_edge.url) as client:
        info = await client.async_info()
        assert info["vocab_hash"] == draft_vocab and client.info is info
        opened = await open_llm(client, target_ref, draft_vocab)
        assert opened.session == client.session_id and opened.model == "target.gguf"
        draft = np.array(greedy[:4], np.int32)
        verdict = await client.async_round(draft, draft[:, None].copy(),
                                           np.ones((4, 1), np.float32))
        assert (verdict.accepted, verdict.token) == (4, greedy[4])
        streamed = [int(t) async for chunk in client.async_generate(7) for t in chunk.ids]
        assert streamed == greedy[5:12]
        assert client.reusable
        await client.async_end_session()
        assert client.session_id is None
        again = await open_llm(client, target_ref, draft_vocab)
        assert again.session != opened.session


# -- the feature path: one frame, sized as sent ----------------------------------------------

async def test_feature_frames_are_counted_as_the_socket_carries_them(
        both_edge: EdgeProc, profile: DnnProfile) -> None:
    """``async_feature`` returns the size of the frame that crossed the socket and tells
    ``on_bytes`` the same, once per frame; every frame sent is counted exactly once."""
    told: list[int] = []
    split = profile.split(1)
    packets = split.codec.encode(np.zeros(split.codec.shape, np.float32), 40)
    async with relay(both_edge) as r:
        async with EdgeClient(r.url, on_bytes=lambda tx, rx: tx and told.append(tx)) as client:
            await client.async_dnn_open(dnn_open(profile, 1))
            sizes = [await client.async_feature(p, evaluate=i == len(packets) - 1)
                     for i, p in enumerate(packets)]
            result = await client.async_result()
            sid = client.session_id
        await r.wait_closed()
    frames = binary_payloads(bytes(r.sent))
    assert [len(f) for f in frames] == told  # dnn_open, the features, the goodbye close
    features = frames[1:1 + len(packets)]
    assert sizes == [len(f) for f in features]
    assert [wire.decode(f) for f in features] == [
        wire.Feature(sid, p, i == len(packets) - 1) for i, p in enumerate(packets)]
    assert wire.decode(frames[-1]) == wire.Close(sid)
    assert result.seq == len(packets)


# -- EdgePool: one socket per edge kept, every socket closed with the pool -------------------

async def test_pool_keeps_a_clean_socket_and_closes_every_socket_it_opened(
        both_edge: EdgeProc, target_ref: Reference, draft_vocab: str) -> None:
    async with relay(both_edge) as r:
        async with EdgePool() as pool:
            first, kept = await pool.acquire(r.url, None)
            assert not kept
            await open_llm(first, target_ref, draft_vocab)
            await pool.release(first)  # the session ends, the socket is kept
            again, kept = await pool.acquire(r.url + "/", None)
            assert kept and again is first and (pool.connects, pool.reuses) == (1, 1)
            await open_llm(again, target_ref, draft_vocab)
            other, kept = await pool.acquire(r.url, None)  # the kept one is in use: a new one
            assert not kept and other is not first
            await open_llm(other, target_ref, draft_vocab)
            await pool.release(first)
            assert pool.open_sockets == 2 and r.open == 2
            # ``other`` is still handed out when the pool closes
        assert pool.open_sockets == 0
        await r.wait_closed()
        await sessions_drop_to_zero(both_edge)
        with pytest.raises(EdgeUnavailable, match="closed"):
            await other.async_round(np.array([1], np.int32), np.array([[1]], np.int32),
                                    np.ones((1, 1), np.float32))


async def test_pool_closes_a_failed_socket_instead_of_keeping_it(
        both_edge: EdgeProc, target_ref: Reference, draft_vocab: str) -> None:
    async with relay(both_edge) as r, EdgePool(timeout_s=5.0) as pool:
        client, _ = await pool.acquire(r.url, None)
        await open_llm(client, target_ref, draft_vocab)
        r.cut()
        with pytest.raises(EdgeUnavailable):
            await client.async_round(np.array([1], np.int32), np.array([[1]], np.int32),
                                     np.ones((1, 1), np.float32))
        await pool.release(client)  # a failed request leaves it unusable: closed, not kept
        assert not client.reusable and pool.open_sockets == 0
        fresh, kept = await pool.acquire(r.url, None)
        assert not kept and fresh is not client and pool.connects == 2


# -- clear errors ----------------------------------------------------------------------------

async def test_unreachable_edge_is_edge_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EdgeUnavailable, match=f"cannot reach edge {url}"):
        await EdgeClient(url, timeout_s=5.0).async_connect()  # closes itself on failure


def test_token_in_plaintext_is_refused_before_connecting() -> None:
    with pytest.raises(wire.EdgeError) as err:
        EdgeClient("http://192.0.2.1:8765", token="secret")
    assert err.value.code == "insecure" and "plaintext" in str(err.value)


async def test_edge_refusal_is_edge_error_with_its_code(
        both_edge: EdgeProc, target_ref: Reference, draft_vocab: str) -> None:
    async with EdgeClient(both_edge.url) as client:
        with pytest.raises(wire.EdgeError) as err:
            await client.async_open(target_ref.tokenize(PROMPT), vocab_hash="0" * 32,
                                    draft_model="other.gguf", temperature=0.0, seed=0, top_k=1)
        assert err.value.code == "vocab-mismatch" and "other.gguf" in str(err.value)
        await open_llm(client, target_ref, draft_vocab)  # the socket stays open after a refusal


async def test_lost_connection_is_edge_unavailable(
        both_edge: EdgeProc, target_ref: Reference, draft_vocab: str) -> None:
    async with relay(both_edge) as r, EdgeClient(r.url, timeout_s=5.0) as client:
        await open_llm(client, target_ref, draft_vocab)
        r.cut()
        await r.wait_closed()
        with pytest.raises(EdgeUnavailable, match=re.escape(r.url)):
            await client.async_round(np.array([1], np.int32), np.array([[1]], np.int32),
                                     np.ones((1, 1), np.float32))
        assert not client.reusable
