"""The edge's ``/v1/status`` and ``/status``: a real ``edge-server`` process with a token,
driven by raw WebSocket devices; the JSON says what they did, and the routes follow the token
rule of ``/metrics`` (plus ``?token=``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from _edge import EdgeProc, edge_server
from _prometheus import get
from _waiting import wait_until
from _ws_devices import DRAFT, PROMPT, RawDevice, round_frame, running_fleet

from ondevice.common import wire
from ondevice.common.llama_runtime import LlamaModel

TOKEN = "edge-status-token"
N_CTX = 256
DEADLINE_S = 60.0  # for the fleet to show in the status


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("edge-status") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def guarded_edge(fixture_models: tuple[Path, Path], token_file: Path) -> EdgeProc:
    with edge_server(fixture_models[0], "--token-file", str(token_file), "--max-sessions", "4",
                     "--n-ctx", str(N_CTX), "--verbose") as e:
        yield e


@pytest.fixture(scope="module")
def vocab_hash(fixture_models: tuple[Path, Path]) -> str:
    with LlamaModel(fixture_models[1]) as m:
        return m.vocab_hash()


def status(edge: EdgeProc, token: str | None = TOKEN) -> dict:
    code, body = get(edge.url + "/v1/status", token)
    assert code == 200, body
    return json.loads(body)


def test_status_needs_the_token(guarded_edge: EdgeProc) -> None:
    url = guarded_edge.url
    for path in ("/status", "/v1/status"):
        assert get(url + path)[0] == 401
        assert get(url + path, "wrong")[0] == 401
        assert get(url + path + "?token=wrong")[0] == 401
        assert get(url + path, TOKEN)[0] == 200
        assert get(url + path + "?token=" + TOKEN)[0] == 200
    # the query token is for the status routes only
    assert get(url + wire.INFO_PATH + "?token=" + TOKEN)[0] == 401
    assert get(url + "/metrics?token=" + TOKEN)[0] == 401
    # ... and the access log never writes it
    log = guarded_edge.log()
    assert "/status?token=REDACTED" in log
    assert TOKEN not in log


def test_the_page_is_self_contained(guarded_edge: EdgeProc) -> None:
    import urllib.request

    req = urllib.request.Request(guarded_edge.url + "/status",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        page = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
        csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "/v1/status" in page
    for external in ("http://", "https://", "//cdn", "<script src", "<link rel=\"stylesheet\""):
        assert external not in page.replace("http://www.w3.org/2000/svg", ""), external
    assert "innerHTML" not in page  # every string from the JSON is set as text


def test_metrics_public_opens_the_status(fixture_models: tuple[Path, Path],
                                          token_file: Path) -> None:
    with edge_server(fixture_models[0], "--token-file", str(token_file), "--metrics-public",
                     "--n-ctx", str(N_CTX)) as e:
        assert get(e.url + "/status")[0] == 200
        body = status(e, token=None)
        assert body["sessions"] == [] and body["engine"]["steps"] == 0
        assert get(e.url + wire.INFO_PATH)[0] == 401  # the rest still needs it


async def test_status_counts_what_a_session_did(guarded_edge: EdgeProc,
                                                vocab_hash: str) -> None:
    """One raw session: three rounds then a stretch; its row adds up to exactly that."""
    import aiohttp

    drafts = ([5, 6, 7], [8, 9], [10, 11, 12, 13])
    stretch = 6
    before = status(guarded_edge)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http, \
            http.ws_connect(guarded_edge.url.replace("http://", "ws://") + wire.WS_PATH) as ws:

        async def ask(msg: wire.Message) -> wire.Message:
            await ws.send_bytes(wire.encode(msg))
            return wire.decode((await ws.receive(timeout=30)).data)

        name = "<b>dev</b> & \"one\""  # client data, shown as text
        opened = await ask(wire.Open(np.array(PROMPT, np.int32), vocab_hash, name, 0.0, 0, 1))
        assert isinstance(opened, wire.Opened), opened
        accepted = []
        for d in drafts:
            verdict = await ask(round_frame(opened.session, tuple(d)))
            assert isinstance(verdict, wire.Verdict), verdict
            accepted.append(verdict.accepted)
        mid = status(guarded_edge)
        (row,) = [s for s in mid["sessions"] if s["sid"] == opened.session]
        assert row["mode"] == "draft" and row["streamed"] == 0
        await ws.send_bytes(wire.encode(wire.Generate(opened.session, stretch)))
        while not (frame := wire.decode((await ws.receive(timeout=30)).data)).done:
            assert isinstance(frame, wire.Tokens), frame
        after = status(guarded_edge)
        await ws.send_bytes(wire.encode(wire.Close(opened.session)))
    (row,) = [s for s in after["sessions"] if s["sid"] == opened.session]
    drafted = sum(len(d) for d in drafts)
    assert row["kind"] == "llm" and row["draft_model"] == name
    assert row["peer"] == "127.0.0.1" and row["device"] is None and row["policy"] is None
    assert row["mode"] == "stream"
    assert row["rounds"] == len(drafts) and row["drafted"] == drafted
    assert row["accepted"] == sum(accepted) and row["streamed"] == stretch
    assert row["tokens"] == sum(accepted) + len(drafts) + stretch
    assert row["context_tokens"] == len(PROMPT) + row["tokens"]
    assert row["acceptance"] == pytest.approx(sum(accepted) / drafted)
    assert row["mean_draft"] == pytest.approx(drafted / len(drafts))
    assert row["mean_queue_ms"] >= 0.0
    assert row["tokens_per_s"] > 0 and row["age_s"] > 0
    assert after["policy_on_wire"] is False
    eng, eng0 = after["engine"], before["engine"]
    # a prefill chunk, one step per round and per streamed token (the edge was otherwise idle)
    assert eng["steps"] - eng0["steps"] == 1 + len(drafts) + stretch
    assert eng["mean_step_ms"] > 0 and eng["mean_batch_tokens"] >= 1
    assert eng["kv_used"] > 0 and eng["kv_tokens"] >= N_CTX
    assert isinstance(after["advice"]["advise_stream"], bool)
    assert after["dnn"] is None
    # the closed session is gone
    assert not [s for s in status(guarded_edge)["sessions"] if s["sid"] == opened.session]


async def test_status_shows_a_running_fleet(guarded_edge: EdgeProc, vocab_hash: str) -> None:
    devices = [RawDevice(guarded_edge.url, name, mode, vocab_hash, N_CTX, TOKEN)
               for name, mode in (("dev-a", "draft"), ("dev-b", "draft"), ("dev-c", "stream"))]
    async def working() -> dict | None:
        body = await asyncio.to_thread(status, guarded_edge)
        rows = {s["draft_model"]: s for s in body["sessions"]}
        return body if all(rows.get(d.name, {}).get("tokens", 0) > 0 for d in devices) else None

    async with running_fleet(devices):
        # until every device has a session that did work, then until the engine stepped on
        body = await wait_until(working, DEADLINE_S, "every device's session at work",
                                poll_s=0.05)
        rows = {s["draft_model"]: s for s in body["sessions"]}

        async def stepped() -> dict | None:
            now = await asyncio.to_thread(status, guarded_edge)
            return now if now["engine"]["steps"] != body["engine"]["steps"] else None

        later = await wait_until(stepped, DEADLINE_S, "another engine step", poll_s=0.05)
    for d in devices:
        row = rows[d.name]
        assert row["sid"] in d.sessions
        if d.mode == "draft":
            assert row["rounds"] > 0 and row["mean_draft"] == pytest.approx(len(DRAFT))
            assert 0.0 <= row["acceptance"] <= 1.0
        else:
            assert row["streamed"] > 0 and row["rounds"] == 0 and row["acceptance"] is None
    assert body["engine"]["kv_used"] > 0
    assert later["t_s"] > body["t_s"]
    assert [s for s in status(guarded_edge)["sessions"]
            if s["draft_model"] in {d.name for d in devices}] == []


async def test_status_of_dnn_tasks_per_split() -> None:
    from ondevice.common.dnn_profile import RAW_SPLIT, load_dnn
    from ondevice.dnn.shipped import DIGITS_DNN as split_dir
    from ondevice.edge.client import EdgeClient

    profile = load_dnn(split_dir)
    with edge_server(None, "--dnn", str(split_dir)) as e:
        async with EdgeClient(e.url) as edge:
            opened = await edge.async_dnn_open(wire.DnnOpen(
                model=profile.model_id, split=RAW_SPLIT, codec="", device="cam<1>",
                queue_j=0.0, bits=4096, spectral_eff=3.0, deadline_ms=100.0))
            await edge.async_input(0, bytes(profile.raw_bytes))
            await edge.async_result()
            during = await asyncio.to_thread(status, e, None)
            await edge.async_dnn_close()
        after = await asyncio.to_thread(status, e, None)
    (row,) = during["sessions"]
    assert row["sid"] == opened.session and row["kind"] == "dnn"
    assert row["device"] == "cam<1>" and row["split"] == RAW_SPLIT and row["packets"] == 1
    splits = {s["split"]: s for s in during["dnn"]["splits"]}
    assert splits[RAW_SPLIT]["open_tasks"] == 1
    assert set(splits) >= set(profile.splits)
    assert all(s["open_tasks"] == 0 for i, s in splits.items() if i != RAW_SPLIT)
    assert during["engine"] is None and during["advice"] is None
    assert after["sessions"] == []
    assert after["dnn"]["tasks_opened"] == 1 and after["dnn"]["tails"] == 1
    assert all(s["open_tasks"] == 0 for s in after["dnn"]["splits"])
