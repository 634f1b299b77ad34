"""The incremental detokenizer and the stop-string cut (ondevice/llm/textstream.py).

The detokenizer is fed a real model's tokens: the fixture vocabulary is GPT-2 byte-level BPE,
so a multi-byte character is split into single-byte tokens, and the pieces must not show a
replacement character for it while its bytes arrive one token at a time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ondevice.common.llama_runtime import LlamaModel
from ondevice.llm.textstream import StopCut, TextStream

TEXT = "naïve café, Grüße aus Köln: 日本語 and 🙂 ok"


@pytest.fixture(scope="module")
def draft_model(fixture_models: tuple[Path, Path]) -> LlamaModel:
    model = LlamaModel(fixture_models[1])
    yield model
    model.close()


def _split_characters(model: LlamaModel, tokens: list[int]) -> int:
    """How many tokens end inside a multi-byte character."""
    data, n = b"", 0
    for t in tokens:
        data += model.piece(t)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            n += 1
    return n


def test_split_characters_stream_whole(draft_model: LlamaModel) -> None:
    tokens = draft_model.tokenize(TEXT, add_special=False)
    assert _split_characters(draft_model, tokens) >= 5, "no token splits a character"
    stream = TextStream(draft_model.piece)
    pieces = [stream.feed([t]) for t in tokens]
    pieces.append(stream.flush())
    assert "".join(pieces) == draft_model.detokenize(tokens) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # some tokens completed no character: held back, not mangled
    assert stream.text == TEXT and stream.n_tokens == len(tokens)


@pytest.mark.parametrize("batch", [2, 3, 7])
def test_batches_of_tokens_as_rounds_commit_them(draft_model: LlamaModel, batch: int) -> None:
    tokens = draft_model.tokenize(TEXT, add_special=False)
    stream = TextStream(draft_model.piece)
    out = "".join(stream.feed(tokens[i:i + batch]) for i in range(0, len(tokens), batch))
    assert out + stream.flush() == TEXT


def test_a_stream_cut_mid_character_ends_like_one_shot_decoding(
    draft_model: LlamaModel
) -> None:
    tokens = draft_model.tokenize("ok 日本", add_special=False)
    cut = tokens[:-1]  # the last character's final byte never comes
    stream = TextStream(draft_model.piece)
    out = "".join(stream.feed([t]) for t in cut) + stream.flush()
    assert out == draft_model.detokenize(cut)
    assert out.endswith("\ufffd")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=6), max_size=40))
def test_incremental_equals_one_shot_for_any_bytes(chunks: list[bytes]) -> None:
    """Any bytes, valid UTF-8 or not, split anywhere: the same text as decoding them at once
    with errors="replace" (what a report's text is)."""
    stream = TextStream(lambda i: chunks[i])
    out = "".join(stream.feed([i]) for i in range(len(chunks))) + stream.flush()
    assert out == b"".join(chunks).decode("utf-8", errors="replace")


def _cut(stops: list[str], parts: list[str]) -> tuple[list[str], StopCut]:
    c = StopCut(stops)
    out = [c.push(p) for p in parts]
    out.append(c.finish())
    return out, c


def test_stop_string_across_pieces_is_cut_before_it() -> None:
    out, c = _cut(["END"], ["once upon E", "N", "D and more", " after"])
    assert "".join(out) == "once upon " and c.hit == "END" and c.text == "once upon "
    assert out[0] == "once upon "  # the "E" was held back, the rest passed on at once


def test_held_tail_that_is_no_stop_is_released() -> None:
    out, c = _cut(["END"], ["a E", "x", "EN"])
    assert out == ["a ", "Ex", "", "EN"] and c.hit is None


def test_earliest_of_several_stops_wins() -> None:
    out, c = _cut(["world", "lo w"], ["hello world"])
    assert "".join(out) == "hel" and c.hit == "lo w"


def test_no_stops_passes_everything_through() -> None:
    out, c = _cut(["", ""], ["a", "b"])
    assert out == ["a", "b", ""] and c.stops == ()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="abc", max_size=4), max_size=12),
       st.lists(st.text(alphabet="abc", min_size=1, max_size=3), min_size=1, max_size=3))
def test_stop_cut_equals_cutting_the_whole_text(parts: list[str], stops: list[str]) -> None:
    out, c = _cut(stops, parts)
    whole = "".join(parts)
    hits = [(whole.find(s), s) for s in stops if s in whole]
    expected = whole[: min(hits)[0]] if hits else whole
    assert "".join(out) == c.text == expected
