"""Test helpers: a real ``edge-server`` process and reference decoding with llama-cpp-python.

The reference decodes with llama-cpp-python's own high-level ``Llama`` class, token by token,
independently of this project's ``llama_runtime``, so the tests compare against the library
and not against the code under test.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _listening import listening

from hw import Activity, open_meter
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner
from ondevice.llm.generate import GenerateRequest, Generation
from ondevice.llm.policies import FixedPolicy, Policy, RoundStats

# This test run's zeroconf site label: the edges tests advertise carry it and the devices in
# tests keep to it, so no other edge on this machine's loopback can take part.
SITE = f"coinfer-test-{os.getpid()}-{os.urandom(3).hex()}"


@dataclass
class EdgeProc:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def info(self) -> dict:
        """``GET /v1/info``."""
        import json
        import urllib.request

        with urllib.request.urlopen(self.url + "/v1/info", timeout=30) as r:
            return json.loads(r.read())

    def steps(self) -> int:
        """Decode steps the edge has run (prefill chunks and generated tokens)."""
        return int(self.info()["engine"]["steps"])

    def kill(self) -> None:
        """SIGKILL: the edge vanishes as a crashed or unplugged box would."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def edge_server(
    model: Path | None,
    *args: str,
    advertise: bool = False,
    host: str = "127.0.0.1",
    prefix: tuple[str, ...] = (),
    startup_s: float = 120.0,
) -> Iterator[EdgeProc]:
    """Run ``edge-server --model MODEL`` on ``host`` with a free port; yield it; stop it.

    ``model`` None runs it without ``--model`` (give ``--dnn DIR`` in ``args``).

    With ``advertise`` it announces itself over zeroconf on ``host``'s interface only, with
    this test run's site label ``SITE``: devices in tests browse with ``site=SITE``, so an
    edge that something else runs on this machine (a developer's own) is never picked.
    ``prefix`` runs it inside something, e.g. ``("ip", "netns", "exec", NS)``.
    """
    cmd = [
        *prefix, sys.executable, "-m", "edge_server.cli",
        *(["--model", str(model)] if model is not None else []),
        "--host", host, "--port", "0",
        *(["--interface", host, "--site", SITE] if advertise else ["--no-advertise"]), *args,
    ]
    with listening(cmd, what="edge-server", startup_s=startup_s, stop_s=15) as server:
        yield EdgeProc(server.proc, server.url, server.log_path)


class Reference:
    """Greedy decoding and next-token distributions straight from llama-cpp-python's ``Llama``."""

    def __init__(self, model: Path, n_ctx: int = 2048, kv_f32: bool = False) -> None:
        import llama_cpp

        f32 = llama_cpp.GGML_TYPE_F32
        kv = {"type_k": f32, "type_v": f32} if kv_f32 else {}
        self.llm = llama_cpp.Llama(
            model_path=str(model), n_ctx=n_ctx, n_batch=64, verbose=False, logits_all=False,
            flash_attn=True,  # as coinfer's runtime (llama.cpp's "auto" picks it on CPU)
            **kv,
        )

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=True, special=False)

    def next_logits(self, ids: list[int]) -> np.ndarray:
        """The target's logits for the token after ``ids`` (a fresh evaluation)."""
        self.llm.reset()
        self.llm.eval(ids)
        ptr = self.llm._ctx.get_logits()  # the last token's row: Llama marks only it
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).astype(np.float64)

    def greedy(self, prompt: str | list[int], n: int) -> list[int]:
        """The model's own greedy continuation through ``Llama.generate`` (llama.cpp's greedy
        sampler), stopping at an end-of-generation token. ``prompt`` is text or token ids."""
        out: list[int] = []
        if n <= 0:
            return out
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        for tok in self.llm.generate(ids, temp=0.0, reset=True):
            if self.llm._model.token_eos() == tok or self._is_eog(tok):
                break
            out.append(int(tok))
            if len(out) >= n:
                break
        return out

    def _is_eog(self, tok: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, tok))

    def close(self) -> None:
        self.llm.close()


class KillEdgeAfter(FixedPolicy):
    """A fixed-gamma policy that SIGKILLs an edge process after a number of rounds."""

    def __init__(self, gamma: int, edge: EdgeProc, rounds: int) -> None:
        super().__init__(gamma)
        self.edge, self.rounds, self.seen = edge, rounds, 0

    def observe(self, stats: RoundStats) -> None:
        self.seen += 1
        if self.seen == self.rounds:
            self.edge.kill()


class SeedRecorder:
    """Runs many short seeded generations (temperature 1) through one draft runner and one sim
    meter, for the tests of the output distribution."""

    def __init__(self, draft: Path, config: LlamaConfig) -> None:
        self.model = LlamaModel(draft)
        self.config = config
        self.runner = LlamaRunner(self.model, config)
        (self.eos,) = [t for t in range(self.model.n_vocab) if self.model.is_eog(t)]

    async def tokens(self, url: str, prompt: str, policy: Policy, seeds: range,
                     n: int) -> list[list[int]]:
        """Each seed's tokens, an end-of-generation token shown at the end where one stopped it
        (the report does not list it)."""
        out = []
        activity = Activity()
        async with open_meter("sim", activity=activity) as meter:
            for seed in seeds:
                req = GenerateRequest(prompt=prompt, max_tokens=n, temperature=1.0, seed=seed)
                gen = Generation(self.model, req, policy, edge_url=url, meter=meter,
                                 activity=activity, llama_config=self.config)
                report = await gen.run(self.runner)
                assert not report.degraded, report.errors
                out.append(report.tokens + ([self.eos] if report.stop_reason == "eos" else []))
        return out

    def close(self) -> None:
        self.runner.close()
        self.model.close()
