"""Chat through ``ondevice serve`` with a draft that ``model-export llm quantize`` made from a
GGUF without a chat template: ``--chat-template FILE`` writes one (the official ``openai``
client then chats), Gemma 3's built-in template renders Gemma turns, the input's own template is
kept, and without any the summary says chat will be refused (and it is: 400).

The fixture models (a Llama-architecture toy with a GPT-2 byte-level vocabulary) have no
template and no chat tokens: a template's markers are tokenized as text, which is enough to
see which template rendered the prompt (its token count)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from _serve import chat_twice, serve

from ondevice.common.gguf_chat import (
    GEMMA3_CHAT_TEMPLATE,
    copy_with_chat_template,
    read_chat_template,
)

llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: "
                                "pip install 'coinfer[llm]'")

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")
QUESTION = "Name three colours."
RENDERED = {  # what llama.cpp's renderer makes of [user: QUESTION] with each template family
    "chatml": f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
    "gemma3": f"<start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n",
}
N = 12


def _quantize(src: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "export", "llm", "quantize", "--in", str(src),
                           "--type", "q8_0", "--out", str(out), "--no-progress", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


def _n_tokens(model_path: Path, text: str) -> int:
    from ondevice.common.llama_runtime import LlamaModel

    with LlamaModel(model_path) as m:
        return len(m.tokenize(text, parse_special=True))


def _chat(draft: Path) -> tuple[str, int]:
    """(text, prompt tokens) of one greedy chat completion, also streamed and compared."""
    with serve(draft, "--n-ctx", "512", "--threads", "1") as s:
        whole, streamed = chat_twice(s.base_url, QUESTION, max_tokens=N, seed=3)
    text = whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant" and text
    assert streamed == text
    return text, whole.usage.prompt_tokens


@pytest.mark.parametrize(("template", "family"),
                         [(CHATML, "chatml"), (GEMMA3_CHAT_TEMPLATE, "gemma3")])
def test_chat_with_a_draft_quantized_with_chat_template_file(
        fixture_models: tuple[Path, Path], tmp_path: Path, template: str, family: str) -> None:
    src = fixture_models[1]
    assert read_chat_template(src) is None
    (tmp_path / "t.jinja").write_text(template)
    out = tmp_path / "draft-chat.gguf"
    done = _quantize(src, out, "--chat-template", str(tmp_path / "t.jinja"))
    assert "chat template: the one given" in done.stdout
    assert read_chat_template(out) == template
    _, prompt_tokens = _chat(out)
    assert prompt_tokens == _n_tokens(out, RENDERED[family])
    other = next(v for k, v in RENDERED.items() if k != family)
    assert prompt_tokens != _n_tokens(out, other)


def test_quantize_keeps_the_inputs_template_unless_one_is_given(
        fixture_models: tuple[Path, Path], tmp_path: Path) -> None:
    src = tmp_path / "with-template.gguf"
    copy_with_chat_template(fixture_models[1], src, CHATML)
    kept = tmp_path / "kept.gguf"
    assert "chat template: the input's" in _quantize(src, kept).stdout
    assert read_chat_template(kept) == CHATML
    (tmp_path / "gemma.jinja").write_text(GEMMA3_CHAT_TEMPLATE)
    replaced = tmp_path / "replaced.gguf"
    _quantize(src, replaced, "--chat-template", str(tmp_path / "gemma.jinja"))
    assert read_chat_template(replaced) == GEMMA3_CHAT_TEMPLATE
    board = tmp_path / "board.gguf"  # --preset too; its sidecar hashes the final file
    done = subprocess.run([sys.executable, "-m", "export", "llm", "quantize", "--in", str(src),
                           "--preset", "rpi5", "--out", str(board), "--no-progress",
                           "--chat-template", str(tmp_path / "gemma.jinja")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert read_chat_template(board) == GEMMA3_CHAT_TEMPLATE
    sidecar = json.loads(Path(f"{board}.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(board.read_bytes()).hexdigest()


def test_quantize_without_any_template_says_chat_will_be_refused(
        fixture_models: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "plain.gguf"
    done = _quantize(fixture_models[1], out)
    assert "chat template: none (chat requests will be refused" in done.stdout
    assert "--chat-template FILE" in done.stdout
    assert read_chat_template(out) is None  # a Llama toy gets no Gemma template by guess
    with serve(out, "--n-ctx", "512", "--threads", "1") as s:
        c = openai.OpenAI(base_url=s.base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="chat template"):
            c.chat.completions.create(model=out.stem, max_tokens=4,
                                      messages=[{"role": "user", "content": QUESTION}])


def test_an_unreadable_chat_template_file_is_one_line_exit_2(
        fixture_models: tuple[Path, Path], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "export", "llm", "quantize", "--in",
                           str(fixture_models[1]), "--type", "q8_0", "--out",
                           str(tmp_path / "x.gguf"), "--chat-template",
                           str(tmp_path / "missing.jinja")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "missing.jinja" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.gguf").exists()
