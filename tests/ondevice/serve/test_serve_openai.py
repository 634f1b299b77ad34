"""``ondevice serve`` driven by the official ``openai`` client (and raw HTTP for the wire):
a real serve process, a real edge-server process, real sockets, all on 127.0.0.1.

The fixture models have no chat template: completions here, chat (and its 400 without a
template) in test_serve_chat.py.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from _edge import EdgeProc
from _serve import ServeProc, serve

PROMPT = "Hello world"
MODEL = "draft"  # the fixture draft's file name without .gguf
DEVICE_FLAGS = ("--n-ctx", "512", "--threads", "1", "--policy", "gelato", "--power-budget", "1")


@pytest.fixture(scope="module")
def server(fixture_models: tuple[Path, Path], edge: EdgeProc) -> ServeProc:
    with serve(fixture_models[1], *DEVICE_FLAGS, edge=edge.url) as s:
        yield s


def client(server: ServeProc, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0,
                         **kw)  # type: ignore[arg-type]


def generate_json(draft: Path, edge: EdgeProc, prompt: str, seed: int, max_tokens: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(draft),
         "--no-discover", "--edge", edge.url, *DEVICE_FLAGS, "--prompt", prompt,
         "--seed", str(seed), "--max-tokens", str(max_tokens), "--temperature", "0", "--json"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def post(server: ServeProc, path: str, body: bytes | dict, headers: dict | None = None
         ) -> tuple[int, dict]:
    """A raw request: (status, JSON body)."""
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json",
                                                   **(headers or {})})
    resp = conn.getresponse()
    status, payload = resp.status, json.loads(resp.read())
    conn.close()
    return status, payload


def sse_events(server: ServeProc, body: dict) -> tuple[http.client.HTTPResponse, list[str]]:
    """A streamed request read to its end: the response and its ``data:`` payloads."""
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    events = [block for block in raw.split("\n\n") if block]
    assert all(e.startswith("data: ") for e in events), raw
    return resp, [e[len("data: "):] for e in events]


def test_models(server: ServeProc) -> None:
    c = client(server)
    assert [m.id for m in c.models.list()] == [MODEL]
    assert c.models.retrieve(MODEL).owned_by == "coinfer"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o")


@pytest.mark.parametrize("prompt", [PROMPT, "The quick brown fox jumps"])
def test_completion_equals_ondevice_generate(server: ServeProc, fixture_models: tuple[Path, Path],
                                             edge: EdgeProc, prompt: str) -> None:
    """Streaming and not, the text is ``ondevice generate``'s for the same prompt and seed."""
    expected = generate_json(fixture_models[1], edge, prompt, seed=3, max_tokens=24)
    c = client(server)
    whole = c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0,
                                 seed=3)
    assert whole.choices[0].text == expected["text"]
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.prompt_tokens == expected["prompt_tokens"]
    assert whole.usage.completion_tokens == expected["n_tokens"] == 24
    extra = whole.model_extra["coinfer"]
    assert extra["edge"] == edge.url and extra["degraded"] is False
    assert extra["energy_source"] == "modelled" and extra["energy_j"] > 0
    assert extra["j_per_token"] == pytest.approx(extra["energy_j"] / 24)
    # None when gelato drafted nothing in this request (it may, on a loaded machine)
    assert extra["acceptance"] is None or 0 <= extra["acceptance"] <= 1
    chunks = list(c.completions.create(model=MODEL, prompt=prompt, max_tokens=24,
                                       temperature=0, seed=3, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == expected["text"]
    assert len(chunks) > 2  # streamed in pieces, not one blob
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-1])


def test_stream_wire_format(server: ServeProc) -> None:
    resp, events = sse_events(server, {"model": MODEL, "prompt": PROMPT, "max_tokens": 8,
                                       "temperature": 0, "stream": True,
                                       "stream_options": {"include_usage": True}})
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(ch["object"] == "text_completion" and ch["model"] == MODEL for ch in chunks)
    assert len({ch["id"] for ch in chunks}) == 1
    *texts, final, usage = chunks
    assert final["choices"][0]["finish_reason"] == "length" and "coinfer" in final
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8
    assert all(ch["choices"][0]["finish_reason"] is None for ch in texts)


