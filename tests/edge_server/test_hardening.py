"""Edge hardening against a real ``edge-server`` process over real sockets: session limits under
concurrent opens, pre-auth input, out-of-range seeds, refusals that must not change state, slow
and oversized request heads, the context size actually in force, and command-line errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pytest
from _edge import Reference, edge_server

from ondevice.common import wire
from ondevice.common.dnn_profile import DnnProfile, load_dnn
from ondevice.common.llama_runtime import LlamaModel

TOKEN = "hardening-token-0123456789"


@pytest.fixture(scope="module")
def vocab(fixture_models: tuple[Path, Path]) -> str:
    with LlamaModel(fixture_models[1]) as m:
        return m.vocab_hash()


def _open_frame(vocab: str, *, n: int = 3, seed: int = 0) -> wire.Open:
    prompt = (np.arange(n, dtype=np.int32) * 7 + 1) % 380
    return wire.Open(prompt, vocab, "test-draft", 0.0, seed, 4)


def _round(session: str, draft: list[int]) -> wire.Round:
    ids = np.array(draft, np.int32)
    return wire.Round(session, ids, ids[:, None].copy(), np.ones((len(draft), 1), np.float32))


def _dnn_open(profile: DnnProfile, **change: object) -> wire.DnnOpen:
    """A good split-2 task open, with the fields in ``change`` replaced."""
    msg = wire.DnnOpen(model=profile.model_id, split=2, codec=profile.split(2).fingerprint,
                       device="hard", queue_j=1.0, bits=4096, spectral_eff=3.0,
                       deadline_ms=100.0)
    for key, value in change.items():
        setattr(msg, key, value)
    return msg


class Sock:
    """One WebSocket to the edge from a chosen local address."""

    def __init__(self, url: str, local_ip: str = "127.0.0.1") -> None:
        self.url = url.replace("http", "ws", 1) + wire.WS_PATH
        self.local_ip = local_ip

    async def connect(self) -> Sock:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(self.local_ip, 0)))
        self.ws = await self.http.ws_connect(self.url)
        return self

    async def send(self, msg: wire.Message) -> None:
        await self.ws.send_bytes(wire.encode(msg))

    async def reply(self) -> wire.Message:
        msg = await self.ws.receive(timeout=60)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        return wire.decode(msg.data)

    async def ask(self, msg: wire.Message) -> wire.Message:
        await self.send(msg)
        return await self.reply()

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


@contextlib.asynccontextmanager
async def _socks(url: str, n: int, local_ip: str = "127.0.0.1") -> AsyncIterator[list[Sock]]:
    socks: list[Sock] = []
    try:
        for _ in range(n):
            socks.append(await Sock(url, local_ip).connect())
        yield socks
    finally:
        for s in socks:
            await s.close()


async def _info(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url + wire.INFO_PATH) as resp:
        assert resp.status == 200
        return await resp.json()


async def _wait_sessions(url: str, n: int, timeout_s: float = 10.0) -> None:
    """Poll ``/v1/info`` until the edge has ``n`` open sessions (the event), or fail."""
    deadline = time.monotonic() + timeout_s
    while (await _info(url))["sessions"] != n:
        assert time.monotonic() < deadline, f"the edge did not get to {n} open sessions"
        await asyncio.sleep(0.05)


async def _burst(socks: list[Sock], frame: wire.Message) -> list[wire.Message]:
    """Send ``frame`` on every socket at once, then collect every reply."""
    await asyncio.gather(*(s.send(frame) for s in socks))
    return list(await asyncio.gather(*(s.reply() for s in socks)))


def _tally(replies: list[wire.Message], opened: type) -> tuple[int, list[str]]:
    n_open = sum(isinstance(r, opened) for r in replies)
    codes = [r.code for r in replies if isinstance(r, wire.Error)]
    assert n_open + len(codes) == len(replies), replies
    return n_open, codes


# -- session limits hold under concurrent opens --------------------------------------------


async def test_concurrent_opens_take_exactly_the_free_slots(
        fixture_models: tuple[Path, Path], vocab: str) -> None:
    """Eight opens sent at once from one address get exactly the per-client limit;
    eight more from a second address get exactly what is left of the edge's total; refused
    and abandoned opens give their slots back, so the same bursts succeed again afterwards."""
    frame = _open_frame(vocab, n=160)  # a prefill long enough that the opens overlap
    with edge_server(fixture_models[0], "--max-sessions", "3",
                     "--max-sessions-per-client", "2") as e:
        for _ in range(2):
            async with _socks(e.url, 8) as one, _socks(e.url, 8, "127.0.0.2") as two:
                n_one, codes_one = _tally(await _burst(one, frame), wire.Opened)
                assert n_one == 2 and set(codes_one) == {"too-many-sessions"}
                n_two, codes_two = _tally(await _burst(two, frame), wire.Opened)
                assert n_two == 1 and set(codes_two) == {"too-many-sessions"}
                assert (await _info(e.url))["sessions"] == 3
            await _wait_sessions(e.url, 0)
        # Opens whose sockets close before the answer: their slots come back too (once the
        # edge has seen them go, which the device cannot observe: bounded retries).
        async with _socks(e.url, 6) as gone:
            await asyncio.gather(*(s.send(frame) for s in gone))
        for _ in range(50):
            async with _socks(e.url, 2) as again:
                n, _ = _tally(await _burst(again, frame), wire.Opened)
            if n == 2:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("abandoned opens kept their places")
        await _wait_sessions(e.url, 0)
        assert "Traceback" not in e.log(), e.log()


async def test_llm_and_dnn_opens_share_one_reservation(
        fixture_models: tuple[Path, Path], vocab: str, digits_dnn: Path) -> None:
    """LLM opens and DNN task opens sent at once from one address hold the one
    per-client limit together."""
    profile = load_dnn(digits_dnn)
    with edge_server(fixture_models[0], "--dnn", str(digits_dnn),
                     "--max-sessions-per-client", "2") as e:
        async with _socks(e.url, 8) as socks:
            frames = [_open_frame(vocab, n=160) if i % 2 else _dnn_open(profile)
                      for i in range(8)]
            # LLM opens first: their builds are awaited while the DNN opens arrive.
            order = sorted(range(8), key=lambda i: not isinstance(frames[i], wire.Open))
            for i in order:
                await socks[i].send(frames[i])
            replies = await asyncio.gather(*(s.reply() for s in socks))
            accepted = [r for r in replies if isinstance(r, (wire.Opened, wire.DnnOpened))]
            refused = [r for r in replies if isinstance(r, wire.Error)]
            assert len(accepted) == 2, replies
            assert {r.code for r in refused} == {"too-many-sessions"}
        await _wait_sessions(e.url, 0)
        assert "Traceback" not in e.log(), e.log()


# -- an Authorization header that is not UTF-8 --------------------------------------------


def _raw_http(url: str, request: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """Send ``request`` as is on a fresh TCP connection; return (status, response bytes)."""
    parts = urlsplit(url)
    data = b""
    with (socket.create_connection((parts.hostname, parts.port), timeout=timeout) as s,
          contextlib.suppress(ConnectionError)):
        s.sendall(request)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    return (int(m.group(1)) if m else 0), data


def test_non_utf8_bearer_token_is_401(fixture_models: tuple[Path, Path],
                                      tmp_path: Path) -> None:
    """Raw bytes that are not UTF-8 in ``Authorization`` are a wrong token (401),
    not a server error, on /v1/info and on the WebSocket path alike."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with edge_server(fixture_models[0], "--token-file", str(token_file)) as e:
        for path in (wire.INFO_PATH, wire.WS_PATH):
            for value in (b"Bearer \xff\xfe", b"Bearer " + TOKEN.encode() + b"\xc3",
                          b"\xff\xfe \xfe"):
                status, body = _raw_http(e.url, b"GET " + path.encode() + b" HTTP/1.1\r\n"
                                         b"Host: 127.0.0.1\r\nAuthorization: " + value +
                                         b"\r\nConnection: close\r\n\r\n")
                assert status == 401, body
                assert b"unauthorized" in body
        status, body = _raw_http(e.url, b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Authorization: Bearer " + TOKEN.encode() +
                                 b"\r\nConnection: close\r\n\r\n")
        assert status == 200, body
        assert "Traceback" not in e.log(), e.log()


