"""The wire format: every message round-trips, recorded frames keep their bytes, malformed
frames raise WireError("bad-frame") naming the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

from ondevice.common import wire


def _roundtrip(msg: wire.Message) -> wire.Message:
    return wire.decode(wire.encode(msg))


def test_round_roundtrip_keeps_arrays() -> None:
    draft = np.array([5, 7, 9], dtype=np.int32)
    q_ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    q_probs = np.full((3, 4), 0.25, dtype=np.float32)
    got = _roundtrip(wire.Round("s1", draft, q_ids, q_probs))
    assert isinstance(got, wire.Round)
    assert got.session == "s1"
    np.testing.assert_array_equal(got.draft, draft)
    np.testing.assert_array_equal(got.q_ids, q_ids)
    np.testing.assert_array_equal(got.q_probs, q_probs)


def test_empty_round_roundtrip() -> None:
    empty = np.zeros(0, dtype=np.int32)
    no_q = np.zeros((0, 1), np.int32)
    got = _roundtrip(wire.Round("s", empty, no_q, no_q.astype(np.float32)))
    assert isinstance(got, wire.Round) and got.draft.shape == (0,)


@pytest.mark.parametrize(
    "msg",
    [
        wire.Open(np.array([1, 2, 3], np.int32), "abc", "draft.gguf", 0.7, 42, 32),
        wire.Opened("s", "target.gguf", 4096, 12.5),
        wire.Verdict(2, 17, 3.25, 4.5),
        wire.Generate("s", 9),
        wire.Tokens(np.array([4], np.int32), True, 1.5),
        wire.Stop("s"),
        wire.Close("s"),
        wire.Error("draft-too-long", "too long"),
    ],
)
def test_messages_roundtrip(msg: wire.Message) -> None:
    got = _roundtrip(msg)
    assert type(got) is type(msg)
    for name in msg.__slots__:  # type: ignore[union-attr]
        a, b = getattr(msg, name), getattr(got, name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


def test_round_frame_is_compact() -> None:
    # 8 drafted tokens with top-32 distributions: raw arrays, not per-token lists.
    n, k = 8, 32
    frame = wire.encode(
        wire.Round("0123456789abcdef", np.zeros(n, np.int32), np.zeros((n, k), np.int32),
                   np.zeros((n, k), np.float32))
    )
    assert len(frame) < n * 4 + 2 * n * k * 4 + 128


@pytest.mark.parametrize(
    "frame, fragment",
    [
        (b"\xc1\xff garbage", "not a msgpack frame"),
        (msgpack.packb([1, 2, 3]), "not a map"),
        (msgpack.packb({"t": "teleport"}), "unknown frame type"),
        (msgpack.packb({"t": "round", "session": "s"}), "lacks key"),
        (msgpack.packb({"t": "close", "session": 5}), "has type int"),
        (
            msgpack.packb({"t": "round", "session": "s", "draft": b"\x01\x00\x00\x00", "k": 2,
                           "q_ids": b"\x00" * 4, "q_probs": b"\x00" * 8}),
            "need q_ids",
        ),
        (
            msgpack.packb({"t": "round", "session": "s", "draft": b"\x01\x00\x00", "k": 1,
                           "q_ids": b"", "q_probs": b""}),
            "whole number",
        ),
    ],
)
def test_malformed_frames(frame: bytes, fragment: str) -> None:
    with pytest.raises(wire.WireError) as err:
        wire.decode(frame)
    assert err.value.code == "bad-frame"
    assert fragment in err.value.message


def test_load_keys_are_optional_both_ways() -> None:
    """Issue 12: verdict and tokens frames may carry queue_ms and batch; frames without them
    (an older edge) decode with None, and an older device's decoder ignores them."""
    import msgpack

    v = wire.Verdict(3, 17, 4.5, 6.0, queue_ms=1.25, batch=23)
    assert wire.decode(wire.encode(v)) == v
    old = wire.Verdict(3, 17, 4.5, 6.0)
    body = msgpack.unpackb(wire.encode(old))
    assert "queue_ms" not in body and "batch" not in body  # absent, not null, when unknown
    assert wire.decode(wire.encode(old)) == old
    tk = wire.decode(wire.encode(wire.Tokens(np.array([5], np.int32), False, 2.0, 0.5, 9)))
    assert (tk.queue_ms, tk.batch) == (0.5, 9)
    bad = msgpack.packb({**body, "batch": "many"})
    with pytest.raises(wire.WireError, match="batch"):
        wire.decode(bad)


