"""The device-edge wire format, defined once and imported by both sides.

One persistent WebSocket per generation session carries binary frames. Each frame is one
msgpack map whose key ``"t"`` names the message type. Token ids cross the wire, never text.
Arrays travel as raw little-endian bytes (msgpack ``bin``) so a round costs one copy, not a
Python list per token.

Each message is a dataclass below and one ``Layout`` in ``LAYOUTS``: a table of its keys
(attribute, wire key, wire type, meaning and unit), in the order they are written. ``encode``,
``decode`` and the checks of every key are driven by these tables; nothing else lists a
message's keys. An optional key is absent (not nil) while its attribute is None, and decodes to
None when absent, so an older peer's frames still decode; a decoder ignores keys it does not
know, so an older peer reads a newer one's frames. An int is accepted where a float is
declared; nothing else is converted.

An LLM session: ``open`` (answered by ``opened``), then ``round`` frames (each answered by a
``verdict``) or a ``generate`` stretch (answered by ``tokens`` frames, ``done`` on the last one,
which a ``stop`` brings early), then ``close``. At temperature 0 the device sends ``k = 1`` and
probability 1.0 for its argmax token. An edge older than ``stop`` answers it ``bad-frame``.

A DNN session lives for one task: ``dnn_open``, then ``feature`` (or ``input``) frames, each
answered by a ``result`` when it asks for an evaluation (the last packet always does), then
``close``. The device may send packets without waiting for results (they come back in order);
results of a task it already closed may still arrive and carry that task's ``session``. A
``feature`` frame with an empty ``packet`` only asks for an evaluation of what is in.

Any frame may be answered by ``error`` (``code`` one of ``ERROR_CODES``).

A draining edge (``edge-server`` on SIGTERM or ``POST /v1/drain``) refuses new sessions with
``error/draining``; once its drain timeout is near, it answers a session's next frame with
``move`` instead and ends the session. The frame that ``move`` answers was not acted on (a
round answered by ``move`` commits nothing), so the device resumes on another edge from the
sequence it had committed: nothing lost, nothing repeated. A ``move`` also ends a DNN task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
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
        "draining",  # the edge is being taken out of service: open the session elsewhere
    }
)


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


# -- messages: the Python side; their keys on the wire are in LAYOUTS below ---------------


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

    @property
    def k(self) -> int:
        """Entries per drafted token in ``q_ids`` and ``q_probs`` (0 for an empty round)."""
        n = int(self.draft.shape[0])
        return int(self.q_ids.shape[1]) if self.q_ids.ndim == 2 and n else 0


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
class Move:
    session: str
    reason: str = field(default="")


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
    Open | Opened | Round | Verdict | Generate | Tokens | Stop | Close | Error | Move
    | DnnOpen | DnnOpened | Feature | Input | Result
)


# -- wire types: how one key's value is written and checked -------------------------------


@dataclass(frozen=True, slots=True)
class WireType:
    """How one key's value travels.

    ``pack(attribute) -> msgpack value``; ``unpack(value, key, frame type) -> attribute``
    checks a decoded value and raises WireError("bad-frame", ...) naming the key.
    """

    name: str  # as the layout tables print it
    pack: Callable[[Any], Any]
    unpack: Callable[[Any, str, Any], Any]


def _checked(value: Any, typ: type, key: str, kind: Any) -> Any:
    """``value`` as ``typ``: an int stands for a float; a bool is no int."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise WireError(
            "bad-frame", f"key {key!r} of a {kind!r} frame has type {type(value).__name__}"
        )
    return value


def _scalar(typ: type, pack: Callable[[Any], Any]) -> WireType:
    return WireType(typ.__name__, pack, lambda v, key, kind: _checked(v, typ, key, kind))


def _array(dtype: np.dtype) -> WireType:
    """A 1-D array as raw little-endian bytes; decoded as a read-only view of the frame."""

    def unpack(value: Any, key: str, kind: Any) -> np.ndarray:
        raw = _checked(value, bytes, key, kind)
        if len(raw) % dtype.itemsize:
            raise WireError(
                "bad-frame", f"key {key!r}: {len(raw)} bytes is not a whole number of items"
            )
        return np.frombuffer(raw, dtype=dtype)

    return WireType(f"bin {dtype.name}[]",
                    lambda a: np.ascontiguousarray(a, dtype=dtype).tobytes(), unpack)


INT = _scalar(int, int)
FLOAT = _scalar(float, float)
BOOL = _scalar(bool, bool)
STR = _scalar(str, lambda s: s)
BIN = _scalar(bytes, bytes)
I32S = _array(np.dtype("<i4"))
F32S = _array(np.dtype("<f4"))


# -- layouts: one table per message -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a message's map."""

    attr: str  # the message's attribute
    wire: str  # the map key
    type: WireType
    doc: str  # meaning and unit
    optional: bool = False  # absent while the attribute is None; None when absent
    derived: bool = False  # written from a property, read by the layout's ``check`` only


