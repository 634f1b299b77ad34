"""RDTech UM24C / UM25C / UM34C USB meters over Bluetooth SPP (``/dev/rfcomm0``, 9600 8N1).

Protocol (sigrok ``src/hardware/rdtech-um/protocol.c`` and the sigrok wiki "RDTech UM
series"): the host sends the single byte ``0xF0``; the meter answers with a 130-byte frame,
all integers big-endian. The meter answers at most about 10 times a second (sigrok polls
every 100 ms and waits 1000 ms for a reply).

Frame layout (offset, wire type, field, scale UM24C/UM34C, scale UM25C):

====== ===== ================== ================ ================
offset type  field              UM24C, UM34C     UM25C
====== ===== ================== ================ ================
0      u16   model id           0x0963 / 0x0D4C  0x09C9
2      u16   voltage            0.01 V           0.001 V
4      u16   current            0.001 A          0.0001 A
6      u32   power              0.001 W          0.001 W
10     u16   temperature        1 degC           1 degC
12     u16   temperature        1 degF           1 degF
14     u16   selected group     index            index
16     10x   groups             (u32 mAh, u32 mWh) each
96     u16   D+                 0.01 V           0.01 V
98     u16   D-                 0.01 V           0.01 V
100    u16   charging mode      enum             enum
102    u32   recorded charge    1 mAh            1 mAh
106    u32   recorded energy    1 mWh            1 mWh
110    u16   record threshold   0.01 A           0.01 A
112    u32   recorded time      1 s              1 s
116    u16   recording active   bool             bool
118    u16   screen timeout     1 min            1 min
120    u16   brightness         0..5             0..5
122    u32   load resistance    0.1 ohm          0.1 ohm
126    u16   screen             index            index
128    u16   end / checksum     0xFFF1           0xFFF1 (UM34C: see below)
====== ===== ================== ================ ================

Checksum: UM24C and UM25C end with the constant 0xFFF1. UM34C puts in byte 129 the XOR of
the bytes at ``UM34C_CHECKSUM_POSITIONS`` (sigrok ``poll_csum_um34c``).

Power is reported as voltage x current: on the UM25C that has a finer resolution (1 mV x
0.1 mA) than the 1 mW power field, which is kept as a plausibility check.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from hw._meter import MeterConfig
from hw._serial import SerialMeter, read_exact
from hw._types import FrameError, MeterError, PowerSample

__all__ = [
    "FRAME_LEN", "MODELS", "UmMeter", "UmModel", "checksum_ok", "decode_frame", "find_model",
]

FRAME_LEN = 130  # bytes
REQUEST = b"\xf0"
END_MARKER = 0xFFF1
UM34C_CHECKSUM_POSITIONS = (
    1, 3, 7, 9, 15, 17, 19, 23, 31, 39, 41, 45, 49, 53, 55, 57, 59, 63, 67, 69, 73, 79, 83,
    89, 97, 99, 109, 111, 113, 119, 121, 127,
)
# (name, offset, struct code) of the fields decode_frame reads.
FIELDS = (
    ("model_id", 0, ">H"),
    ("voltage", 2, ">H"),
    ("current", 4, ">H"),
    ("power", 6, ">I"),
    ("temp_c", 10, ">H"),
    ("resistance", 122, ">I"),
)
POWER_FIELD_W = 0.001  # W per count, all models
POWER_MISMATCH_W = 0.05  # W; |V*I - power field| above this and 5 % means a corrupt frame


@dataclass(frozen=True, slots=True)
class UmModel:
    """Per-model profile: id, scaling and checksum kind."""

    name: str
    model_id: int
    volt_per_count: float  # V
    amp_per_count: float  # A
    xor_checksum: bool  # UM34C-style XOR in byte 129 instead of the 0xFFF1 end marker


MODELS: dict[str, UmModel] = {
    "um24c": UmModel("UM24C", 0x0963, 0.01, 0.001, xor_checksum=False),
    "um25c": UmModel("UM25C", 0x09C9, 0.001, 0.0001, xor_checksum=False),
    "um34c": UmModel("UM34C", 0x0D4C, 0.01, 0.001, xor_checksum=True),
}


def find_model(model_id: int) -> UmModel | None:
    """The profile with this model id, or None."""
    for m in MODELS.values():
        if m.model_id == model_id:
            return m
    return None


def um34c_checksum(frame: bytes) -> int:
    """XOR of the UM34C checksum positions."""
    c = 0
    for i in UM34C_CHECKSUM_POSITIONS:
        c ^= frame[i]
    return c


def checksum_ok(frame: bytes, model: UmModel) -> bool:
    """The frame's end marker (UM24C, UM25C) or XOR checksum (UM34C) is right."""
    if model.xor_checksum:
        return um34c_checksum(frame) == frame[FRAME_LEN - 1]
    return struct.unpack_from(">H", frame, 128)[0] == END_MARKER


