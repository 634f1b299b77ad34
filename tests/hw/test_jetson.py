"""Jetson INA3221 on sysfs trees built in a temp dir: JetPack 5/6 hwmon and JetPack 4 iio."""

from __future__ import annotations

import os
import time

import pytest
from _waiting import wait_until
from hw_emulators import FileWriter, Trace, assert_energy_matches

from hw import MeterError, open_meter
from hw._jetson import Rail, combine_rails, discover_rails

REL_TOL = 0.03  # step edges at 50 Hz, 1 mA quantization, the 5 ms sysfs update period
OPTS = "poll_hz=50,timeout_s=0.3,backoff_s=0.05"


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def hwmon_tree(root: str, rails: dict[int, str], *, dev: str = "1-0040",
               hwmon: str = "hwmon3") -> str:
    """JetPack 5/6 layout: the device dir, reached via class/hwmon and the i2c driver."""
    real = os.path.join(root, "devices/platform/bus@0/c240000.i2c/i2c-1", dev, "hwmon", hwmon)
    _write(os.path.join(real, "name"), "ina3221")
    for n, label in rails.items():
        _write(os.path.join(real, f"in{n}_label"), label)
        _write(os.path.join(real, f"in{n}_input"), "5000")
        _write(os.path.join(real, f"curr{n}_input"), "100")
    _write(os.path.join(real, "in7_label"), "sum of shunt voltages")
    _write(os.path.join(real, "in7_input"), "1234")
    os.makedirs(os.path.join(root, "class/hwmon"), exist_ok=True)
    os.symlink(real, os.path.join(root, "class/hwmon", hwmon))
    drv = os.path.join(root, "bus/i2c/drivers/ina3221")
    os.makedirs(drv, exist_ok=True)
    os.symlink(os.path.dirname(os.path.dirname(real)), os.path.join(drv, dev))
    # an unrelated hwmon device must be ignored
    _write(os.path.join(root, "class/hwmon/hwmon0/name"), "soc_thermal")
    _write(os.path.join(root, "class/hwmon/hwmon0/in1_input"), "999999")
    return real


def iio_tree(root: str, rails: dict[int, str]) -> str:
    """JetPack 4 layout (Nano): ina3221x iio device with rail_name_N and in_power N."""
    d = os.path.join(root, "bus/i2c/drivers/ina3221x/6-0040/iio:device0")
    for n, name in rails.items():
        _write(os.path.join(d, f"rail_name_{n}"), name)
        _write(os.path.join(d, f"in_power{n}_input"), "500")
        _write(os.path.join(d, f"in_voltage{n}_input"), "5000")
        _write(os.path.join(d, f"in_current{n}_input"), "100")
    return d


def test_discovery_hwmon_dedupes_and_skips_sum_channel(tmp_path):
    hwmon_tree(str(tmp_path), {1: "VDD_IN", 2: "VDD_CPU_GPU_CV", 3: "VDD_SOC"})
    names = [r.name for r in discover_rails(str(tmp_path))]
    assert names == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]


def test_discovery_iio(tmp_path):
    iio_tree(str(tmp_path), {0: "POM_5V_IN", 1: "POM_5V_GPU", 2: "POM_5V_CPU"})
    rails = discover_rails(str(tmp_path))
    assert [r.name for r in rails] == ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"]
    assert rails[0].power_path.endswith("in_power0_input")


def test_combine_rails_prefers_input_rail_else_sums():
    rails = [Rail("VDD_CPU", 1.0, 5.0, 0.2), Rail("VDD_IN", 4.5, 5.0, 0.9), Rail("X", 2.0, None,
                                                                               None)]
    s = combine_rails(rails, 7.0)
    assert (s.t_s, s.power_w, s.voltage_v, s.current_a) == (7.0, 4.5, 5.0, 0.9)
    s = combine_rails([Rail("VDD_GPU_SOC", 1.5, 5.0, 0.3), Rail("VDD_CPU_CV", 2.0, 5.0, 0.4)],
                      1.0)
    assert s.power_w == pytest.approx(3.5) and s.voltage_v is None


