"""``ondevice serve``'s queue: a queued request whose client leaves gives up its place at
once; a prompt that cannot fit is refused by its size before it is tokenized; tokenizing
waits for the queue. A real serve process on a real (slowed) edge, 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from _edge import EdgeProc
from _serve import ServeProc, serve

MODEL = "draft"
PROMPT = "Hello world"
FLAGS = ("--n-ctx", "1024", "--threads", "1", "--policy", "fixed")


def _send(s: ServeProc, body: dict, timeout_s: float = 120) -> http.client.HTTPConnection:
    """A request sent, its answer not yet read."""
    u = urlsplit(s.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
    conn.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    return conn


def _wait_health(s: ServeProc, key: str, value: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (got := s.health()[key]) != value:
        assert time.monotonic() < deadline, f"/health {key} stayed {got}, not {value}"
        time.sleep(0.05)


@pytest.fixture
def running(fixture_models: tuple[Path, Path], slow_edge: EdgeProc
            ) -> Iterator[tuple[ServeProc, http.client.HTTPConnection]]:
    """A serve with room for two queued requests, generating a long stream (its first chunk
    read: it is generating)."""
    with serve(fixture_models[1], *FLAGS, "--max-queue", "2", edge=slow_edge.url) as s:
        conn = _send(s, {"model": MODEL, "prompt": PROMPT, "max_tokens": 900,
                         "temperature": 0, "stream": True})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")
        yield s, conn
        _leave(conn)


def _leave(conn: http.client.HTTPConnection) -> None:
    """The client goes away (its socket closed), as `curl -m` does when its time is up."""
    if conn.sock is not None:
        conn.sock.close()
    conn.close()


def test_a_queued_request_that_leaves_frees_its_place(
        running: tuple[ServeProc, http.client.HTTPConnection]) -> None:
    s, _ = running
    leaving = [_send(s, {"model": MODEL, "prompt": PROMPT, "max_tokens": 4})
               for _ in range(2)]
    _wait_health(s, "queued", 2)
    for conn in leaving:
        _leave(conn)
    _wait_health(s, "queued", 0)  # before the running stream ends
    assert s.health()["generating"]
    late = _send(s, {"model": MODEL, "prompt": PROMPT, "max_tokens": 4})
    _wait_health(s, "queued", 1)  # queued, not 429
    result: list = []
    reader = threading.Thread(target=lambda: result.append(late.getresponse()))
    reader.start()
    lines = [x for x in s.lines if '"POST /v1/completions" 499' in x]
    assert len(lines) == 2 and all("prompt_tokens" not in x for x in lines), lines
    _leave(running[1])  # the running stream's client leaves; the late request runs
    reader.join(120)
    assert result and result[0].status == 200
    body = json.loads(result[0].read())  # it ran to its end: 4 tokens, or the model's end
    n, why = body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]
    assert (n, why) == (4, "length") or (0 < n <= 4 and why == "stop"), body


def test_an_oversized_prompt_is_refused_before_tokenizing(
        running: tuple[ServeProc, http.client.HTTPConnection]) -> None:
    """200 kB of prompt cannot fit 1024 tokens of the draft's longest token: 400 at once, no
    tokenizing (its log line has no prompt_tokens), even while another request generates."""
    s, _ = running
    before = len(s.lines)
    conn = _send(s, {"model": MODEL, "prompt": "word " * 40_000, "max_tokens": 4})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 400 and body["error"]["code"] == "context_length_exceeded", body
    assert "bytes" in body["error"]["message"]
    line = s.wait_for_line(lambda x: '"POST /v1/completions" 400' in x, start=before)
    assert "prompt_tokens" not in line, line
    assert s.health()["generating"]


def test_tokenizing_waits_for_the_queue(fixture_models: tuple[Path, Path],
                                        slow_edge: EdgeProc) -> None:
    """With no room to queue, a request behind a running one is 429 before its prompt is
    tokenized (its log line has no prompt_tokens)."""
    with serve(fixture_models[1], *FLAGS, "--max-queue", "0", edge=slow_edge.url) as s:
        conn = _send(s, {"model": MODEL, "prompt": PROMPT, "max_tokens": 900,
                         "temperature": 0, "stream": True})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")
        before = len(s.lines)
        other = _send(s, {"model": MODEL, "prompt": "word " * 900, "max_tokens": 4})
        assert other.getresponse().status == 429
        line = s.wait_for_line(lambda x: '"POST /v1/completions" 429' in x, start=before)
        assert "prompt_tokens" not in line, line
        _leave(conn)
