"""Is speculative decoding between a draft and a target GGUF valid? Compare their tokenizers.

Speculative decoding sends token ids from the draft to the target, so an id must mean the same
thing on both sides: the same tokenizer model and pre-tokenizer, the same text, score and type
for every id, the same merges, special-token ids and add-BOS/EOS flags (otherwise the two
tokenize the prompt differently). `check_pair` reads both files' metadata with the `gguf`
package's GGUFReader (no weights are loaded) and compares every ``tokenizer.*`` key:

- tokens, scores, token types and merges element by element, naming the first differing ids
  with both texts;
- every other ``tokenizer.*`` key (``model``, ``pre``, ``*_token_id``, ``add_*``, ...) by value,
  showing the token text behind special-token ids;
- chat templates are not compared for validity (they do not change what an id means); a
  difference is reported as a note.

Padding is not a mismatch: when one vocabulary is longer and every extra tail token is of type
UNUSED (conversion pads vocabularies to a multiple of 64 or 128 this way), or when ids differ
only where both sides mark the token UNUSED, the pair is valid and a note says so. A draft
never proposes such ids in practice; `rank-drafts` masks ids past the shorter vocabulary.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export._errors import ExportError
from export._progress import Stages, show_progress
from export._quantize import check_gguf_file

_LIST_KEYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
)
_NOTE_ONLY_PREFIX = "tokenizer.chat_template"  # also matches tokenizer.chat_templates
_SHOW = 5  # differing ids named per category
_UNUSED = 5  # gguf.TokenType.UNUSED
_TYPE_NAMES = {1: "NORMAL", 2: "UNKNOWN", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer metadata of one GGUF file.

    ``tokens`` holds each id's raw UTF-8 text; ``scores`` float32 ``[n]`` and ``token_types``
    int32 ``[n]`` are None when the file has none; ``other`` maps every remaining
    ``tokenizer.*`` key to its value (lists for arrays).
    """

    path: Path
    architecture: str
    block_count: int | None
    tokens: tuple[bytes, ...]
    scores: np.ndarray | None
    token_types: np.ndarray | None
    merges: tuple[bytes, ...] | None
    other: dict[str, Any]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def model(self) -> str | None:
        value = self.other.get("tokenizer.ggml.model")
        return value if isinstance(value, str) else None

    def text(self, token_id: int) -> str:
        """Token `token_id` for humans: its text in quotes (escapes shown), or 'out of range'."""
        if not 0 <= token_id < self.n_tokens:
            return f"(no token {token_id}: vocabulary has {self.n_tokens})"
        return repr(self.tokens[token_id].decode("utf-8", "backslashreplace"))

    def type_name(self, token_id: int) -> str:
        if self.token_types is None or not 0 <= token_id < len(self.token_types):
            return "?"
        t = int(self.token_types[token_id])
        return _TYPE_NAMES.get(t, str(t))


@dataclass
class PairReport:
    """The verdict of `check_pair`. ``valid`` iff ``mismatches`` is empty; ``padded`` when the
    vocabularies differ only in UNUSED rows; ``notes`` are facts that do not make it invalid."""

    draft: Vocabulary
    target: Vocabulary
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    padded: bool = False

    @property
    def valid(self) -> bool:
        return not self.mismatches

    @property
    def shared_tokens(self) -> int:
        """Ids usable on both sides: the shorter vocabulary's size."""
        return min(self.draft.n_tokens, self.target.n_tokens)

    def summary(self) -> str:
        """Human-readable verdict: first line VALID/INVALID, then one line per finding."""
        d, t = self.draft, self.target
        if self.valid:
            kind = "padded vocabularies, " if self.padded else ""
            head = (
                f"VALID: {d.path.name} can draft for {t.path.name} ({kind}tokenizer "
                f"{d.model or '?'}, {self.shared_tokens} shared tokens)"
            )
        else:
            n = len(self.mismatches)
            head = (
                f"INVALID: {d.path.name} cannot draft for {t.path.name}: "
                f"{n} difference{'s' if n != 1 else ''}"
            )
        lines = [head]
        lines += [f"  mismatch: {m}" for m in self.mismatches]
        lines += [f"  note: {m}" for m in self.notes]
        return "\n".join(lines)


def open_reader(path: Path) -> Any:
    """A gguf.GGUFReader over `path`; ExportError for a missing, non-GGUF or corrupt file."""
    import gguf

    path = Path(path)
    check_gguf_file(path)
    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise ExportError(f"cannot parse GGUF file {path}: {e}") from e


def _numeric_array(f: Any, dtype: type[np.generic]) -> np.ndarray:
    if not f.data:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([f.parts[i] for i in f.data]).astype(dtype, copy=False)


def _string_array(f: Any) -> tuple[bytes, ...]:
    return tuple(f.parts[i].tobytes() for i in f.data)


def field_value(f: Any) -> Any:
    """A GGUFReader field's value: a scalar or str, or a list (raw bytes for string arrays, so
    token texts that are not valid UTF-8 survive a copy)."""
    import gguf

    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return list(_string_array(f))
        return _numeric_array(f, f.parts[f.data[0]].dtype.type).tolist() if f.data else []
    return f.contents()


