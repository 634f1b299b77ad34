"""Issue 12: the limits hold under load. A fuzzed session, an unauthorized client and an idle
session beside good sessions on one batching edge; the edge's memory bounded by its KV pool."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from _edge import edge_server

from ondevice.common import wire
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel
from ondevice.llm.generate import EdgePlan, GenerateRequest, generate
from ondevice.llm.policies import EdgeOnlyPolicy, FixedPolicy

TOKEN = "fleet-0123456789-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL = LlamaConfig(n_ctx=512, n_threads=1)
GOOD = [("Hello world", FixedPolicy(4)), ("Once upon a time", EdgeOnlyPolicy()),
        ("The quick brown fox", FixedPolicy(1))]
IDLE_S = 2.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _mutate(frame: bytes, rng: random.Random) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        b[i] ^= rng.randint(1, 255)
    return bytes(b)


class _Fuzzer:
    """One client that keeps a session open and sends it bad frames of every kind, answered
    frame by frame: a well-formed frame or a closed socket, nothing else."""

    def __init__(self, url: str, open_frame: bytes, vocab: int) -> None:
        self.url = url.replace("http", "ws") + wire.WS_PATH
        self.open_frame, self.vocab = open_frame, vocab
        self.rng = random.Random(12)
        self.sent = self.errors = self.closed = self.verdicts = 0

    def _frame(self, session: str) -> bytes | str:
        n = self.rng.randint(1, 6)
        ids = np.array([self.rng.randrange(self.vocab) for _ in range(n)], np.int32)
        good = wire.encode(wire.Round(session, ids, ids[:, None].copy(),
                                      np.ones((n, 1), np.float32)))
        kind = self.rng.choice(["good", "mutated", "out-of-range", "too-long", "stranger",
                                "garbage", "text", "huge"])
        if kind == "good":
            return good
        if kind == "mutated":
            return _mutate(good, self.rng)
        if kind == "out-of-range":
            bad = ids.copy()
            bad[-1] = self.vocab + 5
            return wire.encode(wire.Round(session, bad, bad[:, None].copy(),
                                          np.ones((n, 1), np.float32)))
        if kind == "too-long":
            many = np.zeros(400, np.int32)
            return wire.encode(wire.Round(session, many, many[:, None].copy(),
                                          np.ones((400, 1), np.float32)))
        if kind == "stranger":
            return wire.encode(wire.Round("not-a-session", ids, ids[:, None].copy(),
                                          np.ones((n, 1), np.float32)))
        if kind == "garbage":
            return self.rng.randbytes(self.rng.randint(1, 200))
        if kind == "text":
            return "hello"
        return b"\x00" * 70_000  # over --max-frame-bytes: the edge closes this socket

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            while not stop.is_set():
                async with http.ws_connect(self.url) as ws:
                    await ws.send_bytes(self.open_frame)
                    opened = wire.decode((await ws.receive(timeout=30)).data)
                    assert isinstance(opened, wire.Opened), opened
                    while not stop.is_set() and not ws.closed:
                        frame = self._frame(opened.session)
                        if isinstance(frame, str):
                            await ws.send_str(frame)
                        else:
                            await ws.send_bytes(frame)
                        self.sent += 1
                        msg = await ws.receive(timeout=30)
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            reply = wire.decode(msg.data)
                            if isinstance(reply, wire.Error):
                                self.errors += 1
                            elif isinstance(reply, wire.Verdict):
                                self.verdicts += 1
                        else:
                            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                                aiohttp.WSMsgType.CLOSING), msg
                            self.closed += 1
                            break


async def _intruder(url: str, stop: asyncio.Event) -> int:
    """A client with the wrong token, again and again: 401 every time."""
    refused = 0
    ws_url = url.replace("http", "ws") + wire.WS_PATH
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer wrong"}) as http:
        while not stop.is_set():
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(ws_url)
            assert info.value.status == 401
            refused += 1
            await asyncio.sleep(0.05)
    return refused


async def _idler(url: str, open_frame: bytes) -> float:
    """A session that opens and then says nothing: seconds until the edge says ``idle``."""
    async with aiohttp.ClientSession(headers=AUTH) as http, \
            http.ws_connect(url.replace("http", "ws") + wire.WS_PATH) as ws:
        await ws.send_bytes(open_frame)
        assert isinstance(wire.decode((await ws.receive(timeout=30)).data), wire.Opened)
        t0 = time.monotonic()
        reply = wire.decode((await ws.receive(timeout=IDLE_S + 30)).data)
        assert isinstance(reply, wire.Error) and reply.code == "idle", reply
        return time.monotonic() - t0


async def _engine(url: str) -> dict:
    async with aiohttp.ClientSession(headers=AUTH) as http, \
            http.get(url + wire.INFO_PATH) as resp:
        return (await resp.json())["engine"]


async def test_a_fuzzed_session_among_good_ones_does_not_disturb_them(
        fixture_models: tuple[Path, Path], tmp_path: Path) -> None:
    """Three good sessions (fixed 4, edge-only, fixed 1; greedy) produce exactly their tokens
    alone while, on the same batching edge (5 ms batch window, so their rounds share decodes),
    a fuzzer sends bad frames of eight kinds on its own session, a client with the wrong token
    is refused, and an idle session is timed out."""
    target, draft = fixture_models
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with LlamaModel(draft) as m:
        vocab, vocab_hash = m.n_vocab, m.vocab_hash()
    open_frame = wire.encode(wire.Open(np.array([2, 72, 105], np.int32), vocab_hash, "fuzz",
                                       0.0, 1, 8))

    async def good(url: str, i: int) -> list[int]:
        prompt, policy = GOOD[i]
        r = await generate(str(draft), GenerateRequest(prompt=prompt, max_tokens=40), policy,
                           plan=EdgePlan(url=url, token=TOKEN), llama_config=SMALL)
        assert not r.degraded, r.degraded_reason
        return r.tokens

    with edge_server(target, "--kv-type", "f32", "--n-ctx", "512", "--max-sessions", "8",
                     "--max-sessions-per-client", "8", "--token-file", str(token_file),
                     "--idle-timeout", str(IDLE_S), "--max-frame-bytes", "65536",
                     "--max-draft", "16", "--batch-window-ms", "5") as e:
        alone = [await good(e.url, i) for i in range(len(GOOD))]
        before = await _engine(e.url)
        stop = asyncio.Event()
        fuzzer = _Fuzzer(e.url, open_frame, vocab)
        chaos = [asyncio.create_task(fuzzer.run(stop)), asyncio.create_task(_intruder(e.url, stop))]
        idle = asyncio.create_task(_idler(e.url, open_frame))
        try:
            await asyncio.sleep(0.2)
            together = await asyncio.gather(*(good(e.url, i) for i in range(len(GOOD))))
            idle_s = await idle
        finally:
            stop.set()
            _, refused = await asyncio.gather(*chaos)
        after = await _engine(e.url)
        assert e.proc.poll() is None, "the edge died"
        log = e.log()
    assert "Traceback" not in log, log[-3000:]
    assert together == alone
    assert fuzzer.sent >= 50 and fuzzer.errors >= 10 and fuzzer.closed >= 1 \
        and fuzzer.verdicts >= 1, vars(fuzzer)
    assert refused >= 5
    assert IDLE_S - 0.5 <= idle_s <= IDLE_S + 10, idle_s
    # While they ran together, the edge's decodes carried more than one session's work.
    steps = after["steps"] - before["steps"]
    jobs = after["mean_batch_jobs"] * after["steps"] - before["mean_batch_jobs"] * before["steps"]
    assert jobs / steps > 1.2, (before, after)


def test_edge_memory_is_bounded_by_the_kv_pool_not_by_sessions_times_context(
        gemma_path: Path) -> None:
    """Gemma 3 270M (18 layers, one 256-wide KV head: 18 KiB per f16 cell), ``--n-ctx 32768``,
    8 sessions, a 2048-cell pool: one context each would be 8 x 32768 cells = 4.5 GiB; the edge
    holds 36 MiB of KV, and its RSS with 8 open sessions stays within the model, the pool and a
    fixed slack, and grows by less than 16 MiB from the first session to the eighth."""
    per_cell_b = 18 * 2 * 256 * 2
    with edge_server(gemma_path, "--n-ctx", "32768", "--max-sessions", "8",
                     "--max-sessions-per-client", "8", "--kv-tokens", "2048") as e:
        rss_idle = _rss_mib(e.proc.pid)

        async def hold() -> tuple[list[float], dict]:
            url = e.url.replace("http", "ws") + wire.WS_PATH
            with LlamaModel(gemma_path) as m:
                vhash = m.vocab_hash()
                prompt = np.array(m.tokenize("The weather today is"), np.int32)
            rss = []
            async with aiohttp.ClientSession() as http:
                sockets = []
                try:
                    for _ in range(8):
                        ws = await http.ws_connect(url)
                        sockets.append(ws)
                        await ws.send_bytes(wire.encode(wire.Open(prompt, vhash, "d", 0.0, 1, 8)))
                        opened = wire.decode((await ws.receive(timeout=60)).data)
                        assert isinstance(opened, wire.Opened), opened
                        await ws.send_bytes(wire.encode(wire.Generate(opened.session, 8)))
                        done = False
                        while not done:  # read the stream to its last frame
                            done = wire.decode((await ws.receive(timeout=60)).data).done
                        rss.append(_rss_mib(e.proc.pid))
                    async with http.get(e.url + wire.INFO_PATH) as resp:
                        info = await resp.json()
                finally:
                    for ws in sockets:
                        await ws.close()
            return rss, info

        rss, info = asyncio.run(hold())
    assert info["engine"]["kv_tokens"] == 2048 and info["engine"]["sequences"] == 8, info
    pool_mib = 2048 * per_cell_b / 2**20
    model_mib = gemma_path.stat().st_size / 2**20
    naive_mib = 8 * 32768 * per_cell_b / 2**20
    assert rss[-1] - rss[0] < 16, rss
    assert rss[-1] < model_mib + pool_mib + 400, (rss, model_mib, pool_mib)
    assert rss[-1] < naive_mib / 4, (rss, naive_mib)
    assert rss_idle <= rss[-1]
