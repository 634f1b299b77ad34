"""The wire format: every message round-trips; malformed frames raise WireError('bad-frame')."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

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
