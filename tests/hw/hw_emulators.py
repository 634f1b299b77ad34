"""Emulated meters for the tests: real pseudo-terminals speaking each protocol's exact bytes.

Nothing here imports the driver under test's encoders: frames are built from the published
layouts with ``struct`` independently, so a layout mistake in a driver fails its test.

* :class:`Trace` - a power trace with an exact integral (constant + sine + steps).
* :class:`PtyPort` - a serial device at a stable path (a symlink to the pty's slave) that
  can be unplugged (master closed, path removed) and plugged in again (a new pty).
* :class:`PolledDevice` - a thread answering requests on a :class:`PtyPort`, with faults
  scheduled by request number.
* :func:`um_frame`, :func:`tc66c_frame` - reply encoders.
* :class:`FileWriter` - a sensor updating sysfs files from a trace.

The INA219 chip and the Pico running the real firmware are in ``hw_ina219_chip.py``.
"""

from __future__ import annotations

import math
import os
import random
import select
import struct
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

# -- power traces ----------------------------------------------------------------------------


@dataclass
class Trace:
    """Power (W) at monotonic time t: ``base_w + amp_w*sin(2 pi f (t-t0)) + steps``.

    ``steps`` are ``(start_s, end_s, extra_w)`` relative to ``t0_s``. Voltage is constant, so
    current is ``power / voltage_v``.
    """

    t0_s: float = field(default_factory=time.monotonic)
    base_w: float = 2.5
    amp_w: float = 0.4
    freq_hz: float = 0.7
    steps: tuple[tuple[float, float, float], ...] = ((0.8, 1.3, 1.5),)
    voltage_v: float = 5.1

    def power_w(self, t_s: float) -> float:
        u = t_s - self.t0_s
        p = self.base_w + self.amp_w * math.sin(2 * math.pi * self.freq_hz * u)
        for a, b, w in self.steps:
            if a <= u < b:
                p += w
        return p

    def current_a(self, t_s: float) -> float:
        return self.power_w(t_s) / self.voltage_v

    def energy_j(self, t0_s: float, t1_s: float) -> float:
        """Exact integral over ``[t0_s, t1_s]``."""
        u0, u1 = t0_s - self.t0_s, t1_s - self.t0_s
        w = 2 * math.pi * self.freq_hz
        e = self.base_w * (u1 - u0) - self.amp_w / w * (math.cos(w * u1) - math.cos(w * u0))
        for a, b, extra in self.steps:
            lo, hi = max(a, u0), min(b, u1)
            if hi > lo:
                e += extra * (hi - lo)
        return e


# -- pseudo-terminal plumbing ----------------------------------------------------------------


class PtyPort:
    """A pty whose slave is reachable at ``path`` while plugged in."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.master: int | None = None
        self._slave: int | None = None
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing before the driver configures it
        os.set_blocking(master, False)
        self.master, self._slave = master, slave
        tmp = self.path + ".new"
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)

    def unplug(self) -> None:
        """The device vanishes: the path goes away and the driver's fd hangs up."""
        if os.path.lexists(self.path):
            os.unlink(self.path)
        for fd in (self.master, self._slave):
            if fd is not None:
                os.close(fd)
        self.master = self._slave = None

    @property
    def plugged(self) -> bool:
        return self.master is not None

    def write(self, data: bytes) -> None:
        """Write all of ``data`` (drops it if the port is unplugged or the reader is gone)."""
        view = memoryview(data)
        deadline = time.monotonic() + 0.5
        while view and self.master is not None and time.monotonic() < deadline:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except OSError:
                return
            view = view[n:]

    def read(self) -> bytes:
        if self.master is None:
            return b""
        try:
            return os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return b""

    def close(self) -> None:
        self.unplug()


class DeviceThread:
    """Runs ``step()`` in a thread until stopped; base of the emulated devices."""

    def __init__(self, port: PtyPort, name: str) -> None:
        self.port = port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"emu-{name}", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> DeviceThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.port.close()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> DeviceThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
        except BaseException as err:  # surfaced by stop()
            self.error = err

    def wait_readable(self, timeout_s: float) -> bool:
        m = self.port.master
        if m is None:
            time.sleep(timeout_s)
            return False
        try:
            r, _, _ = select.select([m], [], [], timeout_s)
        except (OSError, ValueError):
            return False
        return bool(r)

    def step(self) -> None:
        raise AssertionError("subclasses define step()")


