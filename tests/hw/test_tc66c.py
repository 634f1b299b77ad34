"""RDTech TC66C: AES/CRC decoding, and the driver against an emulated meter on a pty."""

from __future__ import annotations

import time

import pytest
from _waiting import wait_until
from hw_emulators import (
    PolledDevice,
    PtyPort,
    Trace,
    assert_energy_matches,
    crc16_modbus_ref,
    junk,
    tc66c_corrupt,
    tc66c_frame,
)

from hw import FrameError, MeterError, open_meter
from hw._tc66c import crc16_modbus, decode_frame, find_frame

# Covered-window tolerance: step edges (1.5 W x 40 ms / 2 each) and scheduling jitter; the
# TC66C's 0.1 mV / 10 uA resolution adds nothing visible.
REL_TOL = 0.03


def test_crc16_modbus_check_value():
    assert crc16_modbus(b"123456789") == 0x4B37  # the catalogue check value
    assert crc16_modbus_ref(b"123456789") == 0x4B37


def test_decode_frame():
    s = decode_frame(tc66c_frame(9.1234, 1.23456), 3.0)
    assert s.voltage_v == pytest.approx(9.1234)
    assert s.current_a == pytest.approx(1.23456)
    assert s.power_w == pytest.approx(9.1234 * 1.23456, abs=1e-4)


def test_decode_frame_rejects_bad_frames():
    good = tc66c_frame(5.0, 1.0)
    with pytest.raises(FrameError, match="192"):
        decode_frame(good[:150], 0.0)
    with pytest.raises(FrameError, match="pac2 CRC"):
        decode_frame(tc66c_corrupt(good), 0.0)
    with pytest.raises(FrameError, match="magic"):
        decode_frame(junk(192, seed=1), 0.0)
    with pytest.raises(MeterError, match="not a TC66C"):
        decode_frame(tc66c_frame(5.0, 1.0, model=b"TC77"), 0.0)


def test_find_frame_after_garbage():
    frame = tc66c_frame(5.0, 1.0)
    assert find_frame(junk(37, seed=2) + frame) == 37
    assert find_frame(junk(64, seed=2)) == -1


async def test_meter_on_pty_with_faults(pty_path):
    trace = Trace()
    device = PolledDevice(
        PtyPort(pty_path), request=b"getva",
        encode=lambda t: tc66c_frame(trace.voltage_v, trace.current_a(t)),
        corrupt=tc66c_corrupt,
        foreign=lambda t: tc66c_frame(trace.voltage_v, trace.current_a(t), model=b"TC77"),
        faults={4: "garbage", 8: "short", 12: "badcrc", 16: "wrong_model", 24: "unplug"},
    )
    with device:
        spec = f"tc66c:{pty_path},poll_hz=25,timeout_s=0.2,backoff_s=0.05,backoff_max_s=0.2"
        async with open_meter(spec) as meter:
            await wait_until(lambda: meter.latest is not None, what="first sample")
            t0 = time.monotonic()
            await wait_until(lambda: device.unplugged_at is not None and device.requests > 40,
                             timeout_s=15, what="the fault schedule")
            t1 = time.monotonic()
            assert_energy_matches(meter, trace, t0, t1, rel=REL_TOL, span_w=2.5)
            un0, un1 = device.unplugged_at
            assert any(a <= un0 and b >= un1 for a, b in meter.gaps(t0, t1))
            assert 0.5 < meter.coverage(t0, t1) < 1.0
            assert meter.bad_frames >= 2
            assert meter.reconnects >= 2
            assert meter.latest.voltage_v == pytest.approx(trace.voltage_v)