def vocabulary_from_reader(path: Path, reader: Any) -> Vocabulary:
    """The `Vocabulary` of an open GGUFReader; ExportError if it has no token list."""
    fields = reader.fields
    if "tokenizer.ggml.tokens" not in fields:
        raise ExportError(f"{path} has no tokenizer (no tokenizer.ggml.tokens): not an LLM?")
    arch_field = fields.get("general.architecture")
    arch = str(arch_field.contents()) if arch_field is not None else "?"
    blocks = fields.get(f"{arch}.block_count")
    scores = fields.get("tokenizer.ggml.scores")
    types = fields.get("tokenizer.ggml.token_type")
    merges = fields.get("tokenizer.ggml.merges")
    other = {
        name: field_value(f)
        for name, f in fields.items()
        if name.startswith("tokenizer.") and name not in _LIST_KEYS
    }
    return Vocabulary(
        path=path,
        architecture=arch,
        block_count=int(blocks.contents()) if blocks is not None else None,
        tokens=_string_array(fields["tokenizer.ggml.tokens"]),
        scores=_numeric_array(scores, np.float32) if scores is not None else None,
        token_types=_numeric_array(types, np.int32) if types is not None else None,
        merges=_string_array(merges) if merges is not None else None,
        other=other,
    )


_CACHE_SIZE = 8
# (resolved path, size, mtime_ns) -> Vocabulary, oldest first: rank-drafts and make-draft
# compare several files against one target, and parsing Gemma's vocabulary takes seconds.
_cache: dict[tuple[str, int, int], Vocabulary] = {}


