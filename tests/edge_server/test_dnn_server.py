"""``edge-server --dnn``: a real server process, real onnxruntime heads and tails, digits-cnn.

The device side is built here from the same files with onnxruntime directly (INT8 head ->
8-bit codec -> packets), so the checks compare the server against an independent pipeline
and against the unsplit model.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import onnxruntime as ort
import pytest
from _edge import EdgeProc, edge_server

from ondevice.common import wire
from ondevice.common.dnn_profile import DnnProfile, load_dnn, top1_summary
from ondevice.dnn.run import ClassifyRequest, run_classify
from ondevice.edge.client import EdgeClient

MAX_PACKET = 4096


@pytest.fixture(scope="module")
def dnn_edge(digits_dnn: Path) -> EdgeProc:
    with edge_server(None, "--dnn", str(digits_dnn), "--max-packet-bytes", str(MAX_PACKET),
                     "--dnn-workers", "2") as e:
        yield e


@pytest.fixture(scope="module")
def profile(digits_dnn: Path) -> DnnProfile:
    return load_dnn(digits_dnn)


@pytest.fixture(scope="module")
def heldout(profile: DnnProfile) -> tuple[np.ndarray, np.ndarray]:
    """Held-out digits the export named: raw [N, 1, 8, 8] uint8 and labels [N]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.asarray(profile.eval_indices)
    return d.images[idx][:, None].astype(np.uint8), d.target[idx]


