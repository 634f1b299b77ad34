"""The device-edge wire format, defined once and imported by both sides.

One persistent WebSocket per generation session carries binary frames. Each frame is one
msgpack map whose key ``"t"`` names the message type. Token ids cross the wire, never text.
Arrays travel as raw little-endian bytes (msgpack ``bin``) so a round costs one copy, not a
Python list per token.

Frame layout (all maps; ``?`` marks optional keys):

=============  =========  ==========================================================================
type ``t``     direction  keys (wire type, unit)
=============  =========  ==========================================================================
``open``       dev->edge  ``v`` protocol version (int); ``prompt`` token ids (bin int32[n]);
                          ``vocab`` vocabulary hash (str); ``draft`` draft model id (str);
                          ``temp`` temperature (float); ``seed`` (int); ``top_k`` (int)
``opened``     edge->dev  ``session`` (str); ``model`` target id (str); ``n_ctx`` (int);
                          ``prefill_ms`` (float, ms)
``round``      dev->edge  ``session`` (str); ``draft`` drafted ids (bin int32[n]);
                          ``q_ids`` top-k ids per position (bin int32[n*k]);
                          ``q_probs`` their draft probabilities (bin float32[n*k]); ``k`` (int)
``verdict``    edge->dev  ``accepted`` (int, 0..n); ``token`` the next token (int);
                          ``verify_ms`` target batch time (float, ms); ``edge_ms`` time from frame
                          in to frame out (float, ms); optional, since issue 12 (absent from an
                          older edge): ``queue_ms`` time the work waited for its batch (float,
                          ms); ``batch`` tokens in the batched decode that verified it (int);
                          ``advise`` (bool): true while the edge is the fleet's bottleneck and
                          a verified position costs it more per produced token than a
                          streamed one, i.e. the fleet goes faster if its sessions stream;
                          since issue 22, at temperature 0: ``ties`` (int) the tokens this frame
                          commits whose greedy choice was a near-tie for the target (top two
                          logits within ``speculative.TIE_GAP``)
``generate``   dev->edge  ``session`` (str); ``max_tokens`` (int): the target generates alone
``tokens``     edge->dev  ``ids`` (bin int32[m]); ``done`` (bool); ``verify_ms`` (float, ms);
                          optional ``queue_ms`` (float, ms), ``batch`` (int), ``advise``
                          (bool) and ``ties`` (int) as in ``verdict``
``stop``       dev->edge  ``session`` (str): end the ``generate`` stretch in progress after the
                          decode step in flight (the edge checks between steps); its last
                          ``tokens`` frame (``done`` true) follows. Ignored when no stretch is
                          in progress (it ended first). Since issue 22: an older edge answers
                          ``bad-frame``
``close``      dev->edge  ``session`` (str)
``error``      edge->dev  ``code`` (str, one of ``ERROR_CODES``); ``message`` (str)
``dnn_open``   dev->edge  one split-inference task. ``v`` protocol version (int); ``model`` DNN
                          model id (str); ``split`` split index (int, 0 = the raw input, the
                          whole model on the edge); ``codec`` the split's codec fingerprint (str);
                          ``device`` device id (str); ``queue`` the device's energy queue Q
                          (float, J); ``bits`` bits it means to send (int); ``eff`` its spectral
                          efficiency at the full band (float, bit/s/Hz); ``deadline_ms`` (float,
                          ms left; 0 = none)
``dnn_opened`` edge->dev  ``session`` (str); ``share`` the device's bandwidth share (float, 0..1);
                          ``users`` devices sharing the edge now (int); ``tail_ms`` mean tail
                          run time of this split (float, ms)
``feature``    dev->edge  ``session`` (str); ``packet`` one ``ondevice.common.feature_codec`` packet
                          (bin); ``eval`` run the tail once this packet is in (bool)
``input``      dev->edge  ``session`` (str); ``offset`` (int, bytes); ``data`` a slice of the raw
                          uint8 input [C, H, W] (bin); the model runs once all bytes are in
``result``     edge->dev  ``session`` (str); ``seq`` packets received when the tail ran (int);
                          ``top1`` class (int); ``conf`` its probability (float); ``entropy``
                          (float, nats); ``channels`` channels complete (int); ``tail_ms``
                          (float, ms); ``edge_ms`` time from frame in to frame out (float, ms)
=============  =========  ==========================================================================

At temperature 0 the device sends ``k = 1`` and probability 1.0 for its argmax token.

A DNN session lives for one task: ``dnn_open``, then ``feature`` (or ``input``) frames, each
answered by a ``result`` when it asks for an evaluation (the last packet always does), then
``close``. The device may send packets without waiting for results (they come back in order);
results of a task it already closed may still arrive and carry that task's ``session``. A
``feature`` frame with an empty ``packet`` only asks for an evaluation of what is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
WS_PATH = "/v1/session"
INFO_PATH = "/v1/info"

ERROR_CODES = frozenset(
    {
        "bad-frame",  # not msgpack, not a map, unknown type, missing or ill-typed key
        "protocol",  # protocol version the edge does not speak
        "unknown-session",  # a round or close naming a session this socket did not open
        "vocab-mismatch",  # draft and target vocabularies differ
        "draft-too-long",  # more drafted tokens than the edge's limit
        "token-out-of-range",  # a token id outside the target vocabulary
        "prompt-too-long",  # prompt longer than the edge's limit or context
        "context-full",  # the session's context window is used up
        "too-many-sessions",
        "kv-full",  # the edge's shared KV pool has no room for the session or its step
        "unauthorized",  # missing or wrong bearer token (HTTP 401 before the socket opens)
        "tls-fingerprint",  # device side: the edge's certificate is not the pinned one
        "insecure",  # device side: a TLS pin on http://, or a token in plaintext to another host
        "idle",  # the session sent nothing for the idle timeout and is closed
        "internal",  # a bug on the edge; the session is closed, the server goes on
        "unknown-model",  # a DNN model or split this edge does not serve
        "codec-mismatch",  # the device's feature codec (shape, order, scales) differs
        "bad-packet",  # a feature packet or input slice that does not fit the split
    }
)

_I32 = np.dtype("<i4")
_F32 = np.dtype("<f4")


class WireError(ValueError):
    """A frame that does not follow this module's layout; ``code`` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EdgeError(RuntimeError):
    """The edge answered with an ``error`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"edge refused ({code}): {message}")
        self.code = code
        self.message = message


@dataclass(slots=True)
class Open:
    prompt: np.ndarray  # [n] int32
    vocab_hash: str
    draft_model: str
    temperature: float
    seed: int
    top_k: int
    version: int = PROTOCOL_VERSION


@dataclass(slots=True)
class Opened:
    session: str
    model: str
    n_ctx: int
    prefill_ms: float


@dataclass(slots=True)
class Round:
    session: str
    draft: np.ndarray  # [n] int32
    q_ids: np.ndarray  # [n, k] int32
    q_probs: np.ndarray  # [n, k] float32


@dataclass(slots=True)
class Verdict:
    accepted: int
    token: int
    verify_ms: float
    edge_ms: float
    queue_ms: float | None = None  # waited for a batch (None: the edge did not say)
    batch: int | None = None  # tokens in the decode that verified this round
    advise: bool | None = None  # the edge advises its sessions to stream (None: did not say)
    ties: int | None = None  # near-tie greedy tokens among those committed (None: not counted)


@dataclass(slots=True)
class Generate:
    session: str
    max_tokens: int


@dataclass(slots=True)
class Tokens:
    ids: np.ndarray  # [m] int32
    done: bool
    verify_ms: float = 0.0
    queue_ms: float | None = None
    batch: int | None = None
    advise: bool | None = None
    ties: int | None = None


@dataclass(slots=True)
class Stop:
    session: str


@dataclass(slots=True)
class Close:
    session: str


@dataclass(slots=True)
class Error:
    code: str
    message: str = field(default="")


@dataclass(slots=True)
class DnnOpen:
    model: str
    split: int  # 0 = raw input, the whole model on the edge
    codec: str  # ondevice.common.dnn_profile.codec_fingerprint of the split ("" for split 0)
    device: str
    queue_j: float
    bits: int
    spectral_eff: float  # bit/s/Hz at the full band
    deadline_ms: float
    version: int = PROTOCOL_VERSION


@dataclass(slots=True)
class DnnOpened:
    session: str
    share: float
    users: int
    tail_ms: float


@dataclass(slots=True)
class Feature:
    session: str
    packet: bytes
    evaluate: bool


@dataclass(slots=True)
class Input:
    session: str
    offset: int
    data: bytes


@dataclass(slots=True)
class Result:
    session: str
    seq: int
    top1: int
    confidence: float
    entropy: float
    channels: int
    tail_ms: float
    edge_ms: float


Message = (
    Open | Opened | Round | Verdict | Generate | Tokens | Stop | Close | Error
    | DnnOpen | DnnOpened | Feature | Input | Result
)


def _arr(a: np.ndarray, dtype: np.dtype) -> bytes:
    return np.ascontiguousarray(a, dtype=dtype).tobytes()


def encode(msg: Message) -> bytes:
    """Serialize one message to a binary frame."""
    if isinstance(msg, Round):
        n = int(msg.draft.shape[0])
        k = int(msg.q_ids.shape[1]) if msg.q_ids.ndim == 2 and n else 0
        body: dict[str, Any] = {
            "t": "round",
            "session": msg.session,
            "draft": _arr(msg.draft, _I32),
            "q_ids": _arr(msg.q_ids, _I32),
            "q_probs": _arr(msg.q_probs, _F32),
            "k": k,
        }
    elif isinstance(msg, Verdict):
        body = {
            "t": "verdict",
            "accepted": msg.accepted,
            "token": msg.token,
            "verify_ms": msg.verify_ms,
            "edge_ms": msg.edge_ms,
            **_load_keys(msg.queue_ms, msg.batch, msg.advise, msg.ties),
        }
    elif isinstance(msg, Open):
        body = {
            "t": "open",
            "v": msg.version,
            "prompt": _arr(msg.prompt, _I32),
            "vocab": msg.vocab_hash,
            "draft": msg.draft_model,
            "temp": float(msg.temperature),
            "seed": int(msg.seed),
            "top_k": int(msg.top_k),
        }
    elif isinstance(msg, Opened):
        body = {
            "t": "opened",
            "session": msg.session,
            "model": msg.model,
            "n_ctx": msg.n_ctx,
            "prefill_ms": msg.prefill_ms,
        }
    elif isinstance(msg, Generate):
        body = {"t": "generate", "session": msg.session, "max_tokens": msg.max_tokens}
    elif isinstance(msg, Tokens):
        body = {
            "t": "tokens",
            "ids": _arr(msg.ids, _I32),
            "done": msg.done,
            "verify_ms": msg.verify_ms,
            **_load_keys(msg.queue_ms, msg.batch, msg.advise, msg.ties),
        }
    elif isinstance(msg, Stop):
        body = {"t": "stop", "session": msg.session}
    elif isinstance(msg, Close):
        body = {"t": "close", "session": msg.session}
    elif isinstance(msg, Error):
        body = {"t": "error", "code": msg.code, "message": msg.message}
    else:
        body = _encode_dnn(msg)
    return msgpack.packb(body, use_bin_type=True)


def _encode_dnn(msg: Message) -> dict[str, Any]:
    if isinstance(msg, Feature):
        return {"t": "feature", "session": msg.session, "packet": bytes(msg.packet),
                "eval": bool(msg.evaluate)}
    if isinstance(msg, Result):
        return {"t": "result", "session": msg.session, "seq": msg.seq, "top1": msg.top1,
                "conf": float(msg.confidence),
                "entropy": float(msg.entropy), "channels": msg.channels,
                "tail_ms": float(msg.tail_ms), "edge_ms": float(msg.edge_ms)}
    if isinstance(msg, DnnOpen):
        return {"t": "dnn_open", "v": msg.version, "model": msg.model, "split": msg.split,
                "codec": msg.codec, "device": msg.device, "queue": float(msg.queue_j),
                "bits": int(msg.bits), "eff": float(msg.spectral_eff),
                "deadline_ms": float(msg.deadline_ms)}
    if isinstance(msg, DnnOpened):
        return {"t": "dnn_opened", "session": msg.session, "share": float(msg.share),
                "users": msg.users, "tail_ms": float(msg.tail_ms)}
    if isinstance(msg, Input):
        return {"t": "input", "session": msg.session, "offset": msg.offset,
                "data": bytes(msg.data)}
    raise TypeError(f"not a wire message: {type(msg).__name__}")  # pragma: no cover


def _get(body: dict, key: str, typ: type | tuple[type, ...]) -> Any:
    try:
        value = body[key]
    except KeyError:
        raise WireError("bad-frame", f"{body.get('t')!r} frame lacks key {key!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise WireError(
            "bad-frame", f"key {key!r} of a {body.get('t')!r} frame has type {type(value).__name__}"
        )
    return value


def _opt(body: dict, key: str, typ: type) -> Any:
    """An optional key: None when absent, else checked as `_get` does."""
    return _get(body, key, typ) if key in body else None


def _load_keys(queue_ms: float | None, batch: int | None, advise: bool | None,
               ties: int | None) -> dict[str, Any]:
    """The optional keys of ``verdict`` and ``tokens`` (the edge's load, its advice, the
    near-ties), only when known."""
    out: dict[str, Any] = {}
    if ties is not None:
        out["ties"] = int(ties)
    if advise is not None:
        out["advise"] = bool(advise)
    if queue_ms is not None:
        out["queue_ms"] = float(queue_ms)
    if batch is not None:
        out["batch"] = int(batch)
    return out


def _bin(body: dict, key: str, dtype: np.dtype) -> np.ndarray:
    raw = _get(body, key, bytes)
    if len(raw) % dtype.itemsize:
        raise WireError(
            "bad-frame", f"key {key!r}: {len(raw)} bytes is not a whole number of items"
        )
    return np.frombuffer(raw, dtype=dtype)


def decode(frame: bytes) -> Message:
    """Parse one binary frame; raise WireError("bad-frame", ...) on anything malformed.

    Arrays returned are read-only views of the frame (no copy).
    """
    try:
        body = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise WireError("bad-frame", f"not a msgpack frame: {exc}") from None
    if not isinstance(body, dict):
        raise WireError("bad-frame", f"frame is a {type(body).__name__}, not a map")
    kind = body.get("t")
    if kind == "round":
        draft = _bin(body, "draft", _I32)
        k = _get(body, "k", int)
        q_ids = _bin(body, "q_ids", _I32)
        q_probs = _bin(body, "q_probs", _F32)
        n = draft.shape[0]
        if k < 0 or q_ids.shape[0] != n * k or q_probs.shape[0] != n * k or (n and k == 0):
            raise WireError(
                "bad-frame",
                f"round: {n} drafted tokens need q_ids and q_probs of {n}*k entries with k >= 1,"
                f" got k={k}, {q_ids.shape[0]} and {q_probs.shape[0]}",
            )
        return Round(
            session=_get(body, "session", str),
            draft=draft,
            q_ids=q_ids.reshape(n, k),
            q_probs=q_probs.reshape(n, k),
        )
    if kind == "verdict":
        return Verdict(
            accepted=_get(body, "accepted", int),
            token=_get(body, "token", int),
            verify_ms=_get(body, "verify_ms", float),
            edge_ms=_get(body, "edge_ms", float),
            queue_ms=_opt(body, "queue_ms", float),
            batch=_opt(body, "batch", int),
            advise=_opt(body, "advise", bool),
            ties=_opt(body, "ties", int),
        )
    if kind == "open":
        return Open(
            version=_get(body, "v", int),
            prompt=_bin(body, "prompt", _I32),
            vocab_hash=_get(body, "vocab", str),
            draft_model=_get(body, "draft", str),
            temperature=_get(body, "temp", float),
            seed=_get(body, "seed", int),
            top_k=_get(body, "top_k", int),
        )
    if kind == "opened":
        return Opened(
            session=_get(body, "session", str),
            model=_get(body, "model", str),
            n_ctx=_get(body, "n_ctx", int),
            prefill_ms=_get(body, "prefill_ms", float),
        )
    if kind == "generate":
        return Generate(
            session=_get(body, "session", str), max_tokens=_get(body, "max_tokens", int)
        )
    if kind == "tokens":
        return Tokens(
            ids=_bin(body, "ids", _I32),
            done=_get(body, "done", bool),
            verify_ms=_get(body, "verify_ms", float),
            queue_ms=_opt(body, "queue_ms", float),
            batch=_opt(body, "batch", int),
            advise=_opt(body, "advise", bool),
            ties=_opt(body, "ties", int),
        )
    if kind == "stop":
        return Stop(session=_get(body, "session", str))
    if kind == "close":
        return Close(session=_get(body, "session", str))
    if kind == "error":
        return Error(code=_get(body, "code", str), message=_get(body, "message", str))
    return _decode_dnn(kind, body)


def _decode_dnn(kind: Any, body: dict) -> Message:
    if kind == "feature":
        return Feature(session=_get(body, "session", str), packet=_get(body, "packet", bytes),
                       evaluate=_get(body, "eval", bool))
    if kind == "result":
        return Result(session=_get(body, "session", str), seq=_get(body, "seq", int),
                      top1=_get(body, "top1", int),
                      confidence=_get(body, "conf", float), entropy=_get(body, "entropy", float),
                      channels=_get(body, "channels", int), tail_ms=_get(body, "tail_ms", float),
                      edge_ms=_get(body, "edge_ms", float))
    if kind == "dnn_open":
        return DnnOpen(version=_get(body, "v", int), model=_get(body, "model", str),
                       split=_get(body, "split", int), codec=_get(body, "codec", str),
                       device=_get(body, "device", str), queue_j=_get(body, "queue", float),
                       bits=_get(body, "bits", int), spectral_eff=_get(body, "eff", float),
                       deadline_ms=_get(body, "deadline_ms", float))
    if kind == "dnn_opened":
        return DnnOpened(session=_get(body, "session", str), share=_get(body, "share", float),
                         users=_get(body, "users", int), tail_ms=_get(body, "tail_ms", float))
    if kind == "input":
        return Input(session=_get(body, "session", str), offset=_get(body, "offset", int),
                     data=_get(body, "data", bytes))
    raise WireError("bad-frame", f"unknown frame type {kind!r}")
