"""A thin owner of one llama.cpp model and one single-sequence context.

Used by both sides: the device's draft and the edge's target. It talks to llama.cpp's C API
through llama-cpp-python's ctypes bindings rather than the high-level ``Llama`` class, because
``Llama`` keeps a ``[n_batch, n_vocab]`` float32 score matrix (512 MB for Gemma's 262k
vocabulary) and re-evaluates more than a speculative round needs. Here a call to ``eval``
decodes a batch of tokens at the current end of the KV cache and marks only the positions whose
logits the caller asked for; the logits come back as a zero-copy view of llama.cpp's buffer.

One caller at a time (the asyncio code runs it in a worker thread). Every call into llama.cpp
holds the model's lock, which its contexts share, so ``close()`` from any thread waits for a
call in flight instead of freeing memory under it (Ctrl-C during a decode must not segfault);
a call after ``close()`` raises ``LlamaError``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ondevice.common import gguf_file

try:
    import llama_cpp
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "llama-cpp-python is not installed: pip install 'coinfer[llm]'"
    ) from exc

_llama_log = logging.getLogger("coinfer.llama_cpp")
# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line.
# llama.cpp's warnings are about model-file quirks (e.g. Gemma's '</s>' token type): shown
# with -v, not on every run.
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR, 5: logging.DEBUG}


@llama_cpp.llama_log_callback
def _route_llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Send llama.cpp's chatter to Python logging instead of stderr (warnings show with -v)."""
    lvl = _LEVELS.get(level, logging.DEBUG)
    if _llama_log.isEnabledFor(lvl):
        _llama_log.log(lvl, "%s", text.decode("utf-8", errors="replace").rstrip())


def route_llama_log() -> None:
    """(Re)install the routing of llama.cpp's log into Python logging (done at import)."""
    llama_cpp.llama_log_set(_route_llama_log, ctypes.c_void_p(0))


route_llama_log()

_backend_ready = False


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build has a GPU backend (CUDA, Metal, Vulkan, ...)."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def system_info() -> str:
    """llama.cpp's build line: backends and CPU features (e.g. "CPU : AVX2 = 1 | ...")."""
    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