# -- seeds outside the wire's range (ondevice.common.seed) --------------------------------


async def test_seed_outside_the_wire_range_is_bad_frame(fixture_models: tuple[Path, Path],
                                                        vocab: str) -> None:
    """An ``open`` whose seed is outside 0..2**64-1 is refused ``bad-frame`` naming
    the seed; the ends of the range open."""
    with edge_server(fixture_models[0], "--n-ctx", "256") as e:
        async with _socks(e.url, 1) as (s,):
            for seed in (-1, -(2**63)):
                reply = await s.ask(_open_frame(vocab, seed=seed))
                assert isinstance(reply, wire.Error) and reply.code == "bad-frame", reply
                assert "seed" in reply.message and "2**64-1" in reply.message
            for seed in (0, 2**64 - 1):
                reply = await s.ask(_open_frame(vocab, seed=seed))
                assert isinstance(reply, wire.Opened), reply
                verdict = await s.ask(_round(reply.session, [1, 2]))
                assert isinstance(verdict, wire.Verdict), verdict
        assert "Traceback" not in e.log(), e.log()


# -- a refused open leaves the open session alone -------------------------------------------


async def test_refused_dnn_open_keeps_the_llm_session(
        fixture_models: tuple[Path, Path], vocab: str) -> None:
    """On an edge without --dnn, a ``dnn_open`` is refused ``unknown-model`` and the
    socket's LLM session goes on."""
    with edge_server(fixture_models[0], "--n-ctx", "256") as e:
        async with _socks(e.url, 1) as (s,):
            opened = await s.ask(_open_frame(vocab))
            assert isinstance(opened, wire.Opened)
            dnn = wire.DnnOpen("digits", 2, "00", "dev", 0.0, 8, 1.0, 0.0)
            refused = await s.ask(dnn)
            assert isinstance(refused, wire.Error) and refused.code == "unknown-model"
            verdict = await s.ask(_round(opened.session, [1, 2]))
            assert isinstance(verdict, wire.Verdict), verdict
            assert (await _info(e.url))["sessions"] == 1


