"""Byte-level BPE (GPT-2 style) for the fixture models: the byte alphabet, training, encoding.

The vocabulary this builds is what llama.cpp's `gpt2` tokenizer expects: token texts are bytes
mapped through GPT-2's bytes-to-unicode table (so a space is "Ġ" and a newline "Ċ"), merges are
"left right" strings in priority order, and every merge result is itself a token.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise

# ASCII-only stand-in for GPT-2's pre-tokenizer regex (llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT2 uses
# the same alternation with \p{L} and \p{N}); the training corpus is ASCII, so they agree there.
_PRETOKEN_RE = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each of the 256 byte values to one printable character.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 onwards in byte
    order (this is the table in OpenAI's `encoder.py` and llama.cpp's `unicode.cpp`).
    """
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def pretokenize(text: str) -> list[str]:
    """Split text into GPT-2 pre-tokens (words with their leading space, numbers, punctuation)."""
    return _PRETOKEN_RE.findall(text)


def _to_symbols(word: str, byte_map: dict[int, str]) -> tuple[str, ...]:
    return tuple(byte_map[b] for b in word.encode("utf-8"))


def _merge_word(word: tuple[str, ...], left: str, right: str) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
            out.append(left + right)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_merges(texts: Iterable[str], n_merges: int) -> list[tuple[str, str]]:
    """Learn up to `n_merges` BPE merges from `texts`, most frequent pair first.

    Deterministic: ties in pair frequency break by the lexicographically smallest pair. Stops
    early only if no pair occurs twice or more (the corpus is then exhausted).
    """
    byte_map = bytes_to_unicode()
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for piece in pretokenize(text):
            words[_to_symbols(piece, byte_map)] += 1
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for a, b in pairwise(word):
                pairs[(a, b)] += count
        if not pairs:
            break
        best_count = max(pairs.values())
        if best_count < 2:
            break
        best = min(p for p, c in pairs.items() if c == best_count)
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            merged[_merge_word(word, *best)] += count
        words = merged
    return merges


def encode(text: str, merges: Sequence[tuple[str, str]], token_ids: dict[str, int]) -> list[int]:
    """Token ids of `text` under the given merges (standard rank-ordered BPE per pre-token).

    `token_ids` maps token text (bytes-to-unicode form) to id and must contain all 256 bytes and
    every merge result.
    """
    byte_map = bytes_to_unicode()
    rank = {pair: i for i, pair in enumerate(merges)}
    ids: list[int] = []
    for piece in pretokenize(text):
        word = _to_symbols(piece, byte_map)
        while len(word) > 1:
            ranked = [(rank.get(p, len(rank)), p) for p in pairwise(word)]
            best_rank, best = min(ranked)
            if best_rank == len(rank):
                break
            word = _merge_word(word, *best)
        ids.extend(token_ids[s] for s in word)
    return ids
