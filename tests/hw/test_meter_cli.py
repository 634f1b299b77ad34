"""``ondevice meter`` (``ondevice.cli.meter.run_meter``) on an emulated UM25C.

Lives with the hw tests because it exercises the meters end to end; the module under test
is ``ondevice/cli/meter.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os

import pytest
from hw_emulators import PolledDevice, PtyPort, Trace, um_corrupt, um_frame

from ondevice.cli.meter import run_meter

OPTS = "poll_hz=25,timeout_s=0.2,backoff_s=0.05"
POWER_W = 3.0


@pytest.fixture
def um25c(pty_path):
    trace = Trace(base_w=POWER_W, amp_w=0.0, steps=())
    device = PolledDevice(PtyPort(pty_path), request=b"\xf0",
                          encode=lambda t: um_frame("um25c", trace.voltage_v,
                                                    trace.current_a(t)),
                          corrupt=um_corrupt)
    with device:
        yield f"um25c:{pty_path},{OPTS}"


async def test_seconds_and_json(um25c):
    out = io.StringIO()
    rc = await run_meter(um25c, 1.0, True, out=out)
    assert rc == 0
    lines = out.getvalue().strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["source"] == "um25c" and summary["measured"] is True
    assert summary["seconds"] == pytest.approx(1.0, abs=0.01)
    # constant 3 W (quantized to 1 mV x 0.1 mA); the first sample may come a period late,
    # which the integrator extrapolates
    assert summary["energy_j"] == pytest.approx(POWER_W * summary["seconds"], rel=0.01)
    assert summary["mean_w"] == pytest.approx(POWER_W, rel=0.01)
    assert 15 <= summary["samples"] <= 30
    assert summary["gaps"] == [] and summary["coverage"] == 1.0
    assert "um25c (measured)" in lines[-2]


async def test_plain_output_has_readout_lines(um25c):
    out = io.StringIO()
    assert await run_meter(um25c, 1.3, False, out=out) == 0
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith("um25c:") and " W " in lines[0] and " Hz" in lines[0]
    assert "J over" in lines[-1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[-1])


async def test_tty_readout_refreshes_in_place(um25c):
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=True) as tty_out:
            assert await run_meter(um25c, 0.8, True, out=tty_out) == 0
        text = b""
        os.set_blocking(master, False)
        while True:
            try:
                chunk = os.read(master, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            text += chunk
    finally:
        os.close(master)
    s = text.decode()
    assert s.count("\r\x1b[2K") >= 3  # refreshed in place several times
    assert " V " in s and " A " in s and " J " in s
    json.loads(s.replace("\r\n", "\n").strip().splitlines()[-1])


async def test_cancel_still_summarizes(um25c):
    out = io.StringIO()
    task = asyncio.create_task(run_meter(um25c, None, True, out=out))
    await asyncio.sleep(0.7)
    task.cancel()
    assert await task == 0
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    assert 0.5 < summary["seconds"] < 1.5 and summary["samples"] > 5


async def test_bad_spec_and_failing_meter(capsys, tmp_path):
    assert await run_meter("nonsense:1", 1.0, True, out=io.StringIO()) == 2
    assert "unknown meter kind" in capsys.readouterr().err
    assert await run_meter(f"rapl:{tmp_path}", 1.0, True, out=io.StringIO()) == 2
    assert "no RAPL package domain" in capsys.readouterr().err


async def test_sim_is_labelled_modelled():
    out = io.StringIO()
    assert await run_meter("sim:idle_w=2", 0.3, True, out=out) == 0
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    assert summary["measured"] is False and summary["source"] == "sim"
    assert summary["energy_j"] == pytest.approx(2 * summary["seconds"], rel=0.01)
    assert "(modelled)" in out.getvalue()