async def test_refused_opens_keep_either_session(
        fixture_models: tuple[Path, Path], vocab: str, digits_dnn: Path) -> None:
    """On an edge serving both, refused ``dnn_open`` frames leave an LLM session open
    and refused ``open`` frames leave a DNN task (or an LLM session) open."""
    profile = load_dnn(digits_dnn)
    with edge_server(fixture_models[0], "--dnn", str(digits_dnn), "--n-ctx", "256") as e:
        async with _socks(e.url, 1) as (s,):
            opened = await s.ask(_open_frame(vocab))
            assert isinstance(opened, wire.Opened)
            for bad, code in ((_dnn_open(profile, codec="0" * 16), "codec-mismatch"),
                              (_dnn_open(profile, split=9), "unknown-model"),
                              (_dnn_open(profile, queue_j=float("nan")), "bad-frame"),
                              (_dnn_open(profile, device=""), "bad-frame")):
                reply = await s.ask(bad)
                assert isinstance(reply, wire.Error) and reply.code == code, reply
                verdict = await s.ask(_round(opened.session, [1, 2]))
                assert isinstance(verdict, wire.Verdict), (code, verdict)
            for bad, code in ((wire.Open(np.ones(3, np.int32), "0" * 32, "x", 0, 0, 4),
                               "vocab-mismatch"),
                              (_open_frame(vocab, seed=-1), "bad-frame")):
                reply = await s.ask(bad)
                assert isinstance(reply, wire.Error) and reply.code == code, reply
                verdict = await s.ask(_round(opened.session, [3]))
                assert isinstance(verdict, wire.Verdict), (code, verdict)
            task = await s.ask(_dnn_open(profile))
            assert isinstance(task, wire.DnnOpened)
            for bad, code in ((wire.Open(np.ones(3, np.int32), "0" * 32, "x", 0, 0, 4),
                               "vocab-mismatch"),
                              (_open_frame(vocab, n=0), "bad-frame"),
                              (_dnn_open(profile, split=9), "unknown-model")):
                reply = await s.ask(bad)
                assert isinstance(reply, wire.Error) and reply.code == code, reply
                result = await s.ask(wire.Feature(task.session, b"", True))
                assert isinstance(result, wire.Result) and result.session == task.session
            assert (await _info(e.url))["sessions"] == 1
        assert "Traceback" not in e.log(), e.log()


