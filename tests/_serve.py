"""Test helper: a real ``ondevice serve`` process on 127.0.0.1 with its stdout log collected."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _listening import listening

from ondevice.common import jsonout


@dataclass
class ServeProc:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    stderr_path: Path
    lines: list[str] = field(default_factory=list)  # stdout so far (one per request)

    @property
    def base_url(self) -> str:
        """What ``openai.OpenAI(base_url=...)`` takes."""
        return self.url + "/v1"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def request_lines(self, path: str) -> list[str]:
        return [x for x in self.lines if f" {path}\" " in x]

    def wait_for_line(self, predicate, timeout_s: float = 30.0,  # type: ignore[no-untyped-def]
                      start: int = 0) -> str:
        """The first log line from ``lines[start]`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for x in list(self.lines[start:]):
                if predicate(x):
                    return x
            time.sleep(0.05)
        raise AssertionError(f"no such log line in {self.lines}")

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def terminate(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)


@contextlib.contextmanager
def serve(draft: Path, *args: str, edge: str | None = None,
          startup_s: float = 120.0) -> Iterator[ServeProc]:
    """``ondevice serve --draft DRAFT`` on 127.0.0.1, a free port, never browsing zeroconf
    (``--edge URL --no-discover``, or ``--no-discover`` alone: the draft alone)."""
    cmd = [sys.executable, "-m", "ondevice.cli", "serve", "--draft", str(draft),
           *(["--edge", edge] if edge else []), "--no-discover", "--host", "127.0.0.1",
           "--port", "0", *args]
    lines: list[str] = []
    with listening(cmd, what="ondevice serve", startup_s=startup_s, stop_s=30,
                   on_line=lines.append) as server:
        yield ServeProc(server.proc, server.url, server.log_path, lines)


def chat_twice(base_url: str, content: str, *, max_tokens: int, seed: int) -> tuple[Any, str]:
    """One greedy chat completion through the official ``openai`` client, then the same one
    streamed: ``(the whole completion, the streamed text)``, the first chunk's role checked."""
    import openai

    c = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    model = c.models.list().data[0].id
    messages = [{"role": "user", "content": content}]
    whole = c.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                      temperature=0, seed=seed)
    chunks = list(c.chat.completions.create(model=model, messages=messages,
                                            max_tokens=max_tokens, temperature=0, seed=seed,
                                            stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    return whole, "".join(ch.choices[0].delta.content or "" for ch in chunks)


def post_completion(url: str, body: dict, *, key: str | None = None,
                    timeout_s: float = 120.0) -> tuple[int, bytes]:
    """POST ``body`` (strict JSON) to ``url``'s ``/v1/completions``, with ``key`` as the
    bearer token if given: (HTTP status, raw body), error statuses included."""
    req = urllib.request.Request(
        url + "/v1/completions", data=jsonout.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
