"""Raspberry Pi 5 PMIC via a stand-in ``vcgencmd`` that replays recorded output."""

from __future__ import annotations

import os
import time

import pytest
from _waiting import wait_until
from hw_emulators import write_atomic

from hw import FrameError, MeterError, open_meter
from hw._rpi5 import decode_pmic, parse_pmic

# `vcgencmd pmic_read_adc` on a Pi 5 (format as printed by Raspberry Pi OS bookworm:
# right-aligned names, channel index in parentheses, 8 decimals). HDMI reports a current
# without a voltage and EXT5V/BATT a voltage without a current: neither is summed.
IDLE = """\
     3V7_WL_SW_A current(0)=0.00390372A
       3V3_SYS_A current(1)=0.05564475A
       1V8_SYS_A current(2)=0.15373610A
      DDR_VDD2_A current(3)=0.03709002A
      DDR_VDDQ_A current(4)=0.00000000A
       1V1_SYS_A current(5)=0.18213580A
       0V8_SW_A current(6)=0.30163960A
      VDD_CORE_A current(7)=0.75032000A
       3V3_DAC_A current(17)=0.00012210A
       3V3_ADC_A current(18)=0.00042735A
       0V8_AON_A current(16)=0.00448140A
          HDMI_A current(22)=0.01562520A
     3V7_WL_SW_V volt(8)=3.70476100V
       3V3_SYS_V volt(9)=3.30170300V
       1V8_SYS_V volt(10)=1.80163000V
      DDR_VDD2_V volt(11)=1.11208700V
      DDR_VDDQ_V volt(12)=0.60366240V
       1V1_SYS_V volt(13)=1.10476100V
       0V8_SW_V volt(14)=0.80073220V
      VDD_CORE_V volt(15)=0.72069200V
       3V3_DAC_V volt(20)=3.30402100V
       3V3_ADC_V volt(21)=3.30708100V
       0V8_AON_V volt(19)=0.79914570V
          EXT5V_V volt(24)=5.12830000V
          BATT_V volt(25)=0.00000000V
"""


def expected_w(text: str) -> float:
    amps, volts = {}, {}
    for line in text.splitlines():
        name, value = line.split("=")
        rail = name.split()[0]
        if rail.endswith("_A"):
            amps[rail[:-2]] = float(value.rstrip("A"))
        else:
            volts[rail[:-2]] = float(value.rstrip("V"))
    return sum(amps[r] * volts[r] for r in amps if r in volts)


def loaded(text: str, core_a: float) -> str:
    """The same recording with the core rail drawing ``core_a``."""
    return text.replace("VDD_CORE_A current(7)=0.75032000A", f"VDD_CORE_A current(7)={core_a:.8f}A")


def test_parse_and_decode():
    amps, volts = parse_pmic(IDLE)
    assert len(amps) == 12 and len(volts) == 13
    assert "HDMI" in amps and "HDMI" not in volts and "EXT5V" in volts
    s = decode_pmic(IDLE, 4.0)
    assert s.power_w == pytest.approx(expected_w(IDLE), rel=1e-12)
    assert 1.0 < s.power_w < 2.0  # a Pi 5 at idle: the PMIC rails alone, no 5 V loads
    assert s.voltage_v == pytest.approx(5.1283)
    with pytest.raises(FrameError):
        decode_pmic("error=1 error_msg=\"Command not registered\"\n", 0.0)


@pytest.fixture
def fake_vcgencmd(tmp_path):
    """An executable replaying ``out.txt``; a test swaps that file to change the reading."""
    exe = tmp_path / "vcgencmd"
    exe.write_text('#!/bin/sh\n[ "$1" = pmic_read_adc ] || exit 2\n'
                   f'cat "{tmp_path / "out.txt"}"\n')
    exe.chmod(0o755)
    write_atomic(str(tmp_path / "out.txt"), IDLE)
    return exe


async def test_meter_replays_recording(fake_vcgencmd, tmp_path):
    p_idle = expected_w(IDLE)
    busy = loaded(IDLE, 4.2)
    p_busy = expected_w(busy)
    async with open_meter(f"rpi5:{fake_vcgencmd},poll_hz=20,timeout_s=2") as meter:
        assert meter.kind == "rpi5" and meter.measured
        await wait_until(lambda: meter.latest is not None)
        t0 = time.monotonic()
        await wait_until(lambda: time.monotonic() - t0 > 0.5, what="0.5 s idle")
        write_atomic(str(tmp_path / "out.txt"), busy)
        t_switch = time.monotonic()
        await wait_until(lambda: time.monotonic() - t_switch > 0.6, what="0.6 s busy")
        t1 = time.monotonic()
        exact = p_idle * (t_switch - t0) + p_busy * (t1 - t_switch)
        # tolerance: the step lands between two samples 50 ms apart (+ a process start)
        assert meter.energy_j(t0, t1) == pytest.approx(exact, abs=(p_busy - p_idle) * 0.1)
        assert meter.latest.power_w == pytest.approx(p_busy, rel=1e-9)
        assert meter.coverage(t0, t1) > 0.9


async def test_missing_vcgencmd_is_a_clear_error(tmp_path):
    with pytest.raises(MeterError, match=r"not found.*Raspberry Pi 5"):
        async with open_meter(f"rpi5:{tmp_path / 'nowhere'}"):
            raise AssertionError("must not start")


async def test_failing_vcgencmd_is_a_clear_error(tmp_path):
    exe = tmp_path / "vcgencmd"
    exe.write_text("#!/bin/sh\necho 'VCHI initialization failed' >&2\nexit 255\n")
    exe.chmod(0o755)
    with pytest.raises(MeterError, match=r"VCHI initialization failed.*video"):
        async with open_meter(f"rpi5:{exe}"):
            raise AssertionError("must not start")
    assert not os.path.exists(tmp_path / "out.txt")