# -- slow request heads and half-open connections -----------------------------------------


async def _trickle(url: str, head: bytes, every_s: float, limit_s: float,
                   first: bytes = b"") -> tuple[float, bytes, int]:
    """Send ``first`` at once, then ``head`` one byte every ``every_s`` until the edge
    closes the connection (or ``limit_s`` passes); return (seconds until it closed, what it
    answered after ``first``'s reply, bytes of ``head`` sent)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    t0 = time.monotonic()
    got = b""
    if first:
        writer.write(first)
        got = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", got, re.I).group(1))
        await reader.readexactly(length)
        t0 = time.monotonic()
    closed = asyncio.ensure_future(reader.read())
    sent = 0
    try:
        while not closed.done() and sent < len(head) and time.monotonic() - t0 < limit_s:
            with contextlib.suppress(ConnectionError):
                writer.write(head[sent:sent + 1])
                await writer.drain()
            sent += 1
            await asyncio.wait([closed], timeout=every_s)
        await asyncio.wait([closed], timeout=max(0.1, limit_s - (time.monotonic() - t0)))
        elapsed = time.monotonic() - t0
        if not closed.done():
            answer = b"(still open)"
        elif isinstance(closed.exception(), ConnectionError):
            answer = b""  # closed with a reset
        else:
            answer = closed.result()
    finally:
        closed.cancel()
        writer.close()
    return elapsed, answer, sent


SLOW_HEAD = b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"


async def test_slow_request_head_is_cut_off(fixture_models: tuple[Path, Path]) -> None:
    """A connection that sends its request head one byte at a time is closed once
    --header-timeout passes (a kept-alive one once --keepalive-timeout passes), while a
    normal client is served meanwhile."""
    with edge_server(fixture_models[0], "--header-timeout", "2", "--keepalive-timeout", "3",
                     "--max-pending-connections", "8") as e:
        slow = asyncio.ensure_future(_trickle(e.url, SLOW_HEAD, 0.2, 30.0))
        await asyncio.sleep(0.5)
        info = await _info(e.url)  # served while the slow head is pending
        assert info["limits"]["header_timeout_s"] == 2.0
        elapsed, answer, sent = await slow
        assert sent < len(SLOW_HEAD) and answer == b"", (elapsed, answer)  # closed, no reply
        assert 1.5 < elapsed < 2.0 + 10.0, elapsed
        # After one full request the next head must come within the keep-alive timeout.
        first = b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        elapsed, answer, sent = await _trickle(e.url, SLOW_HEAD, 0.2, 30.0, first=first)
        assert sent < len(SLOW_HEAD) and answer != b"(still open)", (elapsed, answer)
        assert elapsed < 3.0 + 10.0, elapsed
        assert (await _info(e.url))["protocol"] == wire.PROTOCOL_VERSION
        assert "Traceback" not in e.log(), e.log()


async def test_half_open_connections_are_capped(
        fixture_models: tuple[Path, Path]) -> None:
    """Beyond --max-pending-connections connections without a complete request head,
    a new connection is closed at once (the pending ones stay until their timeout); once
    they go, a normal client is served."""
    with edge_server(fixture_models[0], "--header-timeout", "20",
                     "--max-pending-connections", "3") as e:
        parts = urlsplit(e.url)
        pending = [await asyncio.open_connection(parts.hostname, parts.port) for _ in range(3)]
        for _, w in pending:
            w.write(b"GET /v1/in")
            await w.drain()
        await asyncio.sleep(0.3)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        with contextlib.suppress(ConnectionError):
            refused = await asyncio.wait_for(reader.read(), timeout=15)
            assert refused == b"" or b"503" in refused.split(b"\r\n", 1)[0], refused
        writer.close()
        for r, _ in pending:  # they are still open: the refusal was not their timeout
            assert not r.at_eof()
        for _, w in pending:
            w.close()
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # the edge sees them go within moments
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(e.url + wire.INFO_PATH) as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("a normal client was not served once the pending ones left")
        assert "Traceback" not in e.log(), e.log()


# -- request heads over aiohttp's limits ---------------------------------------------------


def test_oversized_heads_are_400_without_traceback(
        fixture_models: tuple[Path, Path]) -> None:
    """A header line over 8190 bytes, 200 headers or an overlong request line get
    400 and at most one log line each, never a traceback."""
    requests = [
        b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
        b"GET /" + b"p" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ]
    with edge_server(fixture_models[0], "--n-ctx", "256") as e:
        before = len(e.log().splitlines())
        for request in requests:
            status, body = _raw_http(e.url, request)
            assert status == 400, body[:200]
        time.sleep(0.3)
        log = e.log()
        assert "Traceback" not in log, log
        assert len(log.splitlines()) - before <= len(requests), log
        status, _ = _raw_http(e.url, b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              b"Connection: close\r\n\r\n")
        assert status == 200


# -- the context size in force -----------------------------------------------------------


async def test_reports_the_context_in_force(
        fixture_models: tuple[Path, Path], vocab: str) -> None:
    """/v1/info and ``opened`` report the context a session really gets and the
    advertised prompt limit fits in it; a prompt up to that limit opens, one more is refused.
    Since the serving engine (issue 12) a session's context is ``--n-ctx`` within the shared
    KV pool, whose size llama.cpp may round (llama-cpp-python's ``Llama`` is the reference)."""
    with edge_server(fixture_models[0], "--n-ctx", "128") as e:
        info = await _info(e.url)
        assert info["n_ctx"] == 128 and info["limits"]["max_prompt_tokens"] == 127
        async with _socks(e.url, 1) as (s,):
            opened = await s.ask(_open_frame(vocab, n=127))
            assert isinstance(opened, wire.Opened) and opened.n_ctx == 128
            too_long = await s.ask(_open_frame(vocab, n=128))
            assert isinstance(too_long, wire.Error) and too_long.code == "prompt-too-long"
            assert "127" in too_long.message
    ref = Reference(fixture_models[0], n_ctx=200)
    pool = ref.llm.n_ctx()  # what llama.cpp makes of a 200-cell request
    ref.close()
    with edge_server(fixture_models[0], "--n-ctx", "4096", "--kv-tokens", "200",
                     "--max-sessions", "1") as e:
        info = await _info(e.url)
        assert info["engine"]["kv_tokens"] == pool
        assert info["n_ctx"] == pool and info["limits"]["max_prompt_tokens"] == pool - 1
    with edge_server(fixture_models[0], "--n-ctx", "512", "--max-prompt", "3072") as e:
        info = await _info(e.url)
        assert info["n_ctx"] == 512 and info["limits"]["max_prompt_tokens"] == 511


# -- command-line errors are one line ----------------------------------------------------


def _cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_server.cli", "--no-advertise", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flag, value", [
    ("--port", "99999"), ("--port", "-1"), ("--max-sessions", "0"),
    ("--max-sessions-per-client", "-2"), ("--n-ctx", "0"), ("--threads", "0"),
    ("--max-draft", "0"), ("--max-prompt", "-5"), ("--max-frame-bytes", "0"),
    ("--max-packet-bytes", "0"), ("--dnn-workers", "0"), ("--dnn-threads", "0"),
    ("--idle-timeout", "0"), ("--idle-timeout", "nan"), ("--emulate-delay-ms", "-1"),
    ("--header-timeout", "0"), ("--keepalive-timeout", "inf"),
    ("--max-pending-connections", "0"), ("--max-sessions", "many"),
])
def test_bad_numeric_flags_are_usage_errors(
        fixture_models: tuple[Path, Path], flag: str, value: str) -> None:
    """A numeric flag out of its range is an argparse usage error (exit 2) naming the
    flag, never a traceback or a server that starts."""
    try:
        done = _cli("--model", str(fixture_models[0]), "--host", "127.0.0.1", flag, value,
                    timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"edge-server {flag} {value} started serving") from None
    assert done.returncode == 2, done.stderr
    assert flag in done.stderr and "usage:" in done.stderr
    assert "Traceback" not in done.stderr