def test_stop_strings(server: ServeProc) -> None:
    c = client(server)
    full = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0,
                                seed=1).choices[0].text
    stop = full[10:13]
    cut = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0,
                               seed=1, stop=[stop, "zzzz"])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.model_extra["coinfer"]["stop_reason"] == "stop"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0, seed=1, stop=stop,
        stream=True))
    assert streamed == cut.choices[0].text


@pytest.mark.parametrize(("body", "status", "param", "code", "words"), [
    (b"{not json", 400, None, None, "could not parse the JSON"),
    (b"[1, 2]", 400, None, None, "must be a JSON object"),
    ({"model": MODEL, "prompt": PROMPT, "max_tokens": "ten"}, 400, "max_tokens", None,
     "integer"),
    ({"model": MODEL, "prompt": 42}, 400, "prompt", None, "string"),
    ({"model": MODEL, "prompt": [1, 2, 3]}, 400, "prompt", None, "token arrays"),
    ({"model": MODEL, "prompt": PROMPT, "temperature": "hot"}, 400, "temperature", None,
     "number"),
    ({"model": MODEL, "prompt": PROMPT, "stream": "yes"}, 400, "stream", None, "boolean"),
    ({"prompt": PROMPT}, 400, "model", None, "required"),
    ({"model": "gpt-4o", "prompt": PROMPT}, 404, "model", "model_not_found", "gpt-4o"),
    ({"model": MODEL, "prompt": "word " * 600}, 400, "prompt", "context_length_exceeded",
     "maximum context length is 512"),
    ({"model": MODEL, "prompt": PROMPT, "top_p": 0.9, "presence_penalty": 0.5,
      "logit_bias": {"1": 5}}, 400, "logit_bias", "unsupported_parameter",
     "logit_bias, presence_penalty, top_p"),
    ({"model": MODEL, "prompt": PROMPT, "n": 2}, 400, "n", "unsupported_parameter", "n"),
    ({"model": MODEL, "prompt": PROMPT, "logprobs": 3}, 400, "logprobs",
     "unsupported_parameter", "logprobs"),
    ({"model": MODEL, "prompt": PROMPT, "frobnicate": 1}, 400, "frobnicate", None,
     "Unrecognized"),
])
def test_bad_requests_get_openai_errors(server: ServeProc, body: bytes | dict, status: int,
                                        param: str | None, code: str | None,
                                        words: str) -> None:
    got, payload = post(server, "/v1/completions", body)
    assert got == status, payload
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["code"] == code and words in err["message"], err


def test_errors_leave_the_server_serving(server: ServeProc) -> None:
    got, payload = post(server, "/v1/nothing-here", {})
    assert got == 404 and payload["error"]["type"] == "not_found"
    got, payload = post(server, "/v1/completions", {"model": MODEL, "prompt": "x" * (1 << 21)})
    assert got == 413 and "error" in payload
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", "/v1/completions")
    resp = conn.getresponse()
    assert resp.status == 405 and "error" in json.loads(resp.read())
    conn.close()
    c = client(server)
    with pytest.raises(openai.BadRequestError, match="top_p"):
        c.completions.create(model=MODEL, prompt=PROMPT, top_p=0.5)
    neutral = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, top_p=1, n=1,
                                   presence_penalty=0, frequency_penalty=0, best_of=1,
                                   echo=False, logit_bias={}, user="someone")
    assert neutral.usage.completion_tokens == 4
    assert server.health()["status"] == "ok"


