"""Draining a real ``edge-server`` process (``edge_server/_drain.py``): SIGTERM or
``POST /v1/drain`` refuses new sessions, lets open ones finish, moves the rest just before the
drain timeout (``move`` in place of the answer to their next frame) and exits 0 in time; a
second signal stops at once; ``/ready``, ``/health``, ``/v1/info`` and the TXT record show
the state. Real WebSocket sessions through ``EdgeClient``; every wait is on an event (a line
on stdout, the process's exit, an answer), never a fixed sleep."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from _edge import SITE
from _listening import listening
from _waiting import wait_until
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ondevice.common import wire
from ondevice.common.discovery_record import SERVICE_TYPE
from ondevice.common.llama_runtime import LlamaModel
from ondevice.edge.client import EdgeClient, EdgeMoved, EdgeUnavailable

LO = "127.0.0.1"
SHORT = "3"  # s: --drain-timeout of the tests that reach the moves (they start at 2.25 s)
IDLE = "6"  # s: of the idle device's: moved at 4 s, its socket kept open until 5.5 s
LONG = "30"  # s: of the tests that must end well before any move
PROMPT = [1, 2, 3]


@dataclass
class Edge:
    proc: subprocess.Popen
    url: str
    log_path: Path
    lines: list[str] = field(default_factory=list)  # stdout after "listening on"
    _heard: threading.Event = field(default_factory=threading.Event)

    def hear(self, line: str) -> None:
        self.lines.append(line)
        self._heard.set()

    async def line(self, part: str, timeout_s: float = 30.0) -> str:
        """The first stdout line holding ``part``, waiting for it."""
        found = await wait_until(lambda: next((x for x in self.lines if part in x), None),
                                 timeout_s, f"a line with {part!r} (log: {self.log_path})")
        return str(found)

    async def exit_code(self, timeout_s: float) -> int:
        await wait_until(lambda: self.proc.poll() is not None, timeout_s,
                         f"edge-server to exit (log: {self.log_path})")
        return int(self.proc.returncode)

    def signal(self) -> float:
        """SIGTERM; the monotonic time it was sent."""
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        return t


@contextlib.contextmanager
def edge(model: Path | None, *args: str, advertise: bool = False) -> Iterator[Edge]:
    """``edge-server --model MODEL ARGS`` on 127.0.0.1 whose stdout lines the test hears (the
    suite's ``_edge.edge_server`` with the lines kept); no ``--model`` when None."""
    box: list[Edge] = []
    cmd = [sys.executable, "-m", "edge_server.cli",
           *(["--model", str(model)] if model is not None else []), "--host", LO, "--port", "0",
           *(["--interface", LO, "--site", SITE] if advertise else ["--no-advertise"]), *args]
    pending: list[str] = []

    def on_line(line: str) -> None:
        (box[0].hear if box else pending.append)(line)

    with listening(cmd, what="edge-server", startup_s=120, stop_s=15, on_line=on_line) as s:
        e = Edge(s.proc, s.url, s.log_path)
        box.append(e)
        for line in pending:
            e.hear(line)
        yield e


async def http(method: str, url: str, token: str | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one request, made off the event loop."""
    return await asyncio.to_thread(_http, method, url, token)


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def _http(method: str, url: str, token: str | None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def vocab(fixture_models: tuple[Path, Path]) -> str:
    with LlamaModel(fixture_models[1]) as m:
        return m.vocab_hash()


async def _no_session(e: Edge) -> bool:
    """True when the edge has no session open (``/v1/info``)."""
    return (await http("GET", e.url + wire.INFO_PATH))[1]["sessions"] == 0


async def _open(client: EdgeClient, vocab: str) -> wire.Opened:
    return await client.async_open(PROMPT, vocab_hash=vocab, draft_model="test-draft",
                                   temperature=0.0, seed=0, top_k=1)


async def _round(client: EdgeClient, token: int = 5) -> wire.Verdict:
    ids = np.array([token], np.int32)
    return await client.async_round(ids, ids[:, None].copy(), np.ones((1, 1), np.float32))


async def test_sigterm_with_no_session_exits_at_once(fixture_models: tuple[Path, Path]
                                                     ) -> None:
    with edge(fixture_models[0], "--drain-timeout", LONG) as e:
        async with EdgeClient(e.url):  # a socket without a session holds nothing up
            t = e.signal()
            assert await e.exit_code(10.0) == 0
        assert time.monotonic() - t < 15.0, "an idle edge waited for its drain timeout"
        assert any("draining: 0 sessions open" in x for x in e.lines), e.lines


async def test_sigterm_refuses_new_sessions_and_lets_open_ones_finish(
        fixture_models: tuple[Path, Path], vocab: str) -> None:
    with edge(fixture_models[0], "--drain-timeout", LONG) as e:
        assert await http("GET", e.url + "/ready") == (200, {"ready": True, "state": "serving"})
        async with EdgeClient(e.url) as device:
            await _open(device, vocab)
            t = e.signal()
            line = await e.line("draining")
            assert "1 session open" in line and "up to 30 s" in line, line
            status, ready = await http("GET", e.url + "/ready")
            assert status == 503 and ready["state"] == "draining", (status, ready)
            assert 0 < ready["drain_s_left"] <= 30
            status, health = await http("GET", e.url + "/health")
            assert status == 200 and health["status"] == "ok" and health["state"] == "draining"
            info = (await http("GET", e.url + wire.INFO_PATH))[1]
            assert info["state"] == "draining" and info["sessions"] == 1
            assert (await http("GET", e.url + "/v1/status"))[1]["state"] == "draining"
            async with EdgeClient(e.url) as late:
                with pytest.raises(wire.EdgeError) as refused:
                    await _open(late, vocab)
            assert refused.value.code == "draining" and "another edge" in refused.value.message
            metrics = await asyncio.to_thread(_text, e.url + "/metrics")
            assert 'coinfer_edge_sessions_refused_total{reason="draining"} 1.0' in metrics
            for token in (5, 7, 9):  # the open session is served as before
                assert isinstance(await _round(device, token), wire.Verdict)
            assert e.proc.poll() is None
            await device.async_end_session()  # the last session ends: the drain is over
            assert await e.exit_code(10.0) == 0
        assert time.monotonic() - t < 15.0
        assert "edge-server shutting down" in e.lines


async def test_an_idle_session_open_past_the_deadline_moves(
        fixture_models: tuple[Path, Path], vocab: str) -> None:
    with edge(fixture_models[0], "--drain-timeout", IDLE) as e:
        async with EdgeClient(e.url) as device:
            await _open(device, vocab)
            assert isinstance(await _round(device), wire.Verdict)
            t = e.signal()
            await e.line("draining")
            # at 4 s the edge ends the session and sends ``move`` to the idle device
            await wait_until(lambda: _no_session(e),
                             15.0, "the session to move")
            assert time.monotonic() - t >= 3.5, "moved before the drain's deadline neared"
            assert e.proc.poll() is None  # it waits for the moved device to read ``move``
            with pytest.raises(EdgeMoved) as moved:  # the answer to the next round
                await _round(device)
            assert moved.value.reason == "draining" and device.session_id is None
            # that round, naming the moved session, got no answer: the socket's next
            # answer is the refusal of a new session, not a stale error
            with pytest.raises(wire.EdgeError) as refused:
                await _open(device, vocab)
            assert refused.value.code == "draining"
            assert await e.exit_code(10.0) == 0
        assert time.monotonic() - t < 6.0 + 4.0, "the edge outlived its drain timeout"


async def test_a_busy_session_gets_move_in_place_of_a_verdict(
        fixture_models: tuple[Path, Path], vocab: str) -> None:
    """A device that keeps sending rounds: every round before the moves gets its verdict,
    then one gets ``move`` in its place."""
    with edge(fixture_models[0], "--drain-timeout", SHORT) as e:
        async with EdgeClient(e.url) as device:
            await _open(device, vocab)
            t = e.signal()
            await e.line("draining")
            verdicts = 0
            with pytest.raises(EdgeMoved):
                while time.monotonic() - t < 10.0:
                    await _round(device)
                    verdicts += 1
            assert verdicts > 0 and time.monotonic() - t >= 2.0
            assert await e.exit_code(10.0) == 0
        assert time.monotonic() - t < 3.0 + 4.0


async def test_a_generate_stretch_at_the_deadline_ends_done_then_moves(
        fixture_models: tuple[Path, Path], vocab: str) -> None:
    # 5 ms per frame: 3000 tokens would take 15 s, far past the moves at 2.25 s
    with edge(fixture_models[0], "--drain-timeout", SHORT, "--emulate-delay-ms", "5") as e:
        async with EdgeClient(e.url) as device:
            await _open(device, vocab)
            t = e.signal()
            await e.line("draining")
            chunks = [c async for c in device.async_generate(3000)]
            streamed = sum(len(c.ids) for c in chunks)
            assert chunks[-1].done and not any(c.done for c in chunks[:-1])
            assert 0 < streamed < 3000 and time.monotonic() - t >= 2.0, streamed
            with pytest.raises(EdgeMoved):
                await _round(device)
            assert await e.exit_code(10.0) == 0
        assert time.monotonic() - t < 3.0 + 4.0


async def test_a_dnn_task_is_refused_then_moved(digits_dnn: Path) -> None:
    from ondevice.common.dnn_profile import load_dnn

    profile = load_dnn(digits_dnn)
    task = wire.DnnOpen(model=profile.model_id, split=0, codec="", device="t", queue_j=0.0,
                        bits=4096, spectral_eff=3.0, deadline_ms=100.0)
    with edge(None, "--dnn", str(digits_dnn), "--drain-timeout", IDLE) as e:
        async with EdgeClient(e.url) as device:
            await device.async_dnn_open(task)
            e.signal()
            await e.line("draining: 1 session open")
            async with EdgeClient(e.url) as late:
                with pytest.raises(wire.EdgeError) as refused:
                    await late.async_dnn_open(task)
            assert refused.value.code == "draining"
            await wait_until(lambda: _no_session(e),
                             15.0, "the task to move")
            await device.async_input(0, bytes(64))  # the whole raw input: it asks a result
            with pytest.raises(EdgeMoved):
                await device.async_result()
            assert await e.exit_code(10.0) == 0
        assert any("1 session moved" in x for x in e.lines), e.lines


async def test_post_drain_needs_the_token_and_drains(fixture_models: tuple[Path, Path],
                                                     vocab: str, tmp_path: Path) -> None:
    token = "drain-test-token"
    (tmp_path / "token").write_text(token + "\n")
    with edge(fixture_models[0], "--drain-timeout", LONG, "--token-file",
              str(tmp_path / "token")) as e:
        async with EdgeClient(e.url, token=token) as device:
            await _open(device, vocab)
            assert (await http("POST", e.url + "/v1/drain"))[0] == 401
            assert (await http("POST", e.url + "/v1/drain", "wrong"))[0] == 401
            assert await http("GET", e.url + "/ready") == (200, {"ready": True,
                                                                 "state": "serving"})
            status, body = await http("POST", e.url + "/v1/drain", token)
            assert status == 202 and body["state"] == "draining" and body["sessions"] == 1
            assert body["drain_timeout_s"] == 30 and 0 < body["drain_s_left"] <= 30
            await e.line("draining: 1 session open")
            again = await http("POST", e.url + "/v1/drain", token)  # idempotent
            assert again[0] == 202 and again[1]["drain_s_left"] <= body["drain_s_left"]
            assert (await http("GET", e.url + "/ready"))[0] == 503  # no token needed
            assert (await http("GET", e.url + "/health"))[1]["state"] == "draining"
            assert (await http("GET", e.url + wire.INFO_PATH))[0] == 401  # still needs it
            assert isinstance(await _round(device), wire.Verdict)
            await device.async_end_session()
            assert await e.exit_code(10.0) == 0
        assert sum("draining" in x for x in e.lines) == 1, e.lines


async def test_a_second_signal_stops_at_once(fixture_models: tuple[Path, Path],
                                             vocab: str) -> None:
    with edge(fixture_models[0], "--drain-timeout", LONG) as e:
        async with EdgeClient(e.url) as device:
            await _open(device, vocab)
            t = e.signal()
            await e.line("draining")
            assert e.proc.poll() is None
            e.signal()
            assert await e.exit_code(10.0) == 0
            assert time.monotonic() - t < 8.0
            with pytest.raises(EdgeUnavailable):  # the socket is gone
                await _round(device)
        assert any("stopping now: 1 session dropped" in x for x in e.lines), e.lines


async def test_the_txt_record_says_draining_then_goes(fixture_models: tuple[Path, Path],
                                                      vocab: str) -> None:
    seen: list[tuple[str, str | None]] = []  # (change, the TXT state in the cache then)
    azc = AsyncZeroconf(interfaces=[LO], ip_version=IPVersion.V4Only)
    try:
        with edge(fixture_models[0], "--drain-timeout", LONG, advertise=True) as e:
            port = e.url.rsplit(":", 1)[1]

            def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                          state_change: ServiceStateChange) -> None:
                if f"-{port}." not in name:
                    return
                info = AsyncServiceInfo(service_type, name)
                state = None
                if info.load_from_cache(zeroconf):
                    state = (info.properties.get(b"state") or b"").decode() or None
                seen.append((state_change.name, state))

            browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
            try:
                await wait_until(lambda: seen, 20.0, "the edge's record")
                async with EdgeClient(e.url) as device:
                    await _open(device, vocab)
                    e.signal()
                    await wait_until(lambda: ("Updated", "draining") in seen, 20.0,
                                     "the TXT record with state=draining")
                    await wait_until(lambda: seen[-1][0] == "Removed", 20.0,
                                     "the record's goodbye")
                    assert e.proc.poll() is None  # the session still runs
                    assert isinstance(await _round(device), wire.Verdict)
                    await device.async_end_session()
                    assert await e.exit_code(10.0) == 0
            finally:
                await browser.async_cancel()
    finally:
        await azc.async_close()
    changes = [c for c, _ in seen]
    assert changes.index("Removed") > changes.index("Updated"), seen
