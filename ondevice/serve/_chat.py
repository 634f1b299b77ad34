"""Chat messages to a prompt with the GGUF's own chat template, through llama.cpp's template API.

``llama_model_chat_template`` reads the model's ``tokenizer.chat_template``;
``llama_chat_apply_template`` renders the messages with llama.cpp's built-in implementation
of that template (it recognises the common families: ChatML, Llama 2/3, Gemma, Mistral, Phi,
...; it does not run Jinja). A model without a template, or with one llama.cpp does not
recognise, gets ``ChatTemplateError``: the server answers 400 rather than guess a format.

The rendered prompt carries the template's special tokens as text (``<start_of_turn>``...),
so it is tokenized with special-token parsing on (``Device.tokenize(..., parse_special=True)``).
The calls need the model's native handle: they hold the model's lock as every ``LlamaModel``
method does (see ``ondevice.common.llama_runtime``), so a model is never freed under them.

Synchronous (llama.cpp calls): run them in a worker thread.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import llama_cpp

from ondevice.common.llama_runtime import LlamaModel


class ChatTemplateError(ValueError):
    """The model has no chat template, or one llama.cpp cannot render."""


def chat_template(model: LlamaModel) -> str | None:
    """The model's default chat template (``tokenizer.chat_template``), or None."""
    return model.chat_template()


def render_chat(model: LlamaModel, messages: Sequence[tuple[str, str]]) -> str:
    """``messages`` ((role, content) pairs) as the prompt text the model's template makes,
    ending with the opening of the assistant's turn. Raises ChatTemplateError."""
    template = chat_template(model)
    if template is None:
        raise ChatTemplateError(
            f"model {model.model_id} has no chat template (tokenizer.chat_template): use "
            "/v1/completions with a prompt you format yourself, or a GGUF that carries one")
    tmpl = template.encode("utf-8")
    encoded = [(role.encode("utf-8"), content.encode("utf-8")) for role, content in messages]
    chat = (llama_cpp.llama_chat_message * len(encoded))()
    for i, (role, content) in enumerate(encoded):
        chat[i].role = role
        chat[i].content = content
    size = 2 * sum(len(r) + len(c) for r, c in encoded) + 256
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_chat_apply_template(tmpl, chat, len(encoded), True, buf, size)
        if n < 0:
            raise ChatTemplateError(
                f"llama.cpp does not support the chat template of model {model.model_id}; use "
                "/v1/completions with a prompt you format yourself")
        if n <= size:
            return buf.raw[:n].decode("utf-8", errors="replace")
        size = n
    raise ChatTemplateError("the chat template's output kept growing")  # pragma: no cover

