"""Text from a stream of committed tokens: an incremental detokenizer and a stop-string cut.

``TextStream`` turns token ids into text as they are committed. A token's bytes (llama.cpp's
``token_to_piece``) need not end on a character boundary: a byte-level BPE vocabulary has
tokens that are single bytes of a multi-byte UTF-8 character. The bytes go through one
incremental UTF-8 decoder (``errors="replace"``), which holds an incomplete character back
until its last byte arrives; ``flush`` ends the stream. The concatenation of everything
``feed`` and ``flush`` return equals the one-shot decoding of all the bytes, which is what
``LlamaModel.detokenize`` (and so a report's ``text``) computes. Cost per token: one
``piece`` call and the decoder's work on a few bytes.

``StopCut`` implements OpenAI's ``stop``: text is passed on as it comes, except a tail that
could still turn into a stop string, which is held back until it does not; at the first stop
string the text ends just before it.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Sequence


class TextStream:
    """Token ids in, text out, incrementally (see the module docstring).

    ``piece(token) -> bytes`` is the vocabulary's bytes of one token (``LlamaModel.piece``).
    """

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self.n_tokens = 0

    def feed(self, tokens: Iterable[int]) -> str:
        """The text the tokens complete (may be "" while a character is incomplete)."""
        data = b""
        for t in tokens:
            data += self._piece(t)
            self.n_tokens += 1
        text = self._decoder.decode(data)
        if text:
            self._parts.append(text)
        return text

    def flush(self) -> str:
        """End of the stream: an incomplete character left over becomes U+FFFD."""
        text = self._decoder.decode(b"", final=True)
        if text:
            self._parts.append(text)
        return text

    @property
    def text(self) -> str:
        """Everything returned so far."""
        return "".join(self._parts)


class StopCut:
    """Cuts a streamed text at the first of ``stops`` (empty strings are ignored).

    ``push(text)`` returns what may be passed on now; ``finish()`` what is left at the end of
    the stream. Once a stop string is seen, ``hit`` is it, the text returned so far is
    everything before it, and every later call returns "".
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = tuple(s for s in stops if s)
        self.hit: str | None = None
        self._held = ""
        self._parts: list[str] = []

    def _give(self, text: str) -> str:
        if text:
            self._parts.append(text)
        return text

    def _first_hit(self, buf: str) -> tuple[int, str] | None:
        """The earliest complete stop string in ``buf`` (the longest at equal starts)."""
        hits = [(buf.find(s), -len(s), s) for s in self.stops if s in buf]
        if not hits:
            return None
        i, _, s = min(hits)
        return i, s

    def _pending_start(self, buf: str) -> int:
        """Where the earliest tail of ``buf`` that is a proper prefix of a stop string starts
        (``len(buf)`` when none is): text from there on may still become a stop string."""
        for j in range(max(0, len(buf) - max(map(len, self.stops)) + 1), len(buf)):
            tail = buf[j:]
            if any(len(tail) < len(s) and s.startswith(tail) for s in self.stops):
                return j
        return len(buf)

    def push(self, text: str) -> str:
        """The part of ``held + text`` that can no longer be, or lie after, the start of a
        stop string. A stop string found whole is a hit only once no other one could still
        complete at an earlier start (stop "acb" in "ac" + "b" beats stop "c")."""
        if self.hit is not None:
            return ""
        if not self.stops:
            return self._give(text)
        buf = self._held + text
        first = self._first_hit(buf)
        pend = self._pending_start(buf)
        if first is not None and first[0] <= pend:
            self.hit, self._held = first[1], ""
            return self._give(buf[: first[0]])
        self._held = buf[pend:]
        return self._give(buf[:pend])

    def finish(self) -> str:
        """End of the stream: the held-back tail, cut at a stop string it holds."""
        held, self._held = self._held, ""
        if self.hit is not None:
            return ""
        first = self._first_hit(held) if self.stops else None
        if first is not None:
            self.hit = first[1]
            held = held[: first[0]]
        return self._give(held)

    @property
    def text(self) -> str:
        """Everything returned so far."""
        return "".join(self._parts)