def test_port_in_use_is_one_line(fixture_models: tuple[Path, Path]) -> None:
    """A port in use ends the edge with one line naming the port and --port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _cli("--model", str(fixture_models[0]), "--host", "127.0.0.1",
                    "--port", str(port))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"port {port} on 127.0.0.1 is in use" in lines[0] and "--port" in lines[0]


def test_model_directory_is_named(tmp_path: Path) -> None:
    """``--model DIR`` says it is a directory and that a GGUF file is expected."""
    (tmp_path / "target.gguf").write_bytes(b"")
    done = _cli("--model", str(tmp_path))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "is a directory" in lines[0] and "GGUF" in lines[0]
    assert "target.gguf" in lines[0]



# -- a client that stops reading (round 3) -------------------------------------------------


def _ws_frame(payload: bytes) -> bytes:
    """One masked binary WebSocket frame, as a client sends it (RFC 6455 section 5.2)."""
    import os as _os
    import struct

    head = bytearray([0x82])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    mask = _os.urandom(4)
    return bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _silent_client(url: str) -> socket.socket:
    """A WebSocket to the edge that completes its handshake and then never reads again
    (a tiny receive buffer, so that the edge's replies pile up on its side)."""
    parts = urlsplit(url)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((parts.hostname, parts.port))
    s.sendall(f"GET {wire.WS_PATH} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


async def test_error_frames_never_echo_unbounded_client_data(
        fixture_models: tuple[Path, Path], vocab: str) -> None:
    with edge_server(fixture_models[0]) as edge:
        async with _socks(edge.url, 1) as (sock,):
            assert isinstance(await sock.ask(_open_frame(vocab)), wire.Opened)
            await sock.send(wire.Close("x" * 200_000))
            msg = await sock.ws.receive(timeout=60)
            assert len(msg.data) < 1000, len(msg.data)
            err = wire.decode(msg.data)
            assert isinstance(err, wire.Error) and err.code == "unknown-session"


async def test_a_client_that_stops_reading_loses_its_session(
        fixture_models: tuple[Path, Path], vocab: str) -> None:
    """It opens a session, then floods frames whose answers it never reads: once an answer
    waits longer than --send-timeout the edge closes the socket and frees the place (the
    idle timeout, 300 s here, plays no part)."""
    with edge_server(fixture_models[0], "--send-timeout", "1") as edge:
        s = _silent_client(edge.url)
        try:
            s.sendall(_ws_frame(wire.encode(_open_frame(vocab))))
            await _wait_sessions(edge.url, 1)
            bad = _ws_frame(wire.encode(wire.Close("no-such-session")))
            with contextlib.suppress(OSError):  # the edge may close it while we write
                s.settimeout(60)
                for _ in range(40):
                    s.sendall(bad * 1000)
            await _wait_sessions(edge.url, 0, timeout_s=120)  # the place freed
        finally:
            s.close()
