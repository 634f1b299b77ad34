"""RDTech UM24C/UM25C/UM34C: pure decoding, and the driver against an emulated meter on a pty."""

from __future__ import annotations

import logging
import time

import pytest
from _waiting import wait_until
from hw_emulators import (
    PolledDevice,
    PtyPort,
    Trace,
    assert_energy_matches,
    um_corrupt,
    um_frame,
)

from hw import FrameError, MeterError, open_meter
from hw._um25c import MODELS, decode_frame

# Energy tolerance on the covered parts of a window: trapezoid error at the trace's step
# edges (1.5 W x 40 ms / 2 per edge), the UM24C/UM34C 1 mA / 10 mV quantization (0.3 %)
# and thread-scheduling jitter between the request and the emulator's reading of the trace.
REL_TOL = 0.03
SPEC_OPTS = "poll_hz=25,timeout_s=0.2,backoff_s=0.05,backoff_max_s=0.2"


@pytest.mark.parametrize(("model", "volts", "amps"), [
    ("um24c", 5.12, 0.734), ("um25c", 5.123, 0.7345), ("um34c", 12.01, 2.5)])
def test_decode_frame_scaling(model, volts, amps):
    s = decode_frame(um_frame(model, volts, amps), 12.5, MODELS[model])
    assert s.t_s == 12.5
    assert s.voltage_v == pytest.approx(volts, abs=1e-9)
    assert s.current_a == pytest.approx(amps, abs=1e-9)
    assert s.power_w == pytest.approx(volts * amps, rel=1e-9)


def test_decode_frame_rejects_bad_frames():
    good = um_frame("um25c", 5.0, 1.0)
    with pytest.raises(FrameError, match="130"):
        decode_frame(good[:100], 0.0, MODELS["um25c"])
    with pytest.raises(FrameError, match="end marker"):
        decode_frame(um_corrupt(good), 0.0, MODELS["um25c"])
    with pytest.raises(FrameError, match="checksum"):
        decode_frame(um_corrupt(um_frame("um34c", 5.0, 1.0)), 0.0, MODELS["um34c"])
    with pytest.raises(MeterError, match=r"UM34C.*um34c:PORT"):
        decode_frame(um_frame("um34c", 5.0, 1.0), 0.0, MODELS["um25c"])
    bad_power = bytearray(good)
    bad_power[6:10] = (9000).to_bytes(4, "big")  # 9 W claimed for 5 V x 1 A
    with pytest.raises(FrameError, match="power field"):
        decode_frame(bytes(bad_power), 0.0, MODELS["um25c"])


@pytest.mark.parametrize("model", ["um24c", "um25c", "um34c"])
async def test_meter_on_pty_with_faults(model, pty_path, caplog):
    caplog.set_level(logging.DEBUG, logger="hw")
    trace = Trace()
    foreign = "um25c" if model == "um34c" else "um34c"
    port = PtyPort(pty_path)
    device = PolledDevice(
        port, request=b"\xf0",
        encode=lambda t: um_frame(model, trace.voltage_v, trace.current_a(t)),
        corrupt=um_corrupt,
        foreign=lambda t: um_frame(foreign, trace.voltage_v, trace.current_a(t)),
        faults={4: "garbage", 8: "short", 12: "badcrc", 16: "wrong_model", 24: "unplug"},
    )
    with device:
        async with open_meter(f"{model}:{pty_path},{SPEC_OPTS}") as meter:
            assert meter.kind == model and meter.measured
            assert await meter.async_wait_sample(5.0)
            t0 = time.monotonic()
            await wait_until(lambda: device.unplugged_at is not None and device.requests > 40,
                             timeout_s=15, what="the fault schedule")
            t1 = time.monotonic()
            assert_energy_matches(meter, trace, t0, t1, rel=REL_TOL, span_w=2.5)
            # the unplugged interval lies inside one reported gap
            un0, un1 = device.unplugged_at
            assert any(a <= un0 and b >= un1 for a, b in meter.gaps(t0, t1)), meter.gaps(t0, t1)
            assert 0.5 < meter.coverage(t0, t1) < 1.0
            assert meter.bad_frames >= 2  # the short frame and the bad checksum
            assert meter.reconnects >= 2  # the wrong model and the unplug
            assert meter.sample_rate_hz > 5
    assert any("not a" in r.getMessage() for r in caplog.records), "wrong model not logged"
    assert any("does not exist" in r.getMessage() for r in caplog.records)


async def test_close_is_prompt_and_idempotent(pty_path):
    port = PtyPort(pty_path)
    # a device that never answers: the driver sits in a blocking read when we close
    device = PolledDevice(port, request=b"\xf0", encode=lambda t: b"", corrupt=um_corrupt)
    with device:
        meter = open_meter(f"um25c:{pty_path},timeout_s=5")
        await meter.__aenter__()
        await wait_until(lambda: device.requests >= 1, what="a request")
        t = time.monotonic()
        await meter.async_close()
        await meter.async_close()
        assert time.monotonic() - t < 1.0  # cancel_read, not the 5 s timeout
        assert meter.energy_j(0.0, time.monotonic()) == 0.0
        assert meter.coverage(t - 1, t) == 0.0


async def test_missing_port_does_not_raise_and_recovers(pty_path):
    trace = Trace(amp_w=0.0, steps=())
    async with open_meter(f"um25c:{pty_path},{SPEC_OPTS}") as meter:
        assert not await meter.async_wait_sample(0.1)
        await wait_until(lambda: meter.reconnects >= 2, what="retries")
        assert meter.latest is None
        device = PolledDevice(PtyPort(pty_path), request=b"\xf0",
                              encode=lambda t: um_frame("um25c", trace.voltage_v,
                                                        trace.current_a(t)),
                              corrupt=um_corrupt)
        with device:
            await wait_until(lambda: meter.latest is not None, what="sample after plug-in")
            assert meter.latest.power_w == pytest.approx(2.5, rel=0.01)