@dataclass(frozen=True, slots=True)
class Layout:
    """A message type: its ``t``, its class, its keys in wire order, and a ``check`` of the
    decoded attributes taken together (it returns the constructor's keyword arguments)."""

    t: str
    cls: type
    direction: str  # "dev->edge" or "edge->dev"
    keys: tuple[Key, ...]
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = None


def _check_round(values: dict[str, Any]) -> dict[str, Any]:
    """``q_ids`` and ``q_probs`` hold ``k >= 1`` entries per drafted token (none when no token
    is drafted); they are returned as [n, k]."""
    draft, q_ids, q_probs, k = (values["draft"], values["q_ids"], values["q_probs"],
                                values.pop("k"))
    n = draft.shape[0]
    if k < 0 or q_ids.shape[0] != n * k or q_probs.shape[0] != n * k or (n and k == 0):
        raise WireError(
            "bad-frame",
            f"round: {n} drafted tokens need q_ids and q_probs of {n}*k entries with k >= 1,"
            f" got k={k}, {q_ids.shape[0]} and {q_probs.shape[0]}",
        )
    values["q_ids"], values["q_probs"] = q_ids.reshape(n, k), q_probs.reshape(n, k)
    return values


def _load_keys() -> tuple[Key, ...]:
    """The optional keys of ``verdict`` and ``tokens``: the edge's load, advice, near-ties."""
    return (
        Key("ties", "ties", INT, "at temperature 0, the tokens this frame commits whose greedy "
            "choice was a near-tie for the target (top two logits within "
            "speculative.TIE_GAP)", optional=True),
        Key("advise", "advise", BOOL, "true while the edge is the fleet's bottleneck and a "
            "verified position costs it more per produced token than a streamed one, i.e. the "
            "fleet goes faster if its sessions stream", optional=True),
        Key("queue_ms", "queue_ms", FLOAT, "time the work waited for its batch, ms",
            optional=True),
        Key("batch", "batch", INT, "tokens in the batched decode that verified it",
            optional=True),
    )


_LAYOUTS = (
    Layout("open", Open, "dev->edge", (
        Key("version", "v", INT, "protocol version"),
        Key("prompt", "prompt", I32S, "prompt token ids [n]"),
        Key("vocab_hash", "vocab", STR, "vocabulary hash"),
        Key("draft_model", "draft", STR, "draft model id"),
        Key("temperature", "temp", FLOAT, "sampling temperature"),
        Key("seed", "seed", INT, "seed of the session's random stream"),
        Key("top_k", "top_k", INT, "draft probabilities sent per drafted token"),
    )),
    Layout("opened", Opened, "edge->dev", (
        Key("session", "session", STR, "session id"),
        Key("model", "model", STR, "target model id"),
        Key("n_ctx", "n_ctx", INT, "the session's context, tokens"),
        Key("prefill_ms", "prefill_ms", FLOAT, "prompt prefill time, ms"),
    )),
    Layout("round", Round, "dev->edge", (
        Key("session", "session", STR, "session id"),
        Key("draft", "draft", I32S, "drafted token ids [n]"),
        Key("q_ids", "q_ids", I32S, "top-k ids per drafted position [n*k]"),
        Key("q_probs", "q_probs", F32S, "their draft probabilities [n*k]"),
        Key("k", "k", INT, "entries per drafted position", derived=True),
    ), _check_round),
    Layout("verdict", Verdict, "edge->dev", (
        Key("accepted", "accepted", INT, "drafted tokens accepted, 0..n"),
        Key("token", "token", INT, "the next token (correction or bonus)"),
        Key("verify_ms", "verify_ms", FLOAT, "target batch time, ms"),
        Key("edge_ms", "edge_ms", FLOAT, "time from frame in to frame out, ms"),
        *_load_keys(),
    )),
    Layout("generate", Generate, "dev->edge", (
        Key("session", "session", STR, "session id"),
        Key("max_tokens", "max_tokens", INT, "tokens the target generates alone"),
    )),
    Layout("tokens", Tokens, "edge->dev", (
        Key("ids", "ids", I32S, "generated token ids [m]"),
        Key("done", "done", BOOL, "the last frame of the stretch"),
        Key("verify_ms", "verify_ms", FLOAT, "target decode time, ms"),
        *_load_keys(),
    )),
    Layout("stop", Stop, "dev->edge", (
        Key("session", "session", STR, "end the generate stretch in progress after the decode "
            "step in flight; its last tokens frame (done) follows; ignored when none is in "
            "progress"),
    )),
    Layout("close", Close, "dev->edge", (
        Key("session", "session", STR, "session id"),
    )),
    Layout("error", Error, "edge->dev", (
        Key("code", "code", STR, "one of ERROR_CODES"),
        Key("message", "message", STR, "for a person"),
    )),
    Layout("move", Move, "edge->dev", (
        Key("session", "session", STR, "the session the edge ended; the frame it answers was "
            "not acted on: resume elsewhere from the committed sequence"),
        Key("reason", "reason", STR, "for a person, e.g. draining"),
    )),
    Layout("dnn_open", DnnOpen, "dev->edge", (
        Key("version", "v", INT, "protocol version"),
        Key("model", "model", STR, "DNN model id"),
        Key("split", "split", INT, "split index; 0 = the raw input, the whole model on the edge"),
        Key("codec", "codec", STR, "the split's codec fingerprint"),
        Key("device", "device", STR, "device id"),
        Key("queue_j", "queue", FLOAT, "the device's energy queue Q, J"),
        Key("bits", "bits", INT, "bits the device means to send"),
        Key("spectral_eff", "eff", FLOAT, "spectral efficiency at the full band, bit/s/Hz"),
        Key("deadline_ms", "deadline_ms", FLOAT, "time left, ms; 0 = none"),
    )),
    Layout("dnn_opened", DnnOpened, "edge->dev", (
        Key("session", "session", STR, "session id"),
        Key("share", "share", FLOAT, "the device's bandwidth share, 0..1"),
        Key("users", "users", INT, "devices sharing the edge now"),
        Key("tail_ms", "tail_ms", FLOAT, "mean tail run time of this split, ms"),
    )),
    Layout("feature", Feature, "dev->edge", (
        Key("session", "session", STR, "session id"),
        Key("packet", "packet", BIN, "one ondevice.common.feature_codec packet"),
        Key("evaluate", "eval", BOOL, "run the tail once this packet is in"),
    )),
    Layout("input", Input, "dev->edge", (
        Key("session", "session", STR, "session id"),
        Key("offset", "offset", INT, "where the slice starts, bytes"),
        Key("data", "data", BIN, "a slice of the raw uint8 input [C, H, W]; the model runs "
            "once all bytes are in"),
    )),
    Layout("result", Result, "edge->dev", (
        Key("session", "session", STR, "session id"),
        Key("seq", "seq", INT, "packets received when the tail ran"),
        Key("top1", "top1", INT, "class"),
        Key("confidence", "conf", FLOAT, "its probability"),
        Key("entropy", "entropy", FLOAT, "of the class distribution, nats"),
        Key("channels", "channels", INT, "channels complete"),
        Key("tail_ms", "tail_ms", FLOAT, "tail run time, ms"),
        Key("edge_ms", "edge_ms", FLOAT, "time from frame in to frame out, ms"),
    )),
)

