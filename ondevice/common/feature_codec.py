"""The progressive feature format of split inference, shared by the device and the edge.

Pure numpy, no I/O. A split DNN's head produces a float feature ``[C, H, W]`` (batch dimension
dropped). The device quantizes it to 8 bits per channel with the scale and zero-point that
`model-export dnn split` stored in ``profile.json`` (``splits[i].feature``), lays the channels
out in the profile's importance order (most important first) as one byte stream, and cuts the
stream into packets of at most N bytes. The edge rebuilds a float feature from whatever packets
it has: channels whose bytes all arrived are dequantized, every other channel is its
calibration mean (so the tail sees the expected value of what it has not received yet).

Quantization (per channel c, affine uint8, the ONNX QuantizeLinear convention)::

    q[c] = clip(round(x[c] / scale[c]) + zero_point[c], 0, 255)      # uint8
    x'[c] = (q[c] - zero_point[c]) * scale[c]                        # float32

Stream: ``order`` is a permutation of ``range(C)``; rank r holds channel ``order[r]``, so the
stream is ``q[order[0]].ravel(), q[order[1]].ravel(), ...``: ``C*H*W`` bytes, row-major within a
channel. Packets carry contiguous byte ranges of this stream, so a channel larger than a packet
spans several packets and is counted as received only when all its bytes are in.

Packet layout (big-endian; a packet is one transport message, its length is the message's):

======  ======  =========  ==================================================================
offset  size    type       field
======  ======  =========  ==================================================================
0       1       u8         ``version`` (``CODEC_VERSION``, 1)
1       1       u8         ``flags``: bit 0 set on the packet that ends the stream
2       2       u16        ``channels`` C of the whole feature
4       2       u16        ``height`` H
6       2       u16        ``width`` W
8       4       u32        ``offset`` of this packet's first payload byte in the stream
12      n       u8[n]      ``payload``: stream bytes ``[offset, offset + n)``, n >= 1
======  ======  =========  ==================================================================

The header repeats the shape so that the receiver rejects a packet for another split point
(`CodecError`) instead of misreading it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CODEC_VERSION = 1
HEADER = struct.Struct(">BBHHHI")  # version, flags, channels, height, width, offset
HEADER_BYTES = HEADER.size  # 12
FLAG_LAST = 0x01
MAX_DIM = 0xFFFF  # u16 channels / height / width


class CodecError(ValueError):
    """A packet or feature that does not fit the codec: wrong version, shape, range or size."""


@dataclass(frozen=True)
class PacketHeader:
    """One decoded packet header; ``offset`` in bytes of the importance-ordered stream."""

    version: int
    last: bool
    channels: int
    height: int
    width: int
    offset: int


def encode_header(header: PacketHeader) -> bytes:
    """The 12 header bytes of `header` (see the module's layout table)."""
    return HEADER.pack(
        header.version,
        FLAG_LAST if header.last else 0,
        header.channels,
        header.height,
        header.width,
        header.offset,
    )


def decode_header(packet: bytes) -> tuple[PacketHeader, memoryview]:
    """Split `packet` into its header and payload; CodecError if it is short or of another
    version."""
    if len(packet) <= HEADER_BYTES:
        raise CodecError(f"packet of {len(packet)} bytes: a header is {HEADER_BYTES} plus payload")
    version, flags, c, h, w, offset = HEADER.unpack_from(packet)
    if version != CODEC_VERSION:
        raise CodecError(f"feature codec version {version}, this side speaks {CODEC_VERSION}")
    header = PacketHeader(version, bool(flags & FLAG_LAST), c, h, w, offset)
    return header, memoryview(packet)[HEADER_BYTES:]


def _check_params(
    channels: int, scale: np.ndarray, zero_point: np.ndarray, order: np.ndarray | None = None
) -> None:
    if scale.shape != (channels,) or zero_point.shape != (channels,):
        raise CodecError(
            f"scale {scale.shape} and zero_point {zero_point.shape} must both be ({channels},)"
        )
    if not np.all(scale > 0):
        raise CodecError("every channel's scale must be > 0")
    if np.any(zero_point < 0) or np.any(zero_point > 255):
        raise CodecError("zero points must lie in 0..255")
    if order is not None and (
        order.shape != (channels,) or not np.array_equal(np.sort(order), np.arange(channels))
    ):
        raise CodecError(f"order must be a permutation of range({channels})")


def channel_params(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel uint8 ``(scale [C] float32, zero_point [C] int32)`` covering ``[lo, hi]``
    (``[C]`` each, the calibration minimum and maximum), widened to include 0 as ONNX does so
    that the zero point is an integer in 0..255. A constant-zero channel gets scale 1."""
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)  # [C]
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)  # [C]
    span = hi - lo
    scale = np.where(span > 0, span / 255.0, 1.0)  # [C]
    zero_point = np.clip(np.rint(-lo / scale), 0, 255).astype(np.int32)  # [C]
    return scale.astype(np.float32), zero_point


def quantize_feature(feature: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Quantize a float feature ``[..., C, H, W]`` to uint8 of the same shape, per channel.

    `scale` ``[C]`` (float, > 0) and `zero_point` ``[C]`` (0..255) as in the profile; values
    outside the calibrated range saturate at 0 or 255. Leading (batch) axes are allowed.
    """
    if feature.ndim < 3:
        raise CodecError(f"feature must be [..., C, H, W], got shape {feature.shape}")
    scale = np.asarray(scale, dtype=np.float32)  # [C]
    zero_point = np.asarray(zero_point, dtype=np.int32)  # [C]
    _check_params(feature.shape[-3], scale, zero_point)
    q = np.rint(feature.astype(np.float32) / scale[:, None, None])  # [..., C, H, W]
    q += zero_point[:, None, None]
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize_feature(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """The float32 ``[..., C, H, W]`` feature that uint8 `q` ``[..., C, H, W]`` stands for."""
    if q.ndim < 3:
        raise CodecError(f"q must be [..., C, H, W], got shape {q.shape}")
    scale = np.asarray(scale, dtype=np.float32)  # [C]
    zero_point = np.asarray(zero_point, dtype=np.int32)  # [C]
    _check_params(q.shape[-3], scale, zero_point)
    centered = q.astype(np.int32) - zero_point[:, None, None]  # [..., C, H, W]
    return centered.astype(np.float32) * scale[:, None, None]


def pack_packets(q: np.ndarray, order: Sequence[int], max_packet_bytes: int) -> list[bytes]:
    """Cut uint8 `q` ``[C, H, W]`` into packets of at most `max_packet_bytes` bytes (header
    included), channels in `order` (most important first). The last packet has FLAG_LAST."""
    if q.dtype != np.uint8 or q.ndim != 3:
        raise CodecError(f"q must be uint8 [C, H, W], got {q.dtype} {q.shape}")
    c, h, w = q.shape
    if max(c, h, w) > MAX_DIM:
        raise CodecError(f"feature {q.shape} exceeds the u16 header fields")
    if max_packet_bytes <= HEADER_BYTES:
        raise CodecError(f"max_packet_bytes must exceed the {HEADER_BYTES}-byte header")
    perm = np.asarray(order, dtype=np.int64)  # [C]
    if perm.shape != (c,) or not np.array_equal(np.sort(perm), np.arange(c)):
        raise CodecError(f"order must be a permutation of range({c})")
    stream = np.ascontiguousarray(q[perm]).tobytes()  # C*H*W bytes, rank-major
    step = max_packet_bytes - HEADER_BYTES
    packets = []
    for start in range(0, len(stream), step):
        end = min(start + step, len(stream))
        header = PacketHeader(CODEC_VERSION, end == len(stream), c, h, w, start)
        packets.append(encode_header(header) + stream[start:end])
    return packets


def packets_for_channels(channels: int, height: int, width: int, max_packet_bytes: int) -> int:
    """How many packets of at most `max_packet_bytes` carry the first `channels` channels."""
    step = max_packet_bytes - HEADER_BYTES
    if step <= 0:
        raise CodecError(f"max_packet_bytes must exceed the {HEADER_BYTES}-byte header")
    return -(-channels * height * width // step)


@dataclass(frozen=True)
class FeatureCodec:
    """The per-split parameters both sides need: shape ``(C, H, W)``, per-channel ``scale``,
    ``zero_point`` and calibration ``mean`` (all ``[C]``), and the importance ``order``."""

    shape: tuple[int, int, int]
    scale: np.ndarray  # [C] float32
    zero_point: np.ndarray  # [C] int32, 0..255
    mean: np.ndarray  # [C] float32, the feature's calibration mean per channel
    order: np.ndarray  # [C] int64, channel ids, most important first

    def __post_init__(self) -> None:
        c = self.shape[0]
        _check_params(c, self.scale, self.zero_point, self.order)
        if self.mean.shape != (c,):
            raise CodecError(f"mean must be ({c},), got {self.mean.shape}")

    @classmethod
    def from_profile(cls, split: dict[str, Any]) -> FeatureCodec:
        """Build from one entry of ``profile.json``'s ``splits`` list."""
        f = split["feature"]
        return cls(
            shape=tuple(int(v) for v in f["shape"]),  # type: ignore[arg-type]
            scale=np.asarray(f["scale"], dtype=np.float32),
            zero_point=np.asarray(f["zero_point"], dtype=np.int32),
            mean=np.asarray(f["mean"], dtype=np.float32),
            order=np.asarray(f["importance_order"], dtype=np.int64),
        )

    @property
    def channel_bytes(self) -> int:
        """Bytes of one quantized channel (H*W)."""
        return self.shape[1] * self.shape[2]

    def encode(self, feature: np.ndarray, max_packet_bytes: int) -> list[bytes]:
        """Packets for float `feature` ``[C, H, W]`` (a leading batch axis of 1 is dropped)."""
        if feature.ndim == 4 and feature.shape[0] == 1:
            feature = feature[0]
        if tuple(feature.shape) != self.shape:
            raise CodecError(f"feature {feature.shape} is not the split's {self.shape}")
        q = quantize_feature(feature, self.scale, self.zero_point)
        return pack_packets(q, self.order, max_packet_bytes)

    def fill(self, q: np.ndarray, received: np.ndarray) -> np.ndarray:
        """Float32 ``[..., C, H, W]``: dequantized `q` where `received` ``[C]`` (bool) is set,
        the calibration mean elsewhere."""
        x = dequantize_feature(q, self.scale, self.zero_point)  # [..., C, H, W]
        x[..., ~received, :, :] = self.mean[~received, None, None]
        return x

    def receiver(self) -> FeatureReceiver:
        """A fresh receiver for one feature."""
        return FeatureReceiver(self)


class FeatureReceiver:
    """Collects the packets of one feature and rebuilds it at any time.

    Packets may arrive in any order and repeat; each is checked against the split's shape and
    the stream's size (CodecError, and the receiver is unchanged, on a bad one).
    """

    def __init__(self, codec: FeatureCodec) -> None:
        self.codec = codec
        c, h, w = codec.shape
        self._stream = np.zeros(c * h * w, dtype=np.uint8)  # rank-major bytes
        self._have = np.zeros(c * h * w, dtype=bool)
        self.last_seen = False
        self.packets = 0
        self.payload_bytes = 0

    def add(self, packet: bytes) -> int:
        """Take one packet; return the number of channels now complete."""
        header, payload = decode_header(packet)
        c, h, w = self.codec.shape
        if (header.channels, header.height, header.width) != (c, h, w):
            raise CodecError(
                f"packet for a [{header.channels}, {header.height}, {header.width}] feature, "
                f"this split's is [{c}, {h}, {w}]"
            )
        end = header.offset + len(payload)
        if end > self._stream.size:
            raise CodecError(
                f"packet bytes [{header.offset}, {end}) beyond the {self._stream.size}-byte stream"
            )
        self._stream[header.offset : end] = np.frombuffer(payload, dtype=np.uint8)
        self._have[header.offset : end] = True
        self.last_seen = self.last_seen or header.last
        self.packets += 1
        self.payload_bytes += len(payload)
        return self.channels_received

    @property
    def received_ranks(self) -> np.ndarray:
        """``[C]`` bool: rank r's channel has all its bytes."""
        return self._have.reshape(self.codec.shape[0], -1).all(axis=1)

    @property
    def channels_received(self) -> int:
        """Channels complete so far."""
        return int(self.received_ranks.sum())

    @property
    def fraction(self) -> float:
        """Fraction of the feature's channels complete, 0..1."""
        return self.channels_received / self.codec.shape[0]

    @property
    def complete(self) -> bool:
        """Every byte of the stream is in."""
        return bool(self._have.all())

    def feature(self) -> np.ndarray:
        """Float32 ``[C, H, W]``: received channels dequantized, the rest at their mean."""
        c, h, w = self.codec.shape
        by_rank = self._stream.reshape(c, h, w)  # [C, H, W] in rank order
        q = np.empty_like(by_rank)
        q[self.codec.order] = by_rank  # back to channel order
        received = np.zeros(c, dtype=bool)
        received[self.codec.order] = self.received_ranks
        return self.codec.fill(q, received)


def partial_feature(codec: FeatureCodec, feature: np.ndarray, channels: int) -> np.ndarray:
    """What the receiver rebuilds after the first `channels` channels (in importance order) of
    float `feature` ``[..., C, H, W]`` arrived: quantized then dequantized, the rest at their
    mean. Same numbers as packing and receiving, without making packets."""
    q = quantize_feature(feature, codec.scale, codec.zero_point)  # [..., C, H, W]
    received = np.zeros(codec.shape[0], dtype=bool)
    received[codec.order[:channels]] = True
    return codec.fill(q, received)


def iter_received(packets: Iterable[bytes], codec: FeatureCodec) -> Iterator[np.ndarray]:
    """Feed `packets` to a fresh receiver, yielding the rebuilt feature after each one."""
    rx = codec.receiver()
    for packet in packets:
        rx.add(packet)
        yield rx.feature()
