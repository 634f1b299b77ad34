"""Record reference frames of every wire message into ``wire_frames.json`` beside this file.

``wire_frames.json`` holds frames written by the hand-written encoder that ``wire.py`` had
before its layouts became tables; ``tests/ondevice/common/test_wire.py`` checks that today's
code decodes each one and encodes it back to the same bytes, and encodes the recorded
constructor arguments to the same bytes. Run this only to add frames of a new message or key
(``python tests/ondevice/common/data/record_wire_frames.py``, then keep the old entries
as they were), never to make a failing
comparison pass: a difference there is a change of the wire format.

Each entry: ``type`` (the message class in ``ondevice.common.wire``), ``args`` (its
constructor's keyword arguments, JSON-encoded by ``to_json``) and ``frame`` (hex).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.common import wire

OUT = Path(__file__).with_name("wire_frames.json")


def to_json(value: Any) -> Any:
    """A constructor argument as JSON: arrays and bytes become tagged objects."""
    if isinstance(value, np.ndarray):
        return {"array": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    return value


def _i32(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int32)


def _samples() -> list[tuple[str, dict[str, Any]]]:
    rng = np.random.default_rng(7)
    q4 = rng.dirichlet(np.ones(4), size=3).astype(np.float32)  # [3, 4]
    return [
        ("Open", dict(prompt=_i32(1, 2, 3), vocab_hash="abc", draft_model="draft.gguf",
                      temperature=0.7, seed=42, top_k=32)),
        ("Open", dict(prompt=_i32(), vocab_hash="", draft_model="d", temperature=0.0,
                      seed=2**63 - 1, top_k=1, version=7)),
        ("Open", dict(prompt=_i32(382, -1, 2**31 - 1), vocab_hash="ünï", draft_model="x" * 40,
                      temperature=1.5, seed=0, top_k=64, version=1)),
        ("Opened", dict(session="0123456789abcdef", model="target.gguf", n_ctx=4096,
                        prefill_ms=12.5)),
        ("Opened", dict(session="", model="", n_ctx=0, prefill_ms=0.0)),
        ("Round", dict(session="s1", draft=_i32(5, 7, 9), q_ids=rng.integers(
            0, 384, (3, 4)).astype(np.int32), q_probs=q4)),
        ("Round", dict(session="s", draft=_i32(11), q_ids=_i32(11).reshape(1, 1),
                       q_probs=np.ones((1, 1), np.float32))),
        ("Round", dict(session="s", draft=_i32(), q_ids=np.zeros((0, 1), np.int32),
                       q_probs=np.zeros((0, 1), np.float32))),
        ("Verdict", dict(accepted=2, token=17, verify_ms=3.25, edge_ms=4.5)),
        ("Verdict", dict(accepted=0, token=383, verify_ms=0.0, edge_ms=0.125, queue_ms=1.25,
                         batch=23)),
        ("Verdict", dict(accepted=8, token=0, verify_ms=12.0, edge_ms=13.5, queue_ms=0.0,
                         batch=1, advise=True, ties=2)),
        ("Verdict", dict(accepted=1, token=5, verify_ms=1.0, edge_ms=2.0, advise=False)),
        ("Verdict", dict(accepted=3, token=6, verify_ms=1.0, edge_ms=2.0, ties=0)),
        ("Generate", dict(session="s", max_tokens=9)),
        ("Generate", dict(session="abc", max_tokens=0)),
        ("Tokens", dict(ids=_i32(4), done=True, verify_ms=1.5)),
        ("Tokens", dict(ids=_i32(), done=True)),
        ("Tokens", dict(ids=_i32(5, 6), done=False, verify_ms=2.0, queue_ms=0.5, batch=9,
                        advise=False, ties=1)),
        ("Tokens", dict(ids=_i32(7), done=False, verify_ms=6.5, advise=True)),
        ("Stop", dict(session="s")),
        ("Close", dict(session="s")),
        ("Close", dict(session="0123456789abcdef")),
        ("Error", dict(code="draft-too-long", message="too long")),
        ("Error", dict(code="internal")),
        ("Error", dict(code="idle", message="no frame for 30 s — bye")),
        ("Move", dict(session="0123456789abcdef", reason="draining")),
        ("Move", dict(session="s")),
        ("DnnOpen", dict(model="digits-cnn", split=2, codec="f00dfeed", device="dev-1",
                         queue_j=0.75, bits=8192, spectral_eff=3.5, deadline_ms=250.0)),
        ("DnnOpen", dict(model="m", split=0, codec="", device="", queue_j=0.0, bits=0,
                         spectral_eff=0.0, deadline_ms=0.0, version=2)),
        ("DnnOpened", dict(session="abcd", share=0.5, users=2, tail_ms=3.75)),
        ("DnnOpened", dict(session="", share=1.0, users=1, tail_ms=0.0)),
        ("Feature", dict(session="abcd", packet=bytes(range(40)), evaluate=False)),
        ("Feature", dict(session="abcd", packet=b"", evaluate=True)),
        ("Input", dict(session="abcd", offset=0, data=bytes(range(64)))),
        ("Input", dict(session="abcd", offset=3072, data=b"")),
        ("Result", dict(session="abcd", seq=3, top1=7, confidence=0.875, entropy=0.25,
                        channels=16, tail_ms=1.5, edge_ms=2.25)),
        ("Result", dict(session="", seq=0, top1=0, confidence=1.0, entropy=0.0, channels=0,
                        tail_ms=0.0, edge_ms=0.0)),
    ]


def record() -> list[dict[str, Any]]:
    """Encode every sample with the current ``wire.encode``."""
    return [
        {"type": name, "args": {k: to_json(v) for k, v in args.items()},
         "frame": wire.encode(getattr(wire, name)(**args)).hex()}
        for name, args in _samples()
    ]


if __name__ == "__main__":
    lines = (json.dumps(entry, ensure_ascii=False, allow_nan=False) for entry in record())
    OUT.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    print(f"wrote {OUT}")
