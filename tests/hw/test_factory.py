"""``open_meter`` SPEC parsing and errors."""

from __future__ import annotations

import pytest

from hw import METER_KINDS, Activity, MeterError, MeterSpecError, open_meter, parse_spec
from hw._sim import SimMeter


def test_meter_kinds():
    assert set(METER_KINDS) == {"um24c", "um25c", "um34c", "tc66c", "ina219-serial",
                                "ina219-i2c", "jetson", "rpi5", "rapl", "sim"}
    for kind, usage in METER_KINDS.items():
        assert usage.startswith(kind)


@pytest.mark.parametrize(("spec", "kind", "arg", "options"), [
    ("um25c:/dev/rfcomm0", "um25c", "/dev/rfcomm0", {}),
    ("UM25C:/dev/rfcomm0,poll_hz=5", "um25c", "/dev/rfcomm0", {"poll_hz": "5"}),
    ("sim", "sim", None, {}),
    ("sim:idle_w=2.7,core_w=1.1", "sim", None, {"idle_w": "2.7", "core_w": "1.1"}),
    ("sim,idle_w=2.7", "sim", None, {"idle_w": "2.7"}),
    ("ina219-i2c:1:0x40", "ina219-i2c", "1:0x40", {}),
    ("jetson", "jetson", None, {}),
    ("rapl:/tmp/x", "rapl", "/tmp/x", {}),
])
def test_parse_spec(spec, kind, arg, options):
    p = parse_spec(spec)
    assert (p.kind, p.arg, p.options) == (kind, arg, options)


def test_open_meter_builds_each_kind():
    assert open_meter("um24c:/dev/rfcomm0").model.name == "UM24C"
    m = open_meter("um34c:/dev/rfcomm1,poll_hz=5,timeout_s=2,baud=115200")
    assert (m.kind, m.port_path, m.config.poll_hz, m.config.timeout_s, m.baudrate) == (
        "um34c", "/dev/rfcomm1", 5.0, 2.0, 115200)
    assert open_meter("tc66c:/dev/ttyACM0").baudrate == 115200
    m = open_meter("ina219-serial:/dev/ttyACM0,rate_hz=100,shunt_ohm=0.01,max_a=10")
    assert (m.rate_hz, m.shunt, m.config.poll_hz) == (100.0, (0.01, 10.0), 100.0)
    m = open_meter("ina219-serial:/dev/ttyACM0")
    assert (m.rate_hz, m.config.poll_hz, m.integrator.max_gap_s) == (50.0, 50.0, 0.06)
    assert open_meter("jetson").sysfs_root == "/sys"
    assert open_meter("jetson:/tmp/sys").sysfs_root == "/tmp/sys"
    assert open_meter("rapl").powercap_root == "/sys/class/powercap"
    assert open_meter("rpi5").vcgencmd == "vcgencmd"
    activity = Activity()
    sim = open_meter("sim:idle_w=2.7,core_w=1.1,max_gap_s=0.5", activity=activity)
    assert isinstance(sim, SimMeter) and sim.activity is activity
    assert (sim.model.idle_w, sim.model.core_w, sim.config.poll_hz) == (2.7, 1.1, 50.0)
    assert sim.integrator.max_gap_s == 0.5
    assert open_meter("um25c:/dev/x,max_bad_frames=0x10").config.max_bad_frames == 16


@pytest.mark.parametrize(("spec", "match"), [
    ("", "(?s)empty.*valid kinds"),
    ("joulescope:/dev/x", "(?s)unknown meter kind 'joulescope'.*um25c:PORT.*sim"),
    ("um25c", "um25c needs an argument"),
    ("tc66c:", "tc66c needs an argument"),
    ("um25c:/dev/x,speed=9", "unknown option 'speed'.*valid: .*poll_hz"),
    ("um25c:/dev/x,poll_hz=fast", "poll_hz='fast': not a number"),
    ("um25c:/dev/x,poll_hz=0", "poll_hz must be"),
    ("um25c:/dev/x,junk", "not key=value"),
    ("sim:/dev/x", "sim takes only key=value"),
    ("sim:idle_w=-3", "idle_w must be"),
    ("ina219-i2c:one:0x40", "BUS:ADDR"),
    ("ina219-serial:/dev/x,shunt_ohm=0.1", "together"),
])
def test_spec_errors(spec, match):
    with pytest.raises(MeterSpecError, match=match):
        open_meter(spec)


def test_spec_error_is_a_meter_error_and_value_error():
    with pytest.raises(MeterError):
        open_meter("nope")
    with pytest.raises(ValueError):
        open_meter("nope")


async def test_meter_can_be_entered_once():
    meter = open_meter("sim")
    async with meter:
        with pytest.raises(MeterError, match="once"):
            await meter.__aenter__()
    with pytest.raises(MeterError, match="once"):
        await meter.__aenter__()
