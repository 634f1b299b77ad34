"""Bearer tokens, TLS pinning, per-client and idle limits against real edge-server processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from _edge import SITE, EdgeProc, edge_server
from _tls import self_signed

from edge_server.tls import certificate_fingerprint
from ondevice.common import wire
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel
from ondevice.edge.discovery import async_discover
from ondevice.llm.generate import EdgePlan, GenerateRequest, generate
from ondevice.llm.policies import FixedPolicy

SMALL = LlamaConfig(n_ctx=256, n_threads=1)


def _generate_cli(draft: Path, url: str, *extra: str, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(draft),
         "--no-discover", "--edge", url, "--prompt", "secure", "--max-tokens", "6",
         "--n-ctx", "256", "--json", *extra],
        capture_output=True, text=True, timeout=120, env=env or {**os.environ},
    )


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text("s3cret-token-0123456789\n")
    return path


@pytest.fixture(scope="module")
def token_edge(fixture_models: tuple[Path, Path], token_file: Path) -> EdgeProc:
    with edge_server(fixture_models[0], "--token-file", str(token_file)) as e:
        yield e


async def test_info_needs_the_token(token_edge: EdgeProc) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(token_edge.url + wire.INFO_PATH) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthorized"
        headers = {"Authorization": "Bearer s3cret-token-0123456789"}
        async with http.get(token_edge.url + wire.INFO_PATH, headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["auth"] is True


def test_generate_without_or_with_wrong_token_is_refused(
    token_edge: EdgeProc, fixture_models: tuple[Path, Path], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COINFER_TOKEN"}
    done = _generate_cli(fixture_models[1], token_edge.url, env=env)
    assert done.returncode == 1 and "unauthorized" in done.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    done = _generate_cli(fixture_models[1], token_edge.url, "--token-file", str(wrong), env=env)
    assert done.returncode == 1 and "unauthorized" in done.stderr


def test_generate_with_token_file_or_env(
    token_edge: EdgeProc, fixture_models: tuple[Path, Path], token_file: Path
) -> None:
    done = _generate_cli(fixture_models[1], token_edge.url, "--token-file", str(token_file))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["degraded"] is False
    env = {**os.environ, "COINFER_TOKEN": "s3cret-token-0123456789"}
    done = _generate_cli(fixture_models[1], token_edge.url, env=env)
    assert done.returncode == 0, done.stderr


async def test_tls_pinning(fixture_models: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "edge")
    other_cert, _ = self_signed(tmp_path, "impostor")
    fp = certificate_fingerprint(cert)
    target, draft = fixture_models
    with edge_server(target, "--tls-cert", str(cert), "--tls-key", str(key),
                     advertise=True) as e:
        assert e.url.startswith("https://")
        # Discovery carries the fingerprint and the RTT probe pins it.
        found_records = await async_discover(timeout_s=1.5, interfaces=["127.0.0.1"], site=SITE)
        records = [r for r in found_records if r.url == e.url]
        assert records and records[0].fingerprint == fp and records[0].rtt_ms is not None
        ok = await generate(str(draft), GenerateRequest(prompt="tls", max_tokens=6),
                            FixedPolicy(3), plan=EdgePlan(url=e.url, fingerprint=fp),
                            llama_config=SMALL)
        assert not ok.degraded and ok.edge == e.url
        found = await generate(str(draft), GenerateRequest(prompt="tls", max_tokens=6),
                               FixedPolicy(3),
                               plan=EdgePlan(discover=True, interfaces=("127.0.0.1",), site=SITE,
                                             browse_s=3.0),
                               llama_config=SMALL)
        assert not found.degraded and found.edge == e.url
        done = _generate_cli(draft, e.url, "--edge-fingerprint",
                             certificate_fingerprint(other_cert))
        assert done.returncode == 1 and "tls-fingerprint" in done.stderr
        done = _generate_cli(draft, e.url)  # self-signed and not pinned: refused
        assert done.returncode == 1 and "does not trust" in done.stderr


async def _open(url: str, vocab: str, local_ip: str = "127.0.0.1"
                ) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse, wire.Message]:
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local_ip, 0)))
    ws = await http.ws_connect(url.replace("http", "ws") + wire.WS_PATH)
    await ws.send_bytes(wire.encode(wire.Open(np.array([1, 2], np.int32), vocab, "d", 0.0, 0, 4)))
    reply = wire.decode((await ws.receive(timeout=30)).data)
    return http, ws, reply


async def test_sessions_per_client_and_idle(fixture_models: tuple[Path, Path]) -> None:
    with LlamaModel(fixture_models[1]) as m:
        vocab = m.vocab_hash()
    with edge_server(fixture_models[0], "--max-sessions-per-client", "2",
                     "--idle-timeout", "1.0") as e:
        opened = [await _open(e.url, vocab) for _ in range(2)]
        assert all(isinstance(r, wire.Opened) for _, _, r in opened)
        http3, ws3, third = await _open(e.url, vocab)
        assert isinstance(third, wire.Error) and third.code == "too-many-sessions"
        assert "127.0.0.1" in third.message
        # Another client address (127.0.0.2 is loopback too) is still served.
        http4, ws4, other = await _open(e.url, vocab, local_ip="127.0.0.2")
        assert isinstance(other, wire.Opened)
        # Idle sessions are closed after --idle-timeout, with a reason.
        _, ws_idle, _ = opened[0]
        msg = await ws_idle.receive(timeout=5)
        assert isinstance(wire.decode(msg.data), wire.Error)
        assert wire.decode(msg.data).code == "idle"
        # Every session above falls idle in turn: all are closed within a few seconds.
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                async with http.get(e.url + wire.INFO_PATH) as resp:
                    if (await resp.json())["sessions"] == 0:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("idle sessions were not closed")
        for http, ws, _ in [*opened, (http3, ws3, None), (http4, ws4, None)]:
            await ws.close()
            await http.close()
        assert "Traceback" not in e.log()
