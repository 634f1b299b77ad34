"""ondevice.common.feature_codec: 8-bit per-channel quantization, packets, rebuilding with means."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from ondevice.common.feature_codec import (
    CODEC_VERSION,
    HEADER_BYTES,
    CodecError,
    FeatureCodec,
    PacketHeader,
    channel_params,
    decode_header,
    dequantize_feature,
    encode_header,
    iter_received,
    pack_packets,
    packets_for_channels,
    partial_feature,
    quantize_feature,
)


def _naive_quantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """Element by element, the ONNX QuantizeLinear formula (round half to even)."""
    out = np.empty(x.shape, dtype=np.uint8)
    for c in range(x.shape[0]):
        for i in np.ndindex(x.shape[1:]):
            v = round(float(x[(c, *i)]) / float(scale[c])) + int(zp[c])
            out[(c, *i)] = min(255, max(0, v))
    return out


def _codec(c: int = 6, h: int = 3, w: int = 5, seed: int = 0) -> tuple[FeatureCodec, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.normal(loc=rng.normal(size=(1, c, 1, 1)), size=(64, c, h, w)).astype(np.float32)
    feats[:, 0] = np.maximum(feats[:, 0], 0)  # a ReLU channel: range [0, max]
    lo, hi = feats.min(axis=(0, 2, 3)), feats.max(axis=(0, 2, 3))
    scale, zp = channel_params(lo, hi)
    mean = feats.mean(axis=(0, 2, 3)).astype(np.float32)
    order = rng.permutation(c)
    return FeatureCodec((c, h, w), scale, zp, mean, order), feats


def test_channel_params_cover_the_range_and_zero() -> None:
    scale, zp = channel_params(np.array([0.0, -2.0, 1.0, 0.0]), np.array([5.1, 3.0, 4.0, 0.0]))
    assert scale[0] == pytest.approx(5.1 / 255)
    assert zp[0] == 0
    assert scale[1] == pytest.approx(5.0 / 255)
    assert zp[1] == round(2.0 / (5.0 / 255))
    assert scale[2] == pytest.approx(4.0 / 255) and zp[2] == 0  # range widened to include 0
    assert scale[3] == 1.0 and zp[3] == 0  # constant-zero channel


def test_quantize_matches_naive_reference_and_roundtrip_error_is_half_a_step() -> None:
    codec, feats = _codec()
    x = feats[3]  # [C, H, W]
    q = quantize_feature(x, codec.scale, codec.zero_point)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, _naive_quantize(x, codec.scale, codec.zero_point))
    back = dequantize_feature(q, codec.scale, codec.zero_point)
    err = np.abs(back - x).max(axis=(1, 2))  # [C]
    assert np.all(err <= codec.scale / 2 + 1e-6)


def test_quantize_saturates_outside_the_calibrated_range() -> None:
    scale, zp = np.array([0.1], np.float32), np.array([10], np.int32)
    x = np.array([[[-100.0, 100.0]]], np.float32)
    np.testing.assert_array_equal(quantize_feature(x, scale, zp), [[[0, 255]]])


def test_batched_quantize_equals_per_sample() -> None:
    codec, feats = _codec()
    batch = quantize_feature(feats[:4], codec.scale, codec.zero_point)  # [4, C, H, W]
    for i in range(4):
        np.testing.assert_array_equal(
            batch[i], quantize_feature(feats[i], codec.scale, codec.zero_point)
        )


def test_header_layout_is_the_documented_bytes() -> None:
    header = PacketHeader(CODEC_VERSION, True, 300, 7, 9, 70_000)
    raw = encode_header(header)
    assert len(raw) == HEADER_BYTES == 12
    assert raw == bytes([1, 1, 0x01, 0x2C, 0, 7, 0, 9]) + struct.pack(">I", 70_000)
    decoded, payload = decode_header(raw + b"\xaa")
    assert decoded == header and bytes(payload) == b"\xaa"


@pytest.mark.parametrize("max_bytes", [13, 20, 12 + 15, 12 + 31, 1500])
def test_all_packets_rebuild_the_dequantized_feature(max_bytes: int) -> None:
    codec, feats = _codec()
    x = feats[5]
    packets = codec.encode(x, max_bytes)
    c, h, w = codec.shape
    assert all(len(p) <= max_bytes for p in packets)
    assert sum(len(p) - HEADER_BYTES for p in packets) == c * h * w
    assert [decode_header(p)[0].last for p in packets] == [False] * (len(packets) - 1) + [True]
    assert len(packets) == packets_for_channels(c, h, w, max_bytes)
    rx = codec.receiver()
    for p in packets[::-1]:  # any arrival order
        rx.add(p)
    assert rx.complete and rx.fraction == 1.0 and rx.last_seen
    q = quantize_feature(x, codec.scale, codec.zero_point)
    np.testing.assert_array_equal(
        rx.feature(), dequantize_feature(q, codec.scale, codec.zero_point)
    )


def test_stream_follows_the_importance_order() -> None:
    codec, feats = _codec()
    q = quantize_feature(feats[0], codec.scale, codec.zero_point)
    packets = pack_packets(q, codec.order, HEADER_BYTES + codec.channel_bytes)  # one per channel
    for rank, p in enumerate(packets):
        header, payload = decode_header(p)
        assert header.offset == rank * codec.channel_bytes
        np.testing.assert_array_equal(
            np.frombuffer(payload, np.uint8), q[codec.order[rank]].ravel()
        )


def test_missing_channels_are_their_calibration_mean() -> None:
    codec, feats = _codec()
    x = feats[7]
    per_channel = HEADER_BYTES + codec.channel_bytes
    packets = codec.encode(x, per_channel)
    rx = codec.receiver()
    for k, p in enumerate(packets[:2]):
        assert rx.add(p) == k + 1
    out = rx.feature()
    got = set(codec.order[:2].tolist())
    deq = dequantize_feature(
        quantize_feature(x, codec.scale, codec.zero_point), codec.scale, codec.zero_point
    )
    for ch in range(codec.shape[0]):
        if ch in got:
            np.testing.assert_array_equal(out[ch], deq[ch])
        else:
            assert np.all(out[ch] == codec.mean[ch])
    np.testing.assert_array_equal(out, partial_feature(codec, x, 2))


def test_a_channel_split_across_packets_counts_only_when_complete() -> None:
    codec, feats = _codec(c=3, h=4, w=4)
    packets = codec.encode(feats[0], HEADER_BYTES + 10)  # 16-byte channels, 10-byte payloads
    rx = codec.receiver()
    assert rx.add(packets[0]) == 0  # 10 of 16 bytes of the first channel
    assert rx.add(packets[1]) == 1  # bytes 10..20: channel 0 done
    assert rx.fraction == pytest.approx(1 / 3)


def test_iter_received_yields_one_feature_per_packet_ending_with_all() -> None:
    codec, feats = _codec()
    packets = codec.encode(feats[1], 40)
    outs = list(iter_received(packets, codec))
    assert len(outs) == len(packets)
    np.testing.assert_array_equal(outs[-1], partial_feature(codec, feats[1], codec.shape[0]))


def test_partial_feature_batches() -> None:
    codec, feats = _codec()
    batch = partial_feature(codec, feats[:3], 4)  # [3, C, H, W]
    for i in range(3):
        np.testing.assert_array_equal(batch[i], partial_feature(codec, feats[i], 4))


def test_from_profile_reads_a_split_entry() -> None:
    codec, _ = _codec()
    entry = {
        "feature": {
            "shape": list(codec.shape),
            "scale": codec.scale.tolist(),
            "zero_point": codec.zero_point.tolist(),
            "mean": codec.mean.tolist(),
            "importance_order": codec.order.tolist(),
        }
    }
    again = FeatureCodec.from_profile(entry)
    assert again.shape == codec.shape
    np.testing.assert_array_equal(again.order, codec.order)
    np.testing.assert_allclose(again.scale, codec.scale)


def test_bad_packets_are_errors_and_leave_the_receiver_unchanged() -> None:
    codec, feats = _codec()
    good = codec.encode(feats[0], 64)[0]
    rx = codec.receiver()
    bad = [
        good[:HEADER_BYTES],  # no payload
        bytes([2]) + good[1:],  # another version
        good[:2] + struct.pack(">H", 7) + good[4:],  # another channel count
        good[:8] + struct.pack(">I", 10_000) + good[12:],  # beyond the stream
    ]
    for packet in bad:
        with pytest.raises(CodecError):
            rx.add(packet)
    assert rx.packets == 0 and rx.channels_received == 0


def test_bad_parameters_are_errors() -> None:
    codec, feats = _codec()
    with pytest.raises(CodecError):
        FeatureCodec(codec.shape, codec.scale, codec.zero_point, codec.mean, codec.order[:-1])
    with pytest.raises(CodecError):
        quantize_feature(feats[0], -codec.scale, codec.zero_point)
    with pytest.raises(CodecError):
        codec.encode(feats[0][:2], 100)  # wrong shape
    with pytest.raises(CodecError):
        codec.encode(feats[0], HEADER_BYTES)  # no room for payload