def _sess(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _open(profile: DnnProfile, split: int, device: str = "t", queue: float = 0.0,
          bits: int = 4096) -> wire.DnnOpen:
    codec = profile.split(split).fingerprint if split else ""
    return wire.DnnOpen(model=profile.model_id, split=split, codec=codec, device=device,
                        queue_j=queue, bits=bits, spectral_eff=3.0, deadline_ms=100.0)


async def test_info_lists_the_dnn(dnn_edge: EdgeProc, profile: DnnProfile) -> None:
    async with aiohttp.ClientSession() as http, http.get(dnn_edge.url + wire.INFO_PATH) as r:
        info = await r.json()
    assert info["capabilities"] == ["dnn"] and info["dnn"] == profile.model_id
    assert info["dnn_splits"] == [1, 2, 3] and info["model"] is None
    assert info["limits"]["max_packet_bytes"] == MAX_PACKET


async def test_all_packets_give_the_unsplit_models_answer(
        dnn_edge: EdgeProc, profile: DnnProfile, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    raw = heldout[0][:40]
    x = profile.normalize(raw)  # [N, 1, 8, 8]
    full = _run(_sess(profile.full_file), x).argmax(axis=1)  # the unsplit fp32 model
    async with EdgeClient(dnn_edge.url) as edge:
        for split in (1, 2, 3):
            s = profile.split(split)
            feats = _run(_sess(s.head_file), x)  # [N, C, H, W] from the INT8 head
            tail = _sess(s.tail_file)
            for i in range(len(raw)):
                await edge.async_dnn_open(_open(profile, split))
                packets = s.codec.encode(feats[i], 100)
                for j, pkt in enumerate(packets):
                    await edge.async_feature(pkt, evaluate=j == len(packets) - 1)
                res = await edge.async_result()
                await edge.async_dnn_close()
                # an independent device-side pipeline: quantize, dequantize, tail
                rx = s.codec.receiver()
                for pkt in packets:
                    rx.add(pkt)
                ref = top1_summary(_run(tail, rx.feature()[None])[0])
                assert res.seq == len(packets) and res.channels == s.codec.shape[0]
                assert res.top1 == ref[0] == full[i], (split, i)
                assert res.entropy == pytest.approx(ref[2], abs=1e-6)
        # the raw input, the whole model on the edge (edge-only)
        await edge.async_dnn_open(_open(profile, 0))
        data = raw[0].tobytes()
        await edge.async_input(0, data[:30])
        await edge.async_input(30, data[30:])
        res = await edge.async_result()
        assert res.top1 == full[0]
        await edge.async_dnn_close()


async def test_early_stop_keeps_accuracy_within_the_curve(
        dnn_edge: EdgeProc, profile: DnnProfile, digits_dnn: Path) -> None:
    """Progressive, split 2, stopping at the profile's entropy threshold: the accuracy of the
    answers stays on the profile's curve at the fraction they saw, and within the tolerance
    of all channels' accuracy (margins: 150 samples)."""
    rep = await run_classify(ClassifyRequest(
        dnn_dir=digits_dnn, edge=dnn_edge.url, dataset="digits", limit=150, policy="enachi",
        split=2, channel="emulated:bw=0.2,snr_db=10,fading=none", deadline_ms=40.0,
        period_ms=0.0, discover=False))
    curve = profile.split(2).curve
    assert all(t.split == "s2" for t in rep.tasks)
    # What holds at any speed (40 ms deadlines; a busy machine makes more tasks late, it must
    # not make answers wrong): a task without an answer is reported late, and the answers
    # given stay on the curve at the fraction they saw.
    assert all(not t.deadline_met for t in rep.tasks if t.prediction is None)
    answered = [t for t in rep.tasks if t.prediction is not None]
    assert len(answered) >= 100, len(answered)
    stopped = [t for t in answered if t.stop == "entropy"]
    fraction = float(np.mean([t.fraction for t in answered]))
    assert len(stopped) > len(answered) / 3 and fraction < 0.9  # it did stop early, often
    accuracy = sum(t.prediction == t.label for t in answered) / len(answered)
    # each answer against the curve at the fraction it saw (a busy machine spreads the
    # fractions: tasks near their deadline stop earlier, and the curve's mean over spread
    # fractions sits below its value at their mean)
    on_curve = float(np.mean([curve.accuracy_at(t.fraction) for t in answered]))
    assert accuracy >= on_curve - 0.02, (accuracy, on_curve, fraction)
    assert accuracy >= curve.accuracy[-1] - 0.01 - 0.03
    print(f"late {sum(not t.deadline_met for t in rep.tasks)} of {len(rep.tasks)} "
          "(a quiet machine: 0-2)")


async def _raw_ws(url: str) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(url.replace("http", "ws") + wire.WS_PATH)
    return http, ws


async def _ask(ws: aiohttp.ClientWebSocketResponse, frame: bytes) -> wire.Message:
    await ws.send_bytes(frame)
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.BINARY, msg
    return wire.decode(msg.data)


async def test_malformed_and_oversize_packets_get_errors(
        dnn_edge: EdgeProc, profile: DnnProfile, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    http, ws = await _raw_ws(dnn_edge.url)
    try:
        def err(m: wire.Message) -> str:
            assert isinstance(m, wire.Error), m
            return m.code

        bad_open = _open(profile, 2)
        bad_open.model = "resnet@00000000"
        assert err(await _ask(ws, wire.encode(bad_open))) == "unknown-model"
        bad_open = _open(profile, 2)
        bad_open.split = 7
        assert err(await _ask(ws, wire.encode(bad_open))) == "unknown-model"
        bad_open = _open(profile, 2)
        bad_open.codec = "0" * 16
        assert err(await _ask(ws, wire.encode(bad_open))) == "codec-mismatch"
        bad_open = _open(profile, 2)
        bad_open.queue_j = float("nan")
        assert err(await _ask(ws, wire.encode(bad_open))) == "bad-frame"
        opened = await _ask(ws, wire.encode(_open(profile, 2)))
        assert isinstance(opened, wire.DnnOpened) and 0 < opened.share <= 1
        sid = opened.session
        s2, s1 = profile.split(2).codec, profile.split(1).codec
        feat = np.zeros(s1.shape, np.float32)
        wrong_shape = s1.encode(feat, 200)[0]
        assert err(await _ask(ws, wire.encode(wire.Feature(sid, wrong_shape, True)))) == \
            "bad-packet"
        too_big = b"\x01\x00" + b"\x00" * (MAX_PACKET + 10)
        assert err(await _ask(ws, wire.encode(wire.Feature(sid, too_big, True)))) == \
            "bad-packet"
        past_end = bytearray(s2.encode(np.zeros(s2.shape, np.float32), 64)[-1])
        past_end[8:12] = (10_000).to_bytes(4, "big")  # offset beyond the 512-byte stream
        assert err(await _ask(ws, wire.encode(wire.Feature(sid, bytes(past_end), True)))) == \
            "bad-packet"
        assert err(await _ask(ws, wire.encode(wire.Feature(sid, b"\x07" * 20, True)))) == \
            "bad-packet"  # codec version 7
        assert err(await _ask(ws, wire.encode(wire.Input(sid, 0, b"\x00")))) == "bad-packet"
        assert err(await _ask(ws, wire.encode(wire.Feature("nope", b"", True)))) == \
            "unknown-session"
        assert err(await _ask(ws, b"\xc1garbage")) == "bad-frame"
        assert err(await _ask(ws, msgpack.packb({"t": "feature", "session": sid}))) == \
            "bad-frame"
        # the session survived all that: a real feature still gets its answer
        x = profile.normalize(heldout[0][:1])
        feature = _run(_sess(profile.split(2).head_file), x)[0]
        for pkt in s2.encode(feature, 64)[:-1]:
            await ws.send_bytes(wire.encode(wire.Feature(sid, pkt, False)))
        res = await _ask(ws, wire.encode(wire.Feature(sid, s2.encode(feature, 64)[-1], True)))
        assert isinstance(res, wire.Result) and res.channels == 32
    finally:
        await ws.close()
        await http.close()
    # and a new connection is served as before
    async with EdgeClient(dnn_edge.url) as edge:
        opened = await edge.async_dnn_open(_open(profile, 3))
        assert opened.users >= 1
    assert "Traceback" not in dnn_edge.log()


async def test_bandwidth_shares_follow_the_queues(dnn_edge: EdgeProc,
                                                  profile: DnnProfile) -> None:
    async with EdgeClient(dnn_edge.url) as a, EdgeClient(dnn_edge.url) as b:
        first = await a.async_dnn_open(_open(profile, 2, device="a", queue=1.0))
        got_b = await b.async_dnn_open(_open(profile, 2, device="b", queue=4.0))
        got_a = await a.async_dnn_open(_open(profile, 2, device="a", queue=1.0))
        assert first.share == pytest.approx(1.0)
        assert got_a.users == got_b.users == 2
        assert got_b.share > got_a.share and got_a.share + got_b.share <= 1.0 + 1e-9
        # sqrt(Q) shares (equal bits and efficiency), beyond the floor
        assert got_b.share / got_a.share == pytest.approx(2.0, rel=0.15)
    async with EdgeClient(dnn_edge.url) as c:
        await asyncio.sleep(0.1)  # the edge saw a and b leave with their sockets
        alone = await c.async_dnn_open(_open(profile, 2, device="c", queue=1.0))
        assert alone.users == 1 and alone.share == pytest.approx(1.0)