def test_two_requests_share_the_controller_and_the_meter(server: ServeProc) -> None:
    c = client(server)
    first = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0)
    second = c.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=20,
                                  temperature=0.7, seed=5, stream=True)
    last = list(second)[-1]
    a, b = first.model_extra["coinfer"], last.model_extra["coinfer"]
    assert a["policy"] == b["policy"] == "gelato"
    assert a["policy_settings"]["queue_j"] > 0  # sim idle 3.3 W over a 1 W budget
    assert b["policy_settings_start"] == a["policy_settings"]  # the same queue, estimators
    assert b["policy_settings"]["queue_j"] != a["policy_settings"]["queue_j"]  # and it moved on
    assert a["meter_started_monotonic_s"] == b["meter_started_monotonic_s"]
    assert b["edge_connects"] == 0  # the edge socket was kept too


def test_one_log_line_per_request(server: ServeProc) -> None:
    before = len(server.lines)
    c = client(server)
    c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="other", prompt=PROMPT)
    server.wait_for_line(lambda x: '"POST /v1/completions" 404' in x, start=before)
    new = server.lines[before:]
    assert len(new) == 2, new
    assert '"POST /v1/completions" 200' in new[0] and "completion_tokens=3" in new[0]
    assert "energy_j=" in new[0] and "edge=http://127.0.0.1:" in new[0]


def test_a_client_that_leaves_cancels_its_generation(server: ServeProc) -> None:
    before = len(server.lines)
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                 body=json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 480,
                                  "temperature": 0, "stream": True}).encode())
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    t0 = time.monotonic()
    conn.sock.close()  # type: ignore[union-attr]
    conn.close()
    line = server.wait_for_line(lambda x: '"POST /v1/completions" 499' in x, start=before)
    assert time.monotonic() - t0 < 10
    n = int(line.split("completion_tokens=")[1].split()[0]) if "completion_tokens=" in line \
        else 0
    assert n < 480, line
    assert not server.health()["generating"]
    done = client(server).completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
    assert done.usage.completion_tokens == 4


def test_full_queue_is_429(fixture_models: tuple[Path, Path], edge: EdgeProc) -> None:
    with serve(fixture_models[1], "--n-ctx", "1024", "--threads", "1", "--policy", "fixed",
               "--max-queue", "0", edge=edge.url) as s:
        c = client(s)
        stream = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=900,
                                      temperature=0, stream=True)
        it = iter(stream)
        next(it)  # generating now
        with pytest.raises(openai.RateLimitError):
            c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
        stream.close()
        s.wait_for_line(lambda x: '"POST /v1/completions" 499' in x)
        assert c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4).usage


def test_api_key(fixture_models: tuple[Path, Path], edge: EdgeProc, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    with serve(fixture_models[1], "--n-ctx", "512", "--threads", "1", "--api-key-file",
               str(key), edge=edge.url) as s:
        with pytest.raises(openai.AuthenticationError):
            client(s).models.list()
        ok = openai.OpenAI(base_url=s.base_url, api_key="s3cret", max_retries=0)
        assert ok.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2).usage
        assert s.health()["status"] == "ok"  # /health needs no key


