"""The edge's ``/metrics``: a real ``edge-server`` process with a token, driven by a raw
WebSocket client; after each thing the test does, the counters moved by exactly that, and
``promtool check metrics`` accepts the output."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from _edge import EdgeProc, edge_server
from _prometheus import Samples, check_metrics, get, scrape

from ondevice.common import wire
from ondevice.common.llama_runtime import LlamaModel

TOKEN = "edge-metrics-token"
DRAFTS = ([5, 6, 7], [8, 9], [10, 11, 12, 13])  # three rounds' drafted tokens
STRETCH = 6  # tokens of the edge-only stretch


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("edge-metrics") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def guarded_edge(fixture_models: tuple[Path, Path], token_file: Path) -> EdgeProc:
    with edge_server(fixture_models[0], "--token-file", str(token_file), "--max-sessions", "1",
                     "--n-ctx", "256") as e:
        yield e


@pytest.fixture(scope="module")
def vocab_hash(fixture_models: tuple[Path, Path]) -> str:
    with LlamaModel(fixture_models[1]) as m:
        return m.vocab_hash()


class Client:
    """One WebSocket to the edge, with the bearer token."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http://", "ws://") + wire.WS_PATH

    async def __aenter__(self) -> Client:
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})
        self.ws = await self.http.ws_connect(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.http.close()

    async def send(self, msg: wire.Message) -> None:
        await self.ws.send_bytes(wire.encode(msg))

    async def receive(self) -> wire.Message:
        msg = await self.ws.receive(timeout=30)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        return wire.decode(msg.data)

    async def ask(self, msg: wire.Message) -> wire.Message:
        await self.send(msg)
        return await self.receive()

    async def open(self, vocab: str, prompt: list[int]) -> wire.Message:
        return await self.ask(wire.Open(np.array(prompt, np.int32), vocab, "test-draft", 0.0,
                                        0, 4))


def _round(session: str, draft: list[int]) -> wire.Round:
    ids = np.array(draft, np.int32)
    return wire.Round(session, ids, ids[:, None].copy(), np.ones((len(draft), 1), np.float32))


def _metrics(edge: EdgeProc, texts: list[str]) -> Samples:
    """A scrape, parsed; its text is kept in ``texts`` for ``promtool`` at the end."""
    texts.append(scrape(edge.url, TOKEN))
    return Samples(texts[-1])


def test_metrics_need_the_token(guarded_edge: EdgeProc) -> None:
    assert get(guarded_edge.url + "/metrics")[0] == 401
    assert get(guarded_edge.url + "/metrics", "wrong")[0] == 401
    status, text = get(guarded_edge.url + "/metrics", TOKEN)
    assert status == 200
    assert "# TYPE coinfer_edge_decode_steps_total counter" in text


def test_metrics_public(fixture_models: tuple[Path, Path], token_file: Path) -> None:
    with edge_server(fixture_models[0], "--token-file", str(token_file), "--metrics-public",
                     "--n-ctx", "256") as e:
        status, text = get(e.url + "/metrics")
        assert status == 200
        assert Samples(text).value("coinfer_edge_kv_cells_capacity") > 0
        assert get(e.url + wire.INFO_PATH)[0] == 401  # the rest still needs it
    check_metrics(text)


async def test_counters_follow_what_happened(guarded_edge: EdgeProc, vocab_hash: str) -> None:
    texts: list[str] = []
    before = _metrics(guarded_edge, texts)
    assert before.value("coinfer_edge_sessions_running", kind="llm") == 0
    prompt = [1, 2, 3, 4, 5]
    async with Client(guarded_edge.url) as c:
        opened = await c.open(vocab_hash, prompt)
        assert isinstance(opened, wire.Opened), opened
        accepted = []
        for draft in DRAFTS:
            verdict = await c.ask(_round(opened.session, draft))
            assert isinstance(verdict, wire.Verdict), verdict
            accepted.append(verdict.accepted)
        await c.send(wire.Generate(opened.session, STRETCH))
        streamed = 0
        while True:
            frame = await c.receive()
            assert isinstance(frame, wire.Tokens), frame
            streamed += int(frame.ids.shape[0])
            if frame.done:
                break

        during = _metrics(guarded_edge, texts)
        # a second socket while the only place is taken; a foreign vocabulary
        async with Client(guarded_edge.url) as other:
            refused = await other.open(vocab_hash, prompt)
            assert isinstance(refused, wire.Error) and refused.code == "too-many-sessions"
        refused = await c.open("not-this-vocabulary", prompt)
        assert isinstance(refused, wire.Error) and refused.code == "vocab-mismatch"
        await c.send(wire.Close(opened.session))
    status, body = get(guarded_edge.url + wire.INFO_PATH, TOKEN)
    assert status == 200, body
    info = json.loads(body)
    after = _metrics(guarded_edge, texts)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    drafted = sum(len(d) for d in DRAFTS)
    assert during.value("coinfer_edge_sessions_running", kind="llm") == 1
    assert during.value("coinfer_edge_kv_cells_used") > 0
    assert after.value("coinfer_edge_kv_cells_used") == 0  # the closed session freed its cells
    assert after.value("coinfer_edge_kv_cells_capacity") == info["engine"]["kv_tokens"]
    assert after.value("coinfer_edge_sessions_running", kind="llm") == 0
    assert moved("coinfer_edge_sessions_opened_total", kind="llm") == 1
    assert moved("coinfer_edge_prompt_tokens_total") == len(prompt)
    assert moved("coinfer_edge_verify_rounds_total") == len(DRAFTS)
    assert moved("coinfer_edge_draft_tokens_received_total") == drafted
    assert moved("coinfer_edge_positions_verified_total") == drafted + len(DRAFTS)
    assert moved("coinfer_edge_draft_tokens_accepted_total") == sum(accepted)
    assert moved("coinfer_edge_round_tokens_total") == sum(accepted) + len(DRAFTS)
    per_pos = {int(k): v for k, v in
               after.labelled("coinfer_edge_draft_tokens_accepted_per_pos_total",
                              "position").items()}
    for pos in range(max(len(d) for d in DRAFTS)):
        assert per_pos.get(pos, 0) == sum(1 for a in accepted if a > pos), (pos, per_pos)
    assert moved("coinfer_edge_generated_tokens_total") == streamed == STRETCH
    assert moved("coinfer_edge_sessions_refused_total", reason="too-many-sessions") == 1
    assert after.value("coinfer_edge_sessions_refused_total", reason="vocab-mismatch") == 1
    # the engine's own count of its steps (/v1/info) is the counter's
    steps = after.value("coinfer_edge_decode_steps_total")
    assert steps == info["engine"]["steps"]
    assert moved("coinfer_edge_decode_steps_total") == (
        # a prefill of 4 tokens (one chunk), one step per round and per streamed token
        1 + len(DRAFTS) + STRETCH)
    assert after.value("coinfer_edge_step_tokens_count") == steps
    assert after.value("coinfer_edge_step_seconds_count") == steps
    assert after.value("coinfer_edge_step_tokens_sum") == pytest.approx(
        info["engine"]["mean_batch_tokens"] * steps)
    assert after.value("coinfer_edge_queue_seconds_count") == pytest.approx(
        info["engine"]["mean_batch_jobs"] * steps)
    assert after.value("coinfer_edge_step_tokens_bucket", le="+Inf") == steps
    for text in texts:  # last: without promtool the counters above are still checked
        check_metrics(text)


async def test_dnn_tasks_and_tails() -> None:
    """Two tasks on the split shipped in the package, each one tail (the whole model on a raw
    input): the counters say two and two, the tail histogram two observations."""
    from ondevice.common.dnn_profile import RAW_SPLIT, load_dnn
    from ondevice.dnn.shipped import DIGITS_DNN as split_dir
    from ondevice.edge.client import EdgeClient

    profile = load_dnn(split_dir)
    assert profile.raw_bytes > 0
    with edge_server(None, "--dnn", str(split_dir)) as e:
        before = Samples(scrape(e.url))
        async with EdgeClient(e.url) as edge:
            for _ in range(2):
                await edge.async_dnn_open(wire.DnnOpen(
                    model=profile.model_id, split=RAW_SPLIT, codec="", device="t", queue_j=0.0,
                    bits=4096, spectral_eff=3.0, deadline_ms=100.0))
                during = Samples(scrape(e.url))
                await edge.async_input(0, bytes(profile.raw_bytes))
                result = await edge.async_result()
                assert 0 <= result.top1 < 10
                await edge.async_dnn_close()
        text = scrape(e.url)
    after = Samples(text)
    assert before.value("coinfer_edge_dnn_tasks_total") == 0
    assert during.value("coinfer_edge_sessions_running", kind="dnn") == 1
    assert after.value("coinfer_edge_sessions_running", kind="dnn") == 0
    assert after.value("coinfer_edge_sessions_opened_total", kind="dnn") == 2
    assert after.value("coinfer_edge_dnn_tasks_total") == 2
    assert after.value("coinfer_edge_dnn_tails_total") == 2
    assert after.value("coinfer_edge_dnn_tail_seconds_count") == 2
    assert after.value("coinfer_edge_kv_cells_capacity") == 0  # no LLM on this edge
    check_metrics(text)
