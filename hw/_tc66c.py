"""RDTech TC66C USB-C meter over its USB serial port (``/dev/ttyACM0``, 115200 8N1).

Protocol (sigrok ``src/hardware/rdtech-tc/protocol.c``): the host sends the ASCII command
``getva``; the meter answers with 192 bytes encrypted with AES-256-ECB under a key published
in the vendor app (``AES_KEY``). Decrypted, the reply is three 64-byte blocks, each starting
with a magic and ending with the CRC16-MODBUS of its first 60 bytes stored as a little-endian
u32. All integers are little-endian.

======= ======= ===== ==================== ============
block   offset  type  field                scale
======= ======= ===== ==================== ============
pac1    0       4 B   magic                ``pac1``
pac1    4       4 B   model                ASCII ``TC66``
pac1    8       4 B   firmware version     ASCII
pac1    12      u32   serial number
pac1    48      u32   voltage              1e-4 V
pac1    52      u32   current              1e-5 A
pac1    56      u32   power                1e-4 W
pac1    60      u32   CRC16-MODBUS(0..59)
pac2    64      4 B   magic                ``pac2``
pac2    68      u32   load resistance      0.1 ohm
pac2    72      u32   group 0 charge       1 mAh
pac2    76      u32   group 0 energy       1 mWh
pac2    88      u32   temperature sign     1 = negative
pac2    92      u32   temperature          1 degC
pac2    96      u32   D+                   0.01 V
pac2    100     u32   D-                   0.01 V
pac2    124     u32   CRC16-MODBUS(64..123)
pac3    128     4 B   magic                ``pac3``
pac3    188     u32   CRC16-MODBUS(128..187)
======= ======= ===== ==================== ============

Resync: AES-ECB decrypts every 16-byte block on its own, so leading garbage is found by
looking for the offset whose first block decrypts to ``pac1`` (``find_frame``).
"""

from __future__ import annotations

import struct
import time

from hw._meter import MeterConfig
from hw._serial import SerialMeter, read_exact
from hw._types import FrameError, MeterError, PowerSample

__all__ = [
    "AES_KEY", "FRAME_LEN", "Tc66cMeter", "crc16_modbus", "decode_frame", "decrypt", "find_frame",
]

FRAME_LEN = 192  # bytes
BLOCK_LEN = 64  # bytes per pac block, CRC included
BLOCK_DATA_LEN = 60  # bytes covered by each block's CRC
REQUEST = b"getva"
MAGICS = (b"pac1", b"pac2", b"pac3")
MODEL_PREFIX = b"TC66"
AES_KEY = bytes((
    0x58, 0x21, 0xFA, 0x56, 0x01, 0xB2, 0xF0, 0x26, 0x87, 0xFF, 0x12, 0x04, 0x62, 0x2A, 0x4F, 0xB0,
    0x86, 0xF4, 0x02, 0x60, 0x81, 0x6F, 0x9A, 0x0B, 0xA7, 0xF1, 0x06, 0x61, 0x9A, 0xB8, 0x72, 0x88,
))
# (name, offset in the decrypted frame, struct code, scale)
FIELDS = (
    ("voltage_v", 48, "<I", 1e-4),
    ("current_a", 52, "<I", 1e-5),
    ("power_w", 56, "<I", 1e-4),
)
POWER_MISMATCH_W = 0.05  # W; |V*I - power| above this and 5 % means a corrupt frame
MAX_RESYNC_BYTES = 3 * FRAME_LEN  # bytes of garbage searched for a frame start


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS: poly 0x8005 reflected (0xA001), init 0xFFFF, no final XOR."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _cipher():  # -> Cipher; imported lazily so hw imports without cryptography
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError as err:
        raise MeterError("the tc66c meter needs cryptography: pip install cryptography") from err
    return Cipher(algorithms.AES(AES_KEY), modes.ECB())


def decrypt(data: bytes) -> bytes:
    """AES-256-ECB decryption with the TC66C key; ``len(data)`` must be a multiple of 16."""
    d = _cipher().decryptor()
    return d.update(data) + d.finalize()


def find_frame(data: bytes) -> int:
    """Offset of the first 16 bytes that decrypt to ``pac1`` (a frame start), or -1."""
    for off in range(0, len(data) - 15):
        if decrypt(data[off : off + 16])[:4] == MAGICS[0]:
            return off
    return -1


def decode_frame(encrypted: bytes, t_s: float) -> PowerSample:
    """Decrypt and check one 192-byte reply and decode it into a sample taken at ``t_s``."""
    if len(encrypted) != FRAME_LEN:
        raise FrameError(f"TC66C frame is {len(encrypted)} bytes, expected {FRAME_LEN}")
    plain = decrypt(encrypted)
    for i, magic in enumerate(MAGICS):
        block = plain[i * BLOCK_LEN : (i + 1) * BLOCK_LEN]
        if block[:4] != magic:
            raise FrameError(f"TC66C block {i + 1} magic {block[:4]!r}, expected {magic!r}")
        want = struct.unpack_from("<I", block, BLOCK_DATA_LEN)[0]
        got = crc16_modbus(block[:BLOCK_DATA_LEN])
        if want != got:
            raise FrameError(f"TC66C {magic.decode()} CRC 0x{got:04X}, frame says 0x{want:04X}")
    if plain[4:8] != MODEL_PREFIX:
        raise MeterError(f"device reports model {plain[4:8]!r}, not a TC66C")
    v = {name: struct.unpack_from(code, plain, off)[0] * scale for name, off, code, scale in FIELDS}
    if abs(v["power_w"] - v["voltage_v"] * v["current_a"]) > max(
        POWER_MISMATCH_W, 0.05 * v["power_w"]
    ):
        raise FrameError("TC66C power field disagrees with V*I")
    return PowerSample(t_s=t_s, power_w=v["power_w"], voltage_v=v["voltage_v"],
                       current_a=v["current_a"])


class Tc66cMeter(SerialMeter):
    """``tc66c:PORT``: poll with ``getva``, decrypt and check 192 bytes."""

    kind = "tc66c"
    baudrate = 115200

    def __init__(self, *, port: str, config: MeterConfig | None = None,
                 baudrate: int | None = None) -> None:
        super().__init__(port=port, config=config, baudrate=baudrate)

    def _device_read(self) -> list[PowerSample]:
        port = self.port
        port.write(REQUEST)
        t_s = time.monotonic()
        deadline_s = t_s + self.config.timeout_s
        try:
            data = read_exact(port, FRAME_LEN, deadline_s)
            try:
                return [decode_frame(data, t_s)]
            except FrameError:
                if decrypt(data[:16])[:4] == MAGICS[0]:
                    raise  # aligned but corrupt: nothing to resync
            return [decode_frame(self._resync(bytearray(data), deadline_s), t_s)]
        except FrameError:
            self._flush_input()
            raise

    def _resync(self, buf: bytearray, deadline_s: float) -> bytes:
        """Leading garbage shifted the frame: find ``pac1`` and read the rest of it."""
        scanned = len(buf)
        while True:
            off = find_frame(bytes(buf))
            if off >= 0:
                del buf[:off]
                if len(buf) < FRAME_LEN:
                    buf += read_exact(self.port, FRAME_LEN - len(buf), deadline_s)
                return bytes(buf[:FRAME_LEN])
            if scanned >= MAX_RESYNC_BYTES:
                raise FrameError(f"no TC66C frame start in {scanned} bytes")
            del buf[: len(buf) - 15]  # a block start may hide in the last 15 bytes
            buf += read_exact(self.port, 16, deadline_s)
            scanned += 16