def test_advice_key_is_optional_both_ways() -> None:
    """The edge's advice to stream: a bool in verdict and tokens when the edge gives it,
    absent (decoded None) from an older edge; anything but a bool is a bad frame."""
    import msgpack

    for advise in (True, False):
        v = wire.Verdict(3, 17, 4.5, 6.0, queue_ms=1.0, batch=9, advise=advise)
        assert wire.decode(wire.encode(v)).advise is advise
        tk = wire.Tokens(np.array([5], np.int32), False, 2.0, 0.5, 9, advise)
        assert wire.decode(wire.encode(tk)).advise is advise
    old = msgpack.unpackb(wire.encode(wire.Verdict(3, 17, 4.5, 6.0)))
    assert "advise" not in old and wire.decode(msgpack.packb(old)).advise is None
    with pytest.raises(wire.WireError, match="advise"):
        wire.decode(msgpack.packb({**old, "advise": 1}))


# -- recorded frames: the bytes on the wire do not change ----------------------------------

FRAMES = Path(__file__).with_name("data") / "wire_frames.json"
MESSAGE_TYPES = (wire.Open, wire.Opened, wire.Round, wire.Verdict, wire.Generate, wire.Tokens,
                 wire.Stop, wire.Close, wire.Error, wire.Move, wire.DnnOpen, wire.DnnOpened,
                 wire.Feature, wire.Input, wire.Result)



def _from_json(value: Any) -> Any:
    """A constructor argument from ``wire_frames.json`` (see data/record_wire_frames.py)."""
    if isinstance(value, dict) and "array" in value:
        return np.array(value["array"], dtype=value["dtype"]).reshape(value["shape"])
    if isinstance(value, dict) and "bytes" in value:
        return bytes.fromhex(value["bytes"])
    return value


def _recorded() -> list[tuple[str, dict[str, Any], bytes]]:
    entries = json.loads(FRAMES.read_text())
    return [(e["type"], {k: _from_json(v) for k, v in e["args"].items()},
             bytes.fromhex(e["frame"])) for e in entries]


def test_recorded_frames_cover_every_message() -> None:
    recorded = {name for name, _, _ in _recorded()}
    assert recorded == {cls.__name__ for cls in MESSAGE_TYPES}


@pytest.mark.parametrize("name, args, frame", _recorded(),
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(_recorded())])
def test_recorded_frame_is_reproduced(name: str, args: dict[str, Any], frame: bytes) -> None:
    """Frames written by the encoder before its layouts became tables: the same message
    encodes to the same bytes, and the frame decodes to a message that encodes back to it."""
    msg = getattr(wire, name)(**args)
    assert wire.encode(msg) == frame
    got = wire.decode(frame)
    assert type(got) is type(msg)
    _assert_same(got, msg)
    assert wire.encode(got) == frame


# -- every message round-trips (property tests) --------------------------------------------

ints = st.integers(-(2**63), 2**64 - 1)  # what a msgpack int holds
floats = st.floats(allow_nan=False)  # NaN travels too, but is not equal to itself
texts = st.text(max_size=40)
blobs = st.binary(max_size=256)
opt_ints, opt_floats, opt_bools = st.none() | ints, st.none() | floats, st.none() | st.booleans()
i32s = npst.arrays(np.int32, st.integers(0, 16))


@st.composite
def rounds(draw: st.DrawFn) -> wire.Round:
    n, k = draw(st.integers(0, 8)), draw(st.integers(1, 8))
    return wire.Round(draw(texts), draw(npst.arrays(np.int32, n)),
                      draw(npst.arrays(np.int32, (n, k))),
                      draw(npst.arrays(np.float32, (n, k), elements=st.floats(0, 1, width=32))))


