"""A stretch the edge generates alone (GELATO's stream action; every round of ``edge-only``)
ends within a decode step or two of a stop string, a client that leaves, or SIGTERM: the
device sends the edge ``stop``, the edge checks between steps, and ``usage`` counts the tokens
returned.

The edge here (``slow_edge``) waits before every frame it sends, so a stretch that ran on to
its end would take seconds and show in the edge's decode-step count (``/v1/info``), which the
tests read before and after each request. A real serve process, a real edge process, 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from _edge import EdgeProc
from _serve import ServeProc, serve

PROMPT = "Hello world"
MODEL = "draft"
LONG = 400
SLACK = 3  # steps a stop may take to reach the edge: the step in flight and the next
FLAGS = ("--n-ctx", "1024", "--threads", "1", "--policy", "edge-only")


@pytest.fixture(scope="module")
def server(fixture_models: tuple[Path, Path], slow_edge: EdgeProc) -> Iterator[ServeProc]:
    with serve(fixture_models[1], *FLAGS, edge=slow_edge.url) as s:
        yield s


def client(s: ServeProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def prefill_steps(server: ServeProc, slow_edge: EdgeProc) -> int:
    """Steps a request costs the edge beyond its generated tokens (its prompt's prefill)."""
    before = slow_edge.steps()
    done = client(server).completions.create(model=MODEL, prompt=PROMPT, max_tokens=4,
                                             temperature=0)
    assert done.usage.completion_tokens == 4
    return slow_edge.steps() - before - 4


def test_a_stop_string_ends_the_stretch_on_the_edge(server: ServeProc, slow_edge: EdgeProc,
                                                    prefill_steps: int) -> None:
    c = client(server)
    full = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40,
                                temperature=0).choices[0].text
    stop = full[10:13]
    for stream in (False, True):
        before = slow_edge.steps()
        if stream:
            chunks = list(c.completions.create(
                model=MODEL, prompt=PROMPT, max_tokens=LONG, temperature=0, stop=[stop],
                stream=True, stream_options={"include_usage": True}))
            text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
            n = chunks[-1].usage.completion_tokens
        else:
            done = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=LONG,
                                        temperature=0, stop=[stop])
            text, n = done.choices[0].text, done.usage.completion_tokens
            assert done.choices[0].finish_reason == "stop"
        generated = slow_edge.steps() - before - prefill_steps
        assert text == full[: full.index(stop)]
        assert 0 < n <= 40, n  # the tokens returned, not the stretch asked for
        assert generated <= n + SLACK, (generated, n)


def test_a_client_that_leaves_ends_the_stretch_on_the_edge(
        server: ServeProc, slow_edge: EdgeProc, prefill_steps: int) -> None:
    before_lines, before = len(server.lines), slow_edge.steps()
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                 body=json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": LONG,
                                  "temperature": 0, "stream": True}).encode())
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    conn.sock.close()  # type: ignore[union-attr]
    conn.close()
    line = server.wait_for_line(lambda x: '"POST /v1/completions" 499' in x, timeout_s=120,
                                start=before_lines)
    n = int(line.split("completion_tokens=")[1].split()[0])
    generated = slow_edge.steps() - before - prefill_steps
    assert n < LONG and generated <= n + SLACK, (generated, n, line)


def test_sigterm_ends_the_stretch_and_answers_the_stream(
        fixture_models: tuple[Path, Path], slow_edge: EdgeProc, prefill_steps: int) -> None:
    with serve(fixture_models[1], *FLAGS, edge=slow_edge.url) as s:
        before = slow_edge.steps()
        u = urlsplit(s.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                     body=json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": LONG,
                                      "temperature": 0, "stream": True,
                                      "stream_options": {"include_usage": True}}).encode())
        resp = conn.getresponse()
        first = resp.readline()
        assert resp.status == 200 and first.startswith(b"data: ")
        s.proc.send_signal(signal.SIGTERM)
        rest = (first + resp.read()).decode()
        conn.close()
        assert s.proc.wait(60) == 0, s.stderr()
    events = [e[len("data: "):] for e in rest.split("\n\n") if e]
    assert events[-1] == "[DONE]", rest[-500:]
    final, usage = json.loads(events[-3]), json.loads(events[-2])
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["coinfer"]["stop_reason"] == "interrupted"
    n = usage["usage"]["completion_tokens"]
    generated = slow_edge.steps() - before - prefill_steps
    assert n < LONG and generated <= n + SLACK, (generated, n)
