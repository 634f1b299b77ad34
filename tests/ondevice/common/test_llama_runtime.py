"""``LlamaModel.piece``: what a token is as text. Gemma 3's vocabulary, as its GGUF comes from
Hugging Face: ``<start_of_image>`` and ``<table>`` are both user-defined tokens, yet one marks
an image and the other is five letters of HTML."""

from __future__ import annotations

from pathlib import Path

from ondevice.common.llama_runtime import MODALITY_MARKER, LlamaModel
from ondevice.llm.textstream import TextStream


def test_placeholders_of_other_modalities_are_not_text(gemma_path: Path) -> None:
    with LlamaModel(gemma_path) as m:
        ids = m.tokenize("a<start_of_image><end_of_image> <table> b",
                         add_special=False, parse_special=True)
        pieces = {t: m.piece(t) for t in ids}
        image = [t for t in ids if b"image" in m.token_text(t)]
        assert len(image) == 2, [m.token_text(t) for t in ids]
        assert all(pieces[t] == b"" for t in image)
        assert b"<table>" in pieces.values()  # a user-defined token that is text stays
        assert m.detokenize(ids) == "a <table> b"
        stream = TextStream(m.piece)
        assert "".join(stream.feed([t]) for t in ids) + stream.flush() == "a <table> b"
        end = m.tokenize("<end_of_turn>", add_special=False, parse_special=True)
        assert [m.piece(t) for t in end] == [b""]  # a control token, as llama.cpp renders it


def test_the_modality_marker_names_markers_only() -> None:
    for text in (b"<start_of_image>", b"<end_of_image>", b"<image_soft_token>",
                 b"<|vision_start|>", b"<|image_pad|>", b"<audio_soft_token>"):
        assert MODALITY_MARKER.fullmatch(text), text
    for text in (b"<table>", b"<h1>", b"<tool_call>", b"image", b"<image of a cat>",
                 b"<start_of_turn>"):
        assert not MODALITY_MARKER.fullmatch(text), text