MESSAGES = {
    wire.Open: st.builds(wire.Open, i32s, texts, texts, floats, ints, ints, ints),
    wire.Opened: st.builds(wire.Opened, texts, texts, ints, floats),
    wire.Round: rounds(),
    wire.Verdict: st.builds(wire.Verdict, ints, ints, floats, floats, opt_floats, opt_ints,
                            opt_bools, opt_ints),
    wire.Generate: st.builds(wire.Generate, texts, ints),
    wire.Tokens: st.builds(wire.Tokens, i32s, st.booleans(), floats, opt_floats, opt_ints,
                           opt_bools, opt_ints),
    wire.Stop: st.builds(wire.Stop, texts),
    wire.Close: st.builds(wire.Close, texts),
    wire.Error: st.builds(wire.Error, st.sampled_from(sorted(wire.ERROR_CODES)), texts),
    wire.Move: st.builds(wire.Move, texts, texts),
    wire.DnnOpen: st.builds(wire.DnnOpen, texts, ints, texts, texts, floats, ints, floats,
                            floats, ints),
    wire.DnnOpened: st.builds(wire.DnnOpened, texts, floats, ints, floats),
    wire.Feature: st.builds(wire.Feature, texts, blobs, st.booleans()),
    wire.Input: st.builds(wire.Input, texts, ints, blobs),
    wire.Result: st.builds(wire.Result, texts, ints, ints, floats, floats, ints, floats,
                           floats),
}
OPTIONAL_KEYS = {"verdict": {"queue_ms", "batch", "advise", "ties"},
                 "tokens": {"queue_ms", "batch", "advise", "ties"}}


def _assert_same(got: wire.Message, want: wire.Message) -> None:
    """Field by field: arrays by dtype, shape and bytes; scalars by type and value."""
    assert type(got) is type(want)
    for f in dataclasses.fields(want):  # type: ignore[arg-type]
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, np.ndarray):
            if isinstance(want, wire.Round) and f.name != "draft" and want.draft.size == 0:
                b = b.reshape(0, 0)  # an empty round carries k = 0
            assert a.dtype == b.dtype.newbyteorder("<") and a.shape == b.shape, f.name
            assert a.tobytes() == b.astype(a.dtype).tobytes(), f.name
        else:
            assert type(a) is type(b) and a == b, (f.name, a, b)