def read_vocabulary(
    path: Path, announce: Callable[[str], None] | None = None, *, reader: Any = None
) -> Vocabulary:
    """The tokenizer metadata of the GGUF file `path` (cached per process by path, size and
    mtime). `announce` gets one line before a file is parsed (Gemma's 262k-token vocabulary
    takes GGUFReader several seconds); `reader`, an open GGUFReader of `path`, saves parsing
    it again. ExportError for a missing, non-GGUF or token-less file.
    """
    path = Path(path)
    check_gguf_file(path)
    st = os.stat(path)
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    vocab = _cache.get(key)
    if vocab is None:
        if announce is not None:
            announce(f"reading the vocabulary of {path}")
        vocab = vocabulary_from_reader(path, reader if reader is not None else open_reader(path))
        if len(_cache) >= _CACHE_SIZE:
            del _cache[next(iter(_cache))]
        _cache[key] = vocab
    return dataclasses.replace(vocab, path=path)


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> int:
    """The first index where `a` and `b` differ (the shorter length if one is a prefix)."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _describe_ids(ids: np.ndarray, show: Callable[[int], str]) -> str:
    shown = "; ".join(show(int(i)) for i in ids[:_SHOW])
    more = f"; ... ({len(ids)} ids in all)" if len(ids) > _SHOW else ""
    return shown + more


def _compare_tokens(d: Vocabulary, t: Vocabulary, report: PairReport) -> None:
    n = report.shared_tokens
    if d.tokens[:n] == t.tokens[:n]:
        differ = np.zeros(0, dtype=np.int64)
    else:
        differ = np.array([i for i in range(n) if d.tokens[i] != t.tokens[i]], dtype=np.int64)
    if len(differ):
        # Ids both sides mark UNUSED may differ in text (e.g. '<unused5>' vs '[PAD5]').
        both_unused = np.zeros(len(differ), dtype=bool)
        if d.token_types is not None and t.token_types is not None:
            both_unused = (d.token_types[differ] == _UNUSED) & (t.token_types[differ] == _UNUSED)
        if both_unused.any():
            report.padded = True
            report.notes.append(
                f"{int(both_unused.sum())} ids differ only in the text of UNUSED placeholder "
                f"tokens (first: id {int(differ[both_unused][0])})"
            )
        real = differ[~both_unused]
        if len(real):
            report.mismatches.append(
                f"token text differs at {len(real)} id{'s' if len(real) != 1 else ''}: "
                + _describe_ids(real, lambda i: f"id {i}: draft {d.text(i)} vs target {t.text(i)}")
            )
    if d.n_tokens != t.n_tokens:
        longer, side = (d, "draft") if d.n_tokens > t.n_tokens else (t, "target")
        tail = np.arange(n, longer.n_tokens)
        types = longer.token_types
        unused = types is not None and bool(np.all(types[n:] == _UNUSED))
        sizes = f"draft {d.n_tokens} vs target {t.n_tokens} tokens"
        if unused:
            report.padded = True
            report.notes.append(
                f"vocabulary size {sizes}: the {side}'s {len(tail)} extra ids {n}-"
                f"{longer.n_tokens - 1} are all UNUSED padding; ids below {n} are shared"
            )
        else:
            bad = tail if types is None else tail[types[n:] != _UNUSED]
            first = int(bad[0])
            report.mismatches.append(
                f"vocabulary size {sizes}; the {side}'s extra ids {n}-{longer.n_tokens - 1} "
                f"are not padding: id {first} is {longer.text(first)} of type "
                f"{longer.type_name(first)}"
            )


def _compare_array(
    name: str,
    d_arr: np.ndarray | None,
    t_arr: np.ndarray | None,
    n: int,
    show: Callable[[int], str],
    report: PairReport,
    skip: np.ndarray | None = None,
) -> None:
    if d_arr is None and t_arr is None:
        return
    if d_arr is None or t_arr is None:
        side = "draft" if d_arr is None else "target"
        report.mismatches.append(f"{name}: the {side} has none, the other has {n}+ entries")
        return
    a, b = d_arr[:n], t_arr[:n]
    ne = (a != b) & ~(np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a != b
    if skip is not None:
        ne &= ~skip[:n]
    ids = np.flatnonzero(ne)
    if len(ids):
        report.mismatches.append(
            f"{name} differ at {len(ids)} id{'s' if len(ids) != 1 else ''}: "
            + _describe_ids(ids, show)
        )


def _format_value(key: str, value: Any, vocab: Vocabulary) -> str:
    if value is None:
        return "(absent)"
    if key.endswith("_token_id") and isinstance(value, int):
        return f"{value} {vocab.text(value)}"
    if isinstance(value, list):
        return f"[{len(value)} entries]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


_BASIC_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre")  # reported before the tokens


def _compare_other(d: Vocabulary, t: Vocabulary, report: PairReport, keys: Sequence[str]) -> None:
    for key in keys:
        dv, tv = d.other.get(key), t.other.get(key)
        if dv == tv:
            continue
        if key.startswith(_NOTE_ONLY_PREFIX):
            report.notes.append(f"{key} differs (chat formatting only; ids are unaffected)")
            continue
        detail = ""
        if isinstance(dv, list) and isinstance(tv, list):
            detail = f" (first difference at index {_first_difference(dv, tv)})"
        report.mismatches.append(
            f"{key}: draft {_format_value(key, dv, d)} vs target {_format_value(key, tv, t)}"
            + detail
        )


def compare_vocabularies(draft: Vocabulary, target: Vocabulary) -> PairReport:
    """Compare two vocabularies (pure); see the module docstring for the rules."""
    report = PairReport(draft=draft, target=target)
    d, t = draft, target
    n = report.shared_tokens
    _compare_other(d, t, report, _BASIC_KEYS)
    _compare_tokens(d, t, report)
    skip = None
    if d.token_types is not None and t.token_types is not None:
        skip = (d.token_types[:n] == _UNUSED) & (t.token_types[:n] == _UNUSED)
    if d.scores is not None and t.scores is not None:
        ds, ts = d.scores, t.scores

        def score(i: int) -> str:
            return f"id {i} {t.text(i)}: draft {float(ds[i]):g} vs target {float(ts[i]):g}"

    else:

        def score(i: int) -> str:
            return f"id {i}"

    _compare_array("token scores", d.scores, t.scores, n, score, report, skip)
    _compare_array(
        "token types",
        d.token_types,
        t.token_types,
        n,
        lambda i: f"id {i} {t.text(i)}: draft {d.type_name(i)} vs target {t.type_name(i)}",
        report,
    )
    if d.merges != t.merges:
        dm, tm = d.merges or (), t.merges or ()
        first = _first_difference(dm, tm)

        def merge(m: tuple[bytes, ...]) -> str:
            return repr(m[first].decode("utf-8", "backslashreplace")) if first < len(m) else "none"

        report.mismatches.append(
            f"BPE merges differ (draft {len(dm)}, target {len(tm)}); first at merge {first}: "
            f"draft {merge(dm)} vs target {merge(tm)}"
        )
    rest = sorted((set(d.other) | set(t.other)) - set(_BASIC_KEYS))
    _compare_other(d, t, report, rest)
    if d.architecture != t.architecture:
        report.notes.append(
            f"architectures differ (draft {d.architecture}, target {t.architecture}); "
            "fine for speculative decoding"
        )
    return report


def check_pair(
    draft_path: Path,
    target_path: Path,
    announce: Callable[[str], None] | None = None,
    *,
    progress: bool | None = None,
) -> PairReport:
    """Read both files' tokenizer metadata and compare them (`compare_vocabularies`).

    ExportError for a missing, non-GGUF or token-less input; an invalid pair is not an
    error but a report with ``valid`` False. `progress`: a two-step bar on stderr (reading
    each file takes seconds for a large vocabulary); None: only when stderr is a terminal.
    """
    draft_path, target_path = Path(draft_path), Path(target_path)
    with Stages("check-pair", 2, show_progress(progress)) as stages:
        stages.step(f"reading {draft_path.name}")
        draft = read_vocabulary(draft_path, announce)
        stages.step(f"reading {target_path.name}")
        target = read_vocabulary(target_path, announce)
    return compare_vocabularies(draft, target)