def _raw(s: ServeProc, body: bytes, auth: bytes) -> tuple[int, dict]:
    u = urlsplit(s.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.putheader("Authorization", auth)
    conn.endheaders(body)
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def test_input_that_is_not_text_is_a_client_error(fixture_models: tuple[Path, Path],
                                                  edge: EdgeProc, tmp_path: Path) -> None:
    """A lone surrogate in the prompt is 400; a key that is not UTF-8 is 401; neither is a
    500 or a traceback, and the server goes on."""
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    with serve(fixture_models[1], "--n-ctx", "512", "--threads", "1", "--api-key-file",
               str(key), edge=edge.url) as s:
        status, body = _raw(s, json.dumps({"model": MODEL, "prompt": "hi \ud800 x",
                                           "max_tokens": 2}).encode(), b"Bearer s3cret")
        assert status == 400 and "surrogate" in body["error"]["message"], body
        status, body = _raw(s, json.dumps({"model": MODEL, "prompt": PROMPT}).encode(),
                            b"Bearer \xff\xfe")
        assert status == 401 and body["error"]["code"] == "invalid_api_key", body
        status, body = _raw(s, json.dumps({"model": MODEL, "prompt": PROMPT,
                                           "max_tokens": 2}).encode(), b"Bearer s3cret")
        assert status == 200 and body["usage"]["completion_tokens"] == 2
        assert "Traceback" not in s.stderr()


def _edge_sessions(edge: EdgeProc) -> int:
    import urllib.request

    with urllib.request.urlopen(edge.url + "/v1/info", timeout=5) as r:
        return int(json.loads(r.read())["sessions"])


def test_sigterm_answers_the_request_in_flight_and_frees_the_edge(
    fixture_models: tuple[Path, Path], edge: EdgeProc
) -> None:
    with serve(fixture_models[1], "--n-ctx", "1024", "--threads", "1", "--policy", "fixed",
               edge=edge.url) as s:
        before = _edge_sessions(edge)
        c = client(s)
        chunks: list = []
        errors: list = []

        def consume() -> None:
            try:
                chunks.extend(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=900,
                                                   temperature=0, stream=True))
            except Exception as exc:  # reported below
                errors.append(exc)

        t = threading.Thread(target=consume)
        t.start()
        deadline = time.monotonic() + 30
        while not chunks and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _edge_sessions(edge) == before + 1  # a session is open for the generation
        assert s.terminate(60) == 0, s.stderr()
        t.join(30)
    assert not errors, errors
    final = chunks[-1]
    assert final.choices[0].finish_reason == "length"
    assert final.model_extra["coinfer"]["stop_reason"] == "interrupted"
    assert sum(len(ch.choices[0].text) for ch in chunks) > 0
    assert _edge_sessions(edge) == before  # the edge session was ended
    assert "Traceback" not in s.stderr()
    assert s.lines[-1] == "ondevice serve: stopped"


def test_chat_without_a_template_is_400(server: ServeProc) -> None:
    """The fixture models carry no chat template: a clear 400, not a guessed format."""
    c = client(server)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    err = info.value.body
    assert err["code"] == "chat_template_unavailable" and err["param"] == "messages"
    assert "no chat template" in err["message"]
    got, payload = post(server, "/v1/chat/completions",
                        {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]})
    assert got == 400 and payload["error"]["param"] == "messages[0].role"
    got, payload = post(server, "/v1/chat/completions",
                        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                         "tools": [{"type": "function"}]})
    assert got == 400 and payload["error"]["param"] == "tools"


def strict(text: str) -> object:
    """JSON as RFC 8259 has it: NaN, Infinity and -Infinity are refused (as JSON.parse does)."""
    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_every_json_is_strict(fixture_models: tuple[Path, Path], edge: EdgeProc) -> None:
    """The first completion of a fresh service (GELATO's acceptance model has judged nothing
    yet: its Brier scores are undefined), its stream, /v1/models, /health, and `generate
    --json` on a fresh process all parse with a strict parser."""
    with serve(fixture_models[1], *DEVICE_FLAGS, edge=edge.url) as s:
        u = urlsplit(s.url)
        bodies = []
        for method, path, body in (("POST", "/v1/completions", {"model": MODEL,
                                                                "prompt": PROMPT,
                                                                "max_tokens": 4}),
                                   ("GET", "/v1/models", None), ("GET", "/health", None)):
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Content-Type": "application/json"})
            bodies.append(conn.getresponse().read().decode())
            conn.close()
        _, events = sse_events(s, {"model": MODEL, "prompt": PROMPT, "max_tokens": 4,
                                   "stream": True})
    for text in [*bodies, *(e for e in events if e != "[DONE]")]:
        strict(text)
    done = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(fixture_models[1]),
         "--no-discover", "--edge", edge.url, *DEVICE_FLAGS, "--prompt", PROMPT,
         "--max-tokens", "2", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = strict(done.stdout.strip().splitlines()[-1])
    assert isinstance(report, dict) and "policy_settings" in report