def decode_frame(frame: bytes, t_s: float, model: UmModel) -> PowerSample:
    """Decode one 130-byte reply of ``model`` into a sample taken at ``t_s``.

    Raises FrameError for a wrong length or checksum, MeterError for another model's id.
    """
    if len(frame) != FRAME_LEN:
        raise FrameError(f"{model.name} frame is {len(frame)} bytes, expected {FRAME_LEN}")
    v = {name: struct.unpack_from(code, frame, off)[0] for name, off, code in FIELDS}
    if v["model_id"] != model.model_id:
        other = find_model(v["model_id"])
        if other is not None and checksum_ok(frame, other):
            raise MeterError(
                f"device is a {other.name} (model id 0x{other.model_id:04X}), not a "
                f"{model.name}: use the spec '{other.name.lower()}:PORT'"
            )
        raise FrameError(f"no {model.name} frame: model id 0x{v['model_id']:04X}")
    if not checksum_ok(frame, model):
        raise FrameError(f"{model.name} checksum / end marker mismatch")
    voltage_v = v["voltage"] * model.volt_per_count
    current_a = v["current"] * model.amp_per_count
    power_w = voltage_v * current_a
    field_w = v["power"] * POWER_FIELD_W
    if abs(field_w - power_w) > max(POWER_MISMATCH_W, 0.05 * power_w):
        raise FrameError(f"{model.name} power field {field_w:.3f} W disagrees with V*I "
                         f"{power_w:.3f} W")
    return PowerSample(t_s=t_s, power_w=power_w, voltage_v=voltage_v, current_a=current_a)


class UmMeter(SerialMeter):
    """``um24c:PORT`` / ``um25c:PORT`` / ``um34c:PORT``: poll with 0xF0, decode 130 bytes."""

    baudrate = 9600

    def __init__(self, *, model: str, port: str, config: MeterConfig | None = None,
                 baudrate: int | None = None) -> None:
        super().__init__(port=port, config=config, baudrate=baudrate)
        self.model = MODELS[model]
        self.kind = model  # instance attribute: one class serves three kinds

    def _device_read(self) -> list[PowerSample]:
        port = self.port
        port.write(REQUEST)
        t_s = time.monotonic()  # the meter samples when the request arrives
        deadline_s = t_s + self.config.timeout_s
        try:
            frame = self._read_frame(deadline_s)
            return [decode_frame(frame, t_s, self.model)]
        except FrameError:
            self._flush_input()
            raise

    def _read_frame(self, deadline_s: float) -> bytes:
        """Read one frame, skipping bytes until a known model id starts it (resync)."""
        buf = bytearray(read_exact(self.port, 2, deadline_s))
        while True:
            model_id = struct.unpack_from(">H", buf)[0]
            if model_id == self.model.model_id or find_model(model_id) is not None:
                buf += read_exact(self.port, FRAME_LEN - 2, deadline_s)
                return bytes(buf)
            del buf[0]
            buf += read_exact(self.port, 1, deadline_s)