def test_strategies_cover_every_message() -> None:
    assert set(MESSAGES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_message_roundtrips(cls: type, data: st.DataObject) -> None:
    msg = data.draw(MESSAGES[cls])
    frame = wire.encode(msg)
    got = wire.decode(frame)
    _assert_same(got, msg)
    assert wire.encode(got) == frame  # decode then encode is the identity on bytes


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_key_is_checked(cls: type, data: st.DataObject) -> None:
    """Each required key missing, and each key holding a value of the wrong type, is a
    ``bad-frame`` naming the key; an optional key may be absent; an int stands for a float."""
    body = msgpack.unpackb(wire.encode(data.draw(MESSAGES[cls])))
    kind = body["t"]
    for key, value in body.items():
        if key == "t":
            continue
        rest = {k: v for k, v in body.items() if k != key}
        if key in OPTIONAL_KEYS.get(kind, ()):
            assert getattr(wire.decode(msgpack.packb(rest)), _attr_of(cls, key)) is None
        else:
            with pytest.raises(wire.WireError, match=f"lacks key '{key}'") as err:
                wire.decode(msgpack.packb(rest))
            assert err.value.code == "bad-frame"
        wrong = [["a list"], None] + ([True] if type(value) in (int, float) else [1])
        for bad in wrong:
            with pytest.raises(wire.WireError, match=f"key '{key}'") as err:
                wire.decode(msgpack.packb({**body, key: bad}))
            assert err.value.code == "bad-frame"
        if type(value) is float and value.is_integer() and abs(value) < 2**63:
            as_int = wire.decode(msgpack.packb({**body, key: int(value)}))
            got = getattr(as_int, _attr_of(cls, key))
            assert type(got) is float and got == value


def _attr_of(cls: type, key: str) -> str:
    """The attribute a wire key lands in: the same name except these."""
    renamed = {"v": "version", "vocab": "vocab_hash", "temp": "temperature", "conf": "confidence",
               "queue": "queue_j", "eff": "spectral_eff", "eval": "evaluate"}
    if cls is wire.Open and key == "draft":
        return "draft_model"
    return renamed.get(key, key)


def test_dnn_messages_roundtrip_by_example() -> None:
    msgs = [
        wire.DnnOpen("digits-cnn", 2, "f00d", "dev-1", 0.5, 4096, 2.5, 100.0),
        wire.DnnOpened("s", 0.25, 4, 1.5),
        wire.Feature("s", b"\x01\x02", True),
        wire.Input("s", 64, b"\x00" * 8),
        wire.Result("s", 2, 7, 0.9, 0.3, 16, 1.0, 2.0),
    ]
    for msg in msgs:
        assert _roundtrip(msg) == msg


def test_unknown_or_unhashable_type_is_bad_frame() -> None:
    for t in (None, 5, ["round"], {"a": 1}, b"round"):
        with pytest.raises(wire.WireError, match="unknown frame type") as err:
            wire.decode(msgpack.packb({"t": t, "session": "s"}, use_bin_type=True))
        assert err.value.code == "bad-frame"


def test_extra_keys_are_ignored() -> None:
    """A newer peer may add keys: an older decoder ignores them."""
    body = msgpack.unpackb(wire.encode(wire.Close("s")))
    assert wire.decode(msgpack.packb({**body, "later": [1, 2]})) == wire.Close("s")


# -- the layout tables ---------------------------------------------------------------------


def test_layouts_name_every_message_once() -> None:
    assert [lay.cls for lay in wire.LAYOUTS.values()] == list(MESSAGE_TYPES)
    for t, lay in wire.LAYOUTS.items():
        assert lay.t == t and lay.direction in ("dev->edge", "edge->dev")
        assert all(key.doc for key in lay.keys), t


@pytest.mark.parametrize("keys, fragment", [
    ((wire.Key("session", "session", wire.STR, "id"),), "does not match"),  # a field left out
    ((wire.Key("session", "session", wire.STR, "id"),
      wire.Key("max_tokens", "session", wire.INT, "n")), "does not match"),  # key twice
    ((wire.Key("session", "t", wire.STR, "id"),
      wire.Key("max_tokens", "n", wire.INT, "n")), "does not match"),  # "t" is the type
    ((wire.Key("session", "session", wire.STR, "id"),
      wire.Key("max_tokens", "n", wire.INT, "n", optional=True)), "default it None"),
])
def test_layout_check_catches_drift(keys: tuple[wire.Key, ...], fragment: str) -> None:
    wire._check_layouts(tuple(wire.LAYOUTS.values()))  # the real tables pass
    with pytest.raises(TypeError, match=fragment):
        wire._check_layouts((wire.Layout("generate", wire.Generate, "dev->edge", keys),))


def test_round_k() -> None:
    ids = np.zeros(3, np.int32)
    assert wire.Round("s", ids, np.zeros((3, 5), np.int32), np.zeros((3, 5), np.float32)).k == 5
    assert wire.Round("s", ids[:0], np.zeros((0, 5), np.int32),
                      np.zeros((0, 5), np.float32)).k == 0


def test_encode_writes_declared_types() -> None:
    """numpy scalars encode as the Python values they hold; a non-message is a TypeError."""
    plain = wire.Verdict(2, 17, 3.25, 4.5, queue_ms=1.0, batch=3, advise=True, ties=0)
    numpy = wire.Verdict(np.int64(2), np.int32(17), np.float32(3.25), np.float64(4.5),
                         queue_ms=np.float32(1.0), batch=np.int64(3), advise=np.bool_(True),
                         ties=np.int16(0))
    assert wire.encode(numpy) == wire.encode(plain)
    with pytest.raises(TypeError, match="not a wire message"):
        wire.encode("close")  # type: ignore[arg-type]