async def test_hwmon_meter_total_from_vdd_in(tmp_path):
    root = str(tmp_path)
    real = hwmon_tree(root, {1: "VDD_IN", 2: "VDD_CPU_GPU_CV", 3: "VDD_SOC"})
    trace = Trace()
    volts_mv = round(trace.voltage_v * 1000)

    def files(t: float) -> dict[str, str]:
        return {os.path.join(real, "in1_input"): f"{volts_mv}\n",
                os.path.join(real, "curr1_input"): f"{round(trace.current_a(t) * 1000)}\n",
                os.path.join(real, "curr2_input"): f"{round(trace.current_a(t) * 300)}\n"}

    with FileWriter(files):
        async with open_meter(f"jetson:{root},{OPTS}") as meter:
            assert meter.kind == "jetson" and meter.measured
            await wait_until(lambda: meter.latest is not None)
            t0 = time.monotonic()
            await wait_until(lambda: time.monotonic() - t0 > 1.6, what="1.6 s")
            t1 = time.monotonic()
            assert_energy_matches(meter, trace, t0, t1, rel=REL_TOL, span_w=2.5)
            assert meter.coverage(t0, t1) > 0.9
            assert meter.latest.voltage_v == pytest.approx(trace.voltage_v)


async def test_iio_meter_total_from_pom_5v_in(tmp_path):
    root = str(tmp_path)
    d = iio_tree(root, {0: "POM_5V_IN", 1: "POM_5V_GPU", 2: "POM_5V_CPU"})
    trace = Trace()

    def files(t: float) -> dict[str, str]:
        return {os.path.join(d, "in_power0_input"): f"{round(trace.power_w(t) * 1000)}\n",
                os.path.join(d, "in_power2_input"): f"{round(trace.power_w(t) * 400)}\n"}

    with FileWriter(files):
        async with open_meter(f"jetson:{root},{OPTS}") as meter:
            await wait_until(lambda: meter.latest is not None)
            t0 = time.monotonic()
            await wait_until(lambda: time.monotonic() - t0 > 1.6, what="1.6 s")
            t1 = time.monotonic()
            assert_energy_matches(meter, trace, t0, t1, rel=REL_TOL, span_w=2.5)


async def test_sum_of_rails_without_input_rail(tmp_path):
    # AGX Orin style: two INA3221 devices, no VDD_IN: the total is the sum of all rails.
    root = str(tmp_path)
    a = hwmon_tree(root, {1: "VDD_GPU_SOC", 2: "VDD_CPU_CV", 3: "VIN_SYS_5V0"})
    real_b = os.path.join(root, "devices/platform/bus@0/c240000.i2c/i2c-1/1-0041/hwmon/hwmon4")
    _write(os.path.join(real_b, "name"), "ina3221")
    _write(os.path.join(real_b, "in2_label"), "VDDQ_VDD2_1V8AO")
    _write(os.path.join(real_b, "in2_input"), "5000")
    _write(os.path.join(real_b, "curr2_input"), "100")
    os.symlink(real_b, os.path.join(root, "class/hwmon/hwmon4"))
    async with open_meter(f"jetson:{root},{OPTS}") as meter:
        await wait_until(lambda: meter.latest is not None)
        assert meter.latest.power_w == pytest.approx(4 * 5.0 * 0.1)
        _write(os.path.join(a, "curr1_input"), "1100")  # +5 W on VDD_GPU_SOC
        await wait_until(lambda: meter.latest.power_w > 5.0, what="the new reading")
        assert meter.latest.power_w == pytest.approx(2.0 + 5.0)


async def test_no_rails_is_a_clear_error(tmp_path):
    with pytest.raises(MeterError, match=r"no INA3221 rails.*is this a Jetson"):
        async with open_meter(f"jetson:{tmp_path}"):
            raise AssertionError("must not start")