class LlamaError(RuntimeError):
    """llama.cpp refused a model file or a batch."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LlamaConfig:
    """How to open a model. ``n_threads`` None means all cores."""

    n_ctx: int = 4096
    n_batch: int = 512
    n_threads: int | None = None
    n_gpu_layers: int = 0
    kv_type: str = "f16"  # KV cache element type: f16 (llama.cpp's default), f32, q8_0


KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # ggml_type ids


def _ensure_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


def check_gguf_file(path: Path) -> None:
    """Raise FileNotFoundError / LlamaError with a clear message unless ``path`` is a readable
    regular file that starts with the GGUF magic."""
    try:
        gguf_file.check_gguf_file(path)
    except gguf_file.GgufFileError as exc:
        raise LlamaError(str(exc)) from exc


_USER_DEFINED = 16  # llama_token_attr LLAMA_TOKEN_ATTR_USER_DEFINED (llama.h)
# A user-defined token that stands for another modality, not for text: Gemma 3's
# <start_of_image>, <end_of_image>, <image_soft_token>; Qwen-VL's <|vision_start|>, <|image_pad|>
MODALITY_MARKER = re.compile(rb"<\|?[a-z_]*(?:image|img|audio|video|vision)[a-z_]*\|?>")

_C = TypeVar("_C", bound="_Closing")
_F = TypeVar("_F", bound=Callable[..., Any])


def native_call(method: _F) -> _F:
    """Run ``method`` holding the object's lock, and only while its native memory is alive."""

    @functools.wraps(method)
    def locked(self: _Closing, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if not self._alive():
                raise LlamaError(f"{type(self).__name__} is closed")
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


class _Closing(ABC):
    """``with`` support and a finalizer for objects owning llama.cpp memory via ``close()``.

    ``_lock`` serializes every native call with ``close()`` (see the module docstring).
    """

    _lock: threading.RLock

    @abstractmethod
    def _alive(self) -> bool:
        """True until ``close()`` has freed the native memory."""

    @abstractmethod
    def _free(self) -> None:
        """Free the native memory (called once, under the lock, while alive)."""

    def close(self) -> None:
        """Free the native memory. Idempotent; waits for a call in flight in another thread."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before the lock existed
            return
        with lock:
            if self._alive():
                self._free()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class LlamaModel(_Closing):
    """A loaded GGUF model and its vocabulary; contexts (``LlamaRunner``) share it."""

    def __init__(self, path: str | os.PathLike[str], *, n_gpu_layers: int = 0) -> None:
        self._lock = threading.RLock()  # shared by the contexts made from this model
        self._model = None
        self.path = Path(path)
        check_gguf_file(self.path)
        _ensure_backend()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise LlamaError(f"llama.cpp could not load {self.path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(self._model)
        self.n_layer: int = llama_cpp.llama_model_n_layer(self._model)
        self.n_gpu_layers = n_gpu_layers
        self._eog = frozenset(
            t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t)
        )
        self._vocab_hash: str | None = None
        self._max_token_bytes: int | None = None
        self._pieces: dict[int, bytes] = {}  # token -> its bytes as text (``piece``)

    def _alive(self) -> bool:
        return bool(getattr(self, "_model", None))

    def _free(self) -> None:
        """Contexts made from the model must be closed first."""
        llama_cpp.llama_model_free(self._model)
        self._model = None

    @property
    def model_id(self) -> str:
        return self.path.name

    @property
    def bos(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self._vocab))

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    @native_call
    def tokenize(self, text: str, *, add_special: bool = True,
                 parse_special: bool = False) -> list[int]:
        """Token ids of ``text``; a BOS is prepended when the model asks for one. With
        ``parse_special`` a special token written in the text (``<start_of_turn>``) is that
        one token, else its letters are text."""
        raw = text.encode("utf-8")
        cap = len(raw) + 16
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special,
                                     parse_special)
        if n < 0:
            raise LlamaError(f"tokenization needs {-n} tokens, more than {cap}")
        return list(buf[:n])

    @native_call
    def chat_template(self) -> str | None:
        """The model's default chat template (GGUF ``tokenizer.chat_template``), or None."""
        raw = llama_cpp.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    @native_call
    def piece(self, token: int) -> bytes:
        """The bytes of one token as text. Special tokens render as nothing: control tokens
        (llama.cpp's rule: ``<end_of_turn>``) and the placeholders of other modalities, which
        a GGUF converted from Hugging Face keeps as user-defined tokens
        (``<start_of_image>``, ``<image_soft_token>``: see ``MODALITY_MARKER``); other
        user-defined tokens are text (Gemma's ``<table>`` is the five letters)."""
        known = self._pieces.get(token)
        if known is not None:
            return known
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        raw = buf.raw[:n]
        if (int(llama_cpp.llama_vocab_get_attr(self._vocab, token)) & _USER_DEFINED
                and MODALITY_MARKER.fullmatch(raw)):
            raw = b""
        self._pieces[token] = raw
        return raw

    @native_call
    def token_text(self, token: int) -> bytes:
        """The token's entry in the vocabulary, as stored (``▁x`` for " x", ``<0x0A>``)."""
        return llama_cpp.llama_vocab_get_text(self._vocab, token) or b""

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    @native_call
    def vocab_hash(self) -> str:
        """SHA-256 over every token's text and attributes: equal iff ids mean the same."""
        if self._vocab_hash is None:
            h = hashlib.sha256(f"n_vocab={self.n_vocab};".encode())
            for t in range(self.n_vocab):
                h.update(llama_cpp.llama_vocab_get_text(self._vocab, t) or b"")
                h.update(b"\x00")
                h.update(int(llama_cpp.llama_vocab_get_attr(self._vocab, t)).to_bytes(4, "little"))
            self._vocab_hash = h.hexdigest()[:32]
        return self._vocab_hash

    @native_call
    def max_token_bytes(self) -> int:
        """An upper bound on the UTF-8 bytes one token stands for: the longest token text in
        the vocabulary (a token's text is never shorter than its bytes: ``▁`` and ``Ġ``
        stand for one space, ``<0x0A>`` for one byte). A text of B bytes needs at least
        B / this many tokens."""
        if self._max_token_bytes is None:
            self._max_token_bytes = max(
                1, max(len(llama_cpp.llama_vocab_get_text(self._vocab, t) or b"")
                       for t in range(self.n_vocab)))
        return self._max_token_bytes


def _context_params(config: LlamaConfig, *, n_seq_max: int, unified_kv: bool) -> Any:
    """llama.cpp's context parameters for ``config`` (ValueError for an unknown KV type)."""
    threads = config.n_threads or os.cpu_count() or 1
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = config.n_ctx
    cparams.n_batch = config.n_batch
    cparams.n_ubatch = config.n_batch
    cparams.n_seq_max = n_seq_max
    cparams.kv_unified = unified_kv
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.no_perf = True
    try:
        cparams.type_k = cparams.type_v = KV_TYPES[config.kv_type]
    except KeyError:
        raise ValueError(
            f"unknown KV cache type {config.kv_type!r}; choose from {', '.join(KV_TYPES)}"
        ) from None
    return cparams


class LlamaContext(_Closing):
    """One llama.cpp context over a ``LlamaModel``: its batch buffer and its KV memory. The
    base of ``LlamaRunner`` (one sequence) and of the edge's pool (many sequences sharing one
    KV pool, ``edge_server._llama_pool``).

    ``n_seq_max`` sequences share the context; with ``unified_kv`` they share one KV pool of
    ``config.n_ctx`` cells (else each gets ``n_ctx / n_seq_max``). ``n_ctx`` is the context
    llama.cpp gave and ``n_batch`` the most tokens one decode takes: llama.cpp may lower the
    requested batch (e.g. to a small ``n_ctx``), so callers chunk by what it took. Raises
    ValueError for an unknown KV type and LlamaError when llama.cpp refuses (e.g. not enough
    memory) or the model is closed.
    """

    def __init__(self, model: LlamaModel, config: LlamaConfig, *, n_seq_max: int = 1,
                 unified_kv: bool = False) -> None:
        self._lock = model._lock
        self._ctx = None
        self.model = model
        self.config = config
        self.n_vocab = model.n_vocab
        cparams = _context_params(config, n_seq_max=n_seq_max, unified_kv=unified_kv)
        with model._lock:
            if not model._alive():
                raise LlamaError(f"model {model.model_id} is closed")
            self._ctx = llama_cpp.llama_init_from_model(model._model, cparams)
        if not self._ctx:
            raise LlamaError(f"llama.cpp could not create a context of {config.n_ctx} tokens")
        self.n_ctx: int = llama_cpp.llama_n_ctx(self._ctx)
        self.n_batch: int = min(
            llama_cpp.llama_n_batch(self._ctx), llama_cpp.llama_n_ubatch(self._ctx)
        )
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)

    def _alive(self) -> bool:
        return bool(getattr(self, "_ctx", None))

    def _free(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        self._ctx = None

    def _set_row(self, row: int, token: int, pos: int, seq: int, logits: bool) -> None:
        """Row ``row`` of the batch: ``token`` at position ``pos`` of sequence ``seq``, its
        logits wanted or not."""
        b = self._batch
        b.token[row] = token
        b.pos[row] = pos
        b.n_seq_id[row] = 1
        b.seq_id[row][0] = seq
        b.logits[row] = logits


class LlamaRunner(LlamaContext):
    """One context over a ``LlamaModel`` with one sequence (seq_id 0) whose KV cache it tracks.

    ``tokens`` lists the ids whose keys and values are in the cache, in position order.
    """

    def __init__(self, model: LlamaModel, config: LlamaConfig | None = None) -> None:
        super().__init__(model, config or LlamaConfig())
        self.tokens: list[int] = []

    # -- evaluation -----------------------------------------------------------------------

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @native_call
    def truncate(self, n: int) -> None:
        """Drop cached positions >= n (roll back rejected draft tokens)."""
        if n >= len(self.tokens):
            return
        if not llama_cpp.llama_memory_seq_rm(self._memory, 0, n, -1):
            raise LlamaError(f"llama.cpp could not remove positions {n}.. from the cache")
        del self.tokens[n:]

    @native_call
    def eval(self, tokens: Sequence[int], n_logits: int = 1) -> np.ndarray:
        """Decode ``tokens`` at positions n_past.. and return logits of the last ``n_logits``.

        Returns a read-only float32 view ``[n_logits, n_vocab]`` into llama.cpp's output
        buffer, valid until the next call of ``eval`` or ``truncate``; row i is the
        next-token logits after ``tokens[len(tokens) - n_logits + i]``.
        """
        n = len(tokens)
        if n == 0 or not 0 < n_logits <= n:
            raise ValueError(f"eval needs 1 <= n_logits <= len(tokens), got {n_logits} and {n}")
        if self.n_past + n > self.n_ctx:
            raise LlamaError(
                f"context full: {self.n_past} cached + {n} new tokens > n_ctx {self.n_ctx}"
            )
        bad = [t for t in tokens if not 0 <= t < self.n_vocab]
        if bad:
            raise LlamaError(f"token id {bad[0]} outside the vocabulary of {self.n_vocab}")
        first_out = n - n_logits
        step = self.n_batch
        last_chunk = n - ((n - 1) // step) * step
        if n_logits > last_chunk:
            raise ValueError(f"n_logits {n_logits} spans more than the last batch of {last_chunk}")
        b = self._batch
        for start in range(0, n, step):
            chunk = tokens[start : start + step]
            base = self.n_past
            for i, tok in enumerate(chunk):
                self._set_row(i, tok, base + i, 0, start + i >= first_out)
            b.n_tokens = len(chunk)
            rc = llama_cpp.llama_decode(self._ctx, b)
            if rc != 0:
                # On failure llama.cpp restores the cache except after fatal errors; resync.
                self._resync()
                raise LlamaError(f"llama_decode failed with status {rc}")
            self.tokens.extend(chunk)
        ptr = llama_cpp.llama_get_logits(self._ctx)
        view = np.ctypeslib.as_array(ptr, shape=(n_logits, self.n_vocab))
        view.flags.writeable = False
        return view

    def _resync(self) -> None:
        pos_max = llama_cpp.llama_memory_seq_pos_max(self._memory, 0)
        del self.tokens[pos_max + 1 :]