class PolledDevice(DeviceThread):
    """Answers each request of ``request_len`` bytes with ``encode(t_s)``, with faults.

    ``faults`` maps a 0-based request number to one of: ``garbage`` (junk before the reply),
    ``short`` (half a reply), ``badcrc`` (``corrupt(reply)``), ``silent`` (no reply),
    ``wrong_model`` (``foreign(t_s)``), ``unplug`` (port gone for ``unplug_s``).
    """

    def __init__(self, port: PtyPort, *, request: bytes, encode: Callable[[float], bytes],
                 corrupt: Callable[[bytes], bytes], foreign: Callable[[float], bytes] | None = None,
                 faults: dict[int, str] | None = None, unplug_s: float = 0.4,
                 garbage: bytes = b"") -> None:
        super().__init__(port, "polled")
        self.request = request
        self.encode = encode
        self.corrupt = corrupt
        self.foreign = foreign
        self.faults = dict(faults or {})
        self.unplug_s = unplug_s
        self.garbage = garbage or junk(23, seed=7)
        self.requests = 0
        self.unplugged_at: tuple[float, float] | None = None
        self._inbuf = b""

    def step(self) -> None:
        if not self.port.plugged:
            return
        if not self.wait_readable(0.02):
            return
        self._inbuf += self.port.read()
        while self.request in self._inbuf:
            _, _, self._inbuf = self._inbuf.partition(self.request)
            self._answer(time.monotonic())

    def _answer(self, t_s: float) -> None:
        fault = self.faults.get(self.requests)
        self.requests += 1
        reply = self.encode(t_s)
        if fault is None:
            self.port.write(reply)
        elif fault == "garbage":
            self.port.write(self.garbage + reply)
        elif fault == "short":
            self.port.write(reply[: len(reply) // 2])
        elif fault == "badcrc":
            self.port.write(self.corrupt(reply))
        elif fault == "wrong_model":
            assert self.foreign is not None
            self.port.write(self.foreign(t_s))
        elif fault == "silent":
            return
        elif fault == "unplug":
            self.port.unplug()
            self._inbuf = b""
            t_un = time.monotonic()
            self._stop.wait(self.unplug_s)
            self.port.plug()
            self.unplugged_at = (t_un, time.monotonic())
        else:
            raise AssertionError(f"unknown fault {fault}")


def junk(n: int, *, seed: int) -> bytes:
    """Deterministic garbage that contains no UM model id and no newline."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        b = rng.randrange(256)
        if b in (0x09, 0x0D, 0x0A):  # first bytes of the UM ids; newline
            continue
        out.append(b)
    return bytes(out)


# -- RDTech UM ---------------------------------------------------------------------------------

UM_IDS = {"um24c": 0x0963, "um25c": 0x09C9, "um34c": 0x0D4C}
UM34C_POSITIONS = (1, 3, 7, 9, 15, 17, 19, 23, 31, 39, 41, 45, 49, 53, 55, 57, 59, 63, 67, 69,
                   73, 79, 83, 89, 97, 99, 109, 111, 113, 119, 121, 127)


def um_frame(model: str, voltage_v: float, current_a: float, temp_c: int = 31) -> bytes:
    """A 130-byte UM reply as the meter sends it (sigrok / rd-usb layout)."""
    v_scale, i_scale = (1000, 10000) if model == "um25c" else (100, 1000)
    v = round(voltage_v * v_scale)
    i = round(current_a * i_scale)
    power_mw = round(voltage_v * current_a * 1000)
    f = bytearray(130)
    struct.pack_into(">HHHIHH", f, 0, UM_IDS[model], v, i, power_mw, temp_c, temp_c * 9 // 5 + 32)
    struct.pack_into(">HH", f, 96, 52, 48)  # D+ 0.52 V, D- 0.48 V
    struct.pack_into(">I", f, 122, round(voltage_v / max(current_a, 1e-3) * 10))
    if model == "um34c":
        f[128] = 0x00
        c = 0
        for p in UM34C_POSITIONS:
            c ^= f[p]
        f[129] = c
    else:
        struct.pack_into(">H", f, 128, 0xFFF1)
    return bytes(f)


def um_corrupt(frame: bytes) -> bytes:
    """Break the checksum / end marker only."""
    f = bytearray(frame)
    f[129] ^= 0x5A
    return bytes(f)


# -- RDTech TC66C ------------------------------------------------------------------------------

TC66C_KEY = bytes.fromhex("5821fa5601b2f02687ff1204622a4fb086f40260816f9a0ba7f106619ab87288")


def crc16_modbus_ref(data: bytes) -> int:
    """Table-free reference CRC-16/MODBUS (check value 0x4B37 for b'123456789')."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            lsb = crc & 1
            crc >>= 1
            if lsb:
                crc ^= 0xA001
    return crc


def _aes(data: bytes, *, encrypt: bool) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    c = Cipher(algorithms.AES(TC66C_KEY), modes.ECB())
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(data) + ctx.finalize()


def tc66c_plain(voltage_v: float, current_a: float, *, model: bytes = b"TC66") -> bytes:
    blocks = []
    for i, magic in enumerate((b"pac1", b"pac2", b"pac3")):
        b = bytearray(64)
        b[0:4] = magic
        if i == 0:
            b[4:8] = model
            b[8:12] = b"1.15"
            struct.pack_into("<I", b, 12, 123456)
            struct.pack_into("<III", b, 48, round(voltage_v * 1e4), round(current_a * 1e5),
                             round(voltage_v * current_a * 1e4))
        elif i == 1:
            struct.pack_into("<I", b, 4, 473)
            struct.pack_into("<II", b, 28, 0, 29)  # temperature sign, degC
        struct.pack_into("<I", b, 60, crc16_modbus_ref(bytes(b[:60])))
        blocks.append(bytes(b))
    return b"".join(blocks)


def tc66c_frame(voltage_v: float, current_a: float, **kw: bytes) -> bytes:
    return _aes(tc66c_plain(voltage_v, current_a, **kw), encrypt=True)


def tc66c_corrupt(frame: bytes) -> bytes:
    """Flip a data byte of pac2 (keeping its stored CRC): a CRC failure after decryption."""
    plain = bytearray(_aes(frame, encrypt=False))
    plain[64 + 20] ^= 0x01
    return _aes(bytes(plain), encrypt=True)


# -- checking a meter against its trace --------------------------------------------------------


def complement(gaps: list[tuple[float, float]], t0_s: float, t1_s: float
               ) -> list[tuple[float, float]]:
    """The covered intervals of ``[t0_s, t1_s]`` given its (sorted, merged) gaps."""
    out, cur = [], t0_s
    for a, b in gaps:
        if a > cur:
            out.append((cur, a))
        cur = max(cur, b)
    if cur < t1_s:
        out.append((cur, t1_s))
    return out


def assert_energy_matches(meter, trace: Trace, t0_s: float, t1_s: float, *, rel: float,
                          span_w: float) -> dict[str, float]:
    """The meter's joules over the window match the trace's exact integral.

    Covered parts must agree within ``rel``. Over each gap the meter bridges linearly, so
    there it may be off by at most the gap length times ``span_w`` (the trace's max - min
    power); the whole window must agree within ``rel`` plus that slack.
    """
    gaps = meter.gaps(t0_s, t1_s)
    covered = complement(gaps, t0_s, t1_s)
    cov_meter = sum(meter.energy_j(a, b) for a, b in covered)
    cov_true = sum(trace.energy_j(a, b) for a, b in covered)
    total_meter = meter.energy_j(t0_s, t1_s)
    total_true = trace.energy_j(t0_s, t1_s)
    slack = sum((b - a) * span_w for a, b in gaps)
    report = {"covered_meter_j": cov_meter, "covered_true_j": cov_true,
              "total_meter_j": total_meter, "total_true_j": total_true, "gap_slack_j": slack}
    assert abs(cov_meter - cov_true) <= rel * cov_true, report
    assert abs(total_meter - total_true) <= rel * total_true + slack, report
    return report


# -- sysfs trees -------------------------------------------------------------------------------


def write_atomic(path: str, text: str) -> None:
    """Replace a file's content at once, as a sysfs read never sees half a value."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class FileWriter(DeviceThread):
    """Every ``period_s``, writes ``files(t_s)`` (path -> text): a sensor updating sysfs."""

    def __init__(self, files: Callable[[float], dict[str, str]], period_s: float = 0.005):
        self.files = files
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emu-sysfs", daemon=True)
        self.error = None
        self.port = None
        self.step()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.error is not None:
            raise self.error

    def step(self) -> None:
        for path, text in self.files(time.monotonic()).items():
            write_atomic(path, text)
        self._stop.wait(self.period_s)