LAYOUTS: Mapping[str, Layout] = MappingProxyType({lay.t: lay for lay in _LAYOUTS})
_BY_CLASS: dict[type, Layout] = {lay.cls: lay for lay in _LAYOUTS}


def _check_layouts(layouts: tuple[Layout, ...]) -> None:
    """Raise TypeError where a table and its dataclass disagree: every field has one key, an
    optional key's field defaults to None, and wire keys are distinct (``t`` is taken).
    Run on ``LAYOUTS`` at import."""
    for lay in layouts:
        fields = {f.name: f for f in dataclasses.fields(lay.cls)}
        attrs = [k.attr for k in lay.keys if not k.derived]
        wires = [k.wire for k in lay.keys]
        if sorted(attrs) != sorted(fields) or len(set(wires)) != len(wires) or "t" in wires:
            raise TypeError(f"layout {lay.t!r} does not match {lay.cls.__name__}'s fields")
        for key in lay.keys:
            if key.optional and fields[key.attr].default is not None:
                raise TypeError(f"{lay.cls.__name__}.{key.attr} is optional: default it None")


_check_layouts(_LAYOUTS)


# -- encode and decode --------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """Serialize one message to a binary frame: its layout's keys in order, each value
    written as its wire type (an optional one left out while None)."""
    try:
        layout = _BY_CLASS[type(msg)]
    except KeyError:
        raise TypeError(f"not a wire message: {type(msg).__name__}") from None
    body: dict[str, Any] = {"t": layout.t}
    for key in layout.keys:
        value = getattr(msg, key.attr)
        if value is None and key.optional:
            continue
        body[key.wire] = key.type.pack(value)
    return msgpack.packb(body, use_bin_type=True)


def decode(frame: bytes) -> Message:
    """Parse one binary frame; raise WireError("bad-frame", ...) on anything malformed: not
    msgpack, not a map, an unknown ``t``, a missing required key, a key of the wrong type, a
    round whose arrays do not fit together. Keys the layout does not know are ignored.

    Arrays returned are read-only views of the frame (no copy).
    """
    try:
        body = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise WireError("bad-frame", f"not a msgpack frame: {exc}") from None
    if not isinstance(body, dict):
        raise WireError("bad-frame", f"frame is a {type(body).__name__}, not a map")
    kind = body.get("t")
    layout = LAYOUTS.get(kind) if isinstance(kind, str) else None
    if layout is None:
        raise WireError("bad-frame", f"unknown frame type {kind!r}")
    values: dict[str, Any] = {}
    for key in layout.keys:
        if key.wire in body:
            values[key.attr] = key.type.unpack(body[key.wire], key.wire, kind)
        elif key.optional:
            values[key.attr] = None
        else:
            raise WireError("bad-frame", f"{kind!r} frame lacks key {key.wire!r}")
    if layout.check is not None:
        values = layout.check(values)
    return layout.cls(**values)
