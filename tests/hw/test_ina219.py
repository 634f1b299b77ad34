"""INA219: shared register math, the Pico firmware on an emulated chip, ``ina219-serial`` over a
pty fed by that firmware, and ``ina219-i2c`` on the emulated chip."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from _waiting import wait_until
from hw_emulators import PtyPort, Trace, assert_energy_matches
from hw_ina219_chip import Ina219Chip, PicoBridgeDevice

from hw import FrameError, open_meter
from hw._ina219_i2c import Ina219I2cMeter
from hw._ina219_serial import ClockMapper, decode_line
from hw._meter import MeterConfig
from hw.firmware import ina219
from hw.firmware.main import Bridge

# Covered-window tolerance: the INA219 at 0.1 ohm / 3.2 A has a 98 uA current LSB and 4 mV
# bus LSB (< 0.1 % here); the rest is step edges at 50 Hz and scheduling jitter.
REL_TOL = 0.03


# -- register math (datasheet SBOS448 8.5.1) ---------------------------------------------------


def test_calibration_datasheet_example():
    # Datasheet example: 0.1 ohm shunt, 3.2 A max -> current_lsb ~ 97.7 uA, cal 4194 -> 4194
    cal, current_lsb, power_lsb = ina219.calibration(0.1, 3.2)
    assert cal == 4194
    assert current_lsb == pytest.approx(0.04096 / (4194 * 0.1))
    assert power_lsb == pytest.approx(20 * current_lsb)
    assert ina219.calibration(0.1, 3.3)[0] % 2 == 0  # bit 0 is void: always even
    with pytest.raises(ValueError):
        ina219.calibration(0.0, 1.0)


def test_pga_and_adc_choice():
    assert ina219.pga_code(0.1, 0.4) == 0  # 40 mV
    assert ina219.pga_code(0.1, 3.2) == 3  # 320 mV
    with pytest.raises(ValueError):
        ina219.pga_code(0.1, 4.0)
    code, samples, conv_us = ina219.adc_for_period(20000)  # 50 Hz
    assert (code, samples) == (0xC, 16) and 2 * conv_us <= 20000
    cfg = ina219.config_word(3, 0xC)
    assert cfg == 0x2000 | (3 << 11) | (0xC << 7) | (0xC << 3) | 7
    assert ina219.conversion_time_us(cfg) == 2 * 8510


def test_register_decoding():
    assert ina219.decode_bus((1275 << 3) | 0x2) == (pytest.approx(5.1), True, False)
    assert ina219.decode_bus((1275 << 3) | 0x1)[2] is True
    assert ina219.decode_current_a(0xFFFF, 1e-4) == pytest.approx(-1e-4)
    assert ina219.decode_shunt_v(0x8000) == pytest.approx(-0.32768)


def test_line_protocol_round_trip_and_checksum():
    line = ina219.format_line(1234567, 5.1, 512.3, 2612.7)
    assert line.endswith("\n") and "*" in line
    assert ina219.parse_line(line) == (1234567, 5.1, 512.3, 2612.7)
    assert decode_line(line.encode()) == pytest.approx((1.234567, 2.6127, 5.1, 0.5123))
    assert decode_line(b"# coinfer-ina219 v1") is None
    for bad in (line.replace("5.1000", "5.1001"), "1,2,3*0000", "12345,5.1", "\xff\xfe"):
        with pytest.raises(FrameError):
            decode_line(bad.encode("latin-1"))
    with pytest.raises(FrameError, match="ovf"):
        decode_line(b"! ovf 123")


def test_clock_mapper_takes_least_delayed_line_and_resets_on_reboot():
    cm = ClockMapper()
    assert cm.map(1.000, 101.010) == pytest.approx(101.010)
    assert cm.map(1.020, 101.022) == pytest.approx(101.022)  # offset 100.002 now
    assert cm.map(1.040, 101.100) == pytest.approx(101.042)  # buffered line keeps its time
    assert cm.map(0.001, 101.2) == pytest.approx(101.2)  # clock went back: restart


# -- the firmware on the emulated chip ---------------------------------------------------------


def run_bridge(bridge: Bridge, seconds: float) -> list[str]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        line = bridge.step()
        if line is None:
            time.sleep(0.0005)
        else:
            out.append(line)
    return out


def _ticks():
    return int(time.monotonic() * 1e6)


def test_firmware_samples_match_trace_and_recover_from_brownout():
    trace = Trace(amp_w=0.0, steps=(), base_w=3.0)
    chip = Ina219Chip(trace, shunt_ohm=0.1)
    bridge = Bridge(chip, _ticks, lambda a, b: a - b, rate_hz=100)
    assert chip.regs[5] == 4194 and chip.regs[0] == bridge.config
    lines = [ln for ln in run_bridge(bridge, 0.25) if ln[0].isdigit()]
    assert 15 <= len(lines) <= 27  # ~100 Hz
    for ln in lines:
        _, bus_v, current_ma, power_mw = ina219.parse_line(ln)
        assert bus_v == pytest.approx(5.1, abs=0.004)
        assert current_ma == pytest.approx(3000 / 5.1, abs=0.2)
        assert power_mw == pytest.approx(3000, rel=0.005)
    chip.reset()  # brown-out: calibration 0, default configuration
    out = run_bridge(bridge, 0.1)
    assert any(ln.startswith("# recalibrated") for ln in out)
    assert chip.regs[5] == 4194
    assert all(ina219.parse_line(ln)[2] > 500 for ln in out if ln[0].isdigit())


def test_firmware_reports_overflow_and_drops_the_sample():
    trace = Trace(amp_w=0.0, steps=(), base_w=3.0)
    chip = Ina219Chip(trace, shunt_ohm=0.1)
    bridge = Bridge(chip, _ticks, lambda a, b: a - b, rate_hz=100)
    chip.overload_until_s = time.monotonic() + 0.1
    out = run_bridge(bridge, 0.2)
    assert any(ln.startswith("! ovf") for ln in out)
    assert any(ln[0].isdigit() for ln in out)  # sampling resumes afterwards


def test_firmware_commands():
    chip = Ina219Chip(Trace(), shunt_ohm=0.05)
    bridge = Bridge(chip, _ticks, lambda a, b: a - b, shunt_ohm=0.05, max_current_a=2.0)
    assert bridge.command("rate 20").startswith("# coinfer-ina219 v1 rate_hz=20 ")
    assert bridge.command("shunt 0.05 6.4").split()[4] == "shunt_ohm=0.05"
    assert chip.regs[5] == ina219.calibration(0.05, 6.4)[0]
    assert bridge.command("shunt 1 1").startswith("! ")  # 1 V across the shunt: no range
    assert bridge.command("bogus").startswith("! unknown")


# -- ina219-serial against the firmware on a pty -------------------------------------------------


async def test_serial_meter_on_pty_with_faults(pty_path):
    trace = Trace()
    chip = Ina219Chip(trace, shunt_ohm=0.1)
    device = PicoBridgeDevice(
        PtyPort(pty_path), chip, rate_hz=50,
        inject={10: "garbage", 20: "short", 30: "badcrc", 40: "brownout", 50: "overload",
                60: "unplug"},
    )
    spec = (f"ina219-serial:{pty_path},rate_hz=50,timeout_s=0.3,backoff_s=0.05,"
            f"backoff_max_s=0.2")
    with device:
        async with open_meter(spec) as meter:
            assert meter.kind == "ina219-serial" and meter.measured
            await wait_until(lambda: meter.latest is not None, what="first sample")
            t0 = time.monotonic()
            await wait_until(lambda: device.unplugged_at is not None and device.lines > 90,
                             timeout_s=15, what="the fault schedule")
            t1 = time.monotonic()
            assert_energy_matches(meter, trace, t0, t1, rel=REL_TOL, span_w=2.5)
            un0, un1 = device.unplugged_at
            assert any(a <= un0 and b >= un1 for a, b in meter.gaps(t0, t1))
            assert meter.bad_frames >= 3  # garbage, short, bad CRC (and the ovf line)
            assert meter.reconnects >= 1
            assert 20 < meter.sample_rate_hz < 65  # 50 Hz, less the unplugged half second
    assert "rate 50" in device.commands
    assert any(s.startswith("# recalibrated") for s in device.sent)
    assert any(s.startswith("! ovf") for s in device.sent)


# -- ina219-i2c on the emulated chip -------------------------------------------------------------


async def test_i2c_meter_on_emulated_chip():
    trace = Trace()
    chip = Ina219Chip(trace, shunt_ohm=0.1)
    meter = Ina219I2cMeter(bus=chip, config=MeterConfig(poll_hz=50, timeout_s=0.3))
    async with meter:
        await wait_until(lambda: meter.latest is not None, what="first sample")
        t0 = time.monotonic()
        await wait_until(lambda: time.monotonic() - t0 > 1.2, what="1.2 s of samples")
        t1 = time.monotonic()
        assert_energy_matches(meter, trace, t0, t1, rel=REL_TOL, span_w=2.5)
        assert meter.coverage(t0, t1) > 0.9
        assert meter.describe() == "i2c-1@0x40"


def test_i2c_spec_parses_bus_and_address():
    m = open_meter("ina219-i2c:3:0x41,shunt_ohm=0.05,max_a=2")
    assert (m.bus_number, m.addr, m.shunt_ohm, m.max_current_a) == (3, 0x41, 0.05, 2.0)


def test_i2c_without_smbus2_names_the_install():
    code = (
        "import sys, asyncio; sys.modules['smbus2'] = None\n"
        "from hw import open_meter, MeterError\n"
        "async def main():\n"
        "    try:\n"
        "        async with open_meter('ina219-i2c:1:0x40'):\n"
        "            pass\n"
        "    except MeterError as e:\n"
        "        print(e)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "pip install smbus2" in out.stdout
