"""``open_meter(spec)``: meter SPEC strings to meter objects.

Grammar: ``KIND[:ARG][,key=value...]``. ``ARG`` is the kind's positional argument (a port,
a sysfs root, ``BUS:ADDR``); options follow after commas (so a port path cannot contain a
comma). ``sim`` takes only options and also accepts them right after the colon
(``sim:idle_w=2.7,core_w=1.1``). Every kind accepts the :class:`MeterConfig` options
(``poll_hz``, ``timeout_s``, ``backoff_s``, ``backoff_max_s``, ``max_bad_frames``,
``history_s``, ``max_gap_s``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from hw._activity import Activity
from hw._ina219_i2c import Ina219I2cMeter
from hw._ina219_serial import Ina219SerialMeter
from hw._jetson import JetsonMeter
from hw._meter import MeterConfig, PowerMeter
from hw._rapl import RaplMeter
from hw._rpi5 import Rpi5Meter
from hw._sim import SIM_POLL_HZ, SimMeter, SimModel
from hw._tc66c import Tc66cMeter
from hw._types import MeterSpecError
from hw._um25c import UmMeter

__all__ = ["METER_KINDS", "ParsedSpec", "open_meter", "parse_spec"]

_CONFIG_OPTIONS = {f.name: (int if f.name == "max_bad_frames" else float)
                   for f in fields(MeterConfig)}


@dataclass(frozen=True, slots=True)
class ParsedSpec:
    kind: str
    arg: str | None
    options: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Kind:
    usage: str
    arg_required: bool
    options: dict[str, Callable[[str], Any]]  # kind-specific options and their parsers
    default_poll_hz: float
    build: Callable[[str | None, dict[str, Any], MeterConfig, Activity | None], PowerMeter]


def _um(model: str) -> _Kind:
    return _Kind(
        f"{model}:PORT  RDTech {model.upper()} over Bluetooth SPP (e.g. /dev/rfcomm0)",
        True, {"baud": int}, 10.0,
        lambda arg, o, cfg, _a: UmMeter(model=model, port=arg or "", config=cfg,
                                        baudrate=o.get("baud")),
    )


def _ina219_i2c(arg: str | None, o: dict[str, Any], cfg: MeterConfig,
                _a: Activity | None) -> PowerMeter:
    bus_s, _, addr_s = (arg or "1").partition(":")
    try:
        bus = int(bus_s)
        addr = int(addr_s, 0) if addr_s else 0x40
    except ValueError as err:
        raise MeterSpecError(f"ina219-i2c wants BUS:ADDR like 1:0x40, got {arg!r}") from err
    extra = {k: o[k2] for k, k2 in (("shunt_ohm", "shunt_ohm"), ("max_current_a", "max_a"))
             if k2 in o}
    return Ina219I2cMeter(bus_number=bus, addr=addr, config=cfg, **extra)


_SIM_OPTIONS: dict[str, Callable[[str], Any]] = {f.name: float for f in fields(SimModel)}

_KINDS: dict[str, _Kind] = {
    "um24c": _um("um24c"),
    "um25c": _um("um25c"),
    "um34c": _um("um34c"),
    "tc66c": _Kind(
        "tc66c:PORT  RDTech TC66C over USB serial (e.g. /dev/ttyACM0)", True, {"baud": int},
        10.0, lambda arg, o, cfg, _a: Tc66cMeter(port=arg or "", config=cfg,
                                                 baudrate=o.get("baud"))),
    "ina219-serial": _Kind(
        "ina219-serial:PORT[,rate_hz=50,shunt_ohm=0.1,max_a=3.2]  INA219 via a Pico bridge",
        True, {"rate_hz": float, "shunt_ohm": float, "max_a": float, "baud": int}, 50.0,
        lambda arg, o, cfg, _a: Ina219SerialMeter(
            port=arg or "", config=cfg, rate_hz=o.get("rate_hz"), shunt_ohm=o.get("shunt_ohm"),
            max_current_a=o.get("max_a"), baudrate=o.get("baud"))),
    "ina219-i2c": _Kind(
        "ina219-i2c:BUS:ADDR[,shunt_ohm=0.1,max_a=3.2]  INA219 on the host's I2C (smbus2)",
        False, {"shunt_ohm": float, "max_a": float}, 50.0, _ina219_i2c),
    "jetson": _Kind(
        "jetson[:SYSFS_ROOT]  Jetson INA3221 rails (hwmon or iio), default root /sys",
        False, {}, 10.0,
        lambda arg, o, cfg, _a: JetsonMeter(sysfs_root=arg or "/sys", config=cfg)),
    "rpi5": _Kind(
        "rpi5[:VCGENCMD]  Raspberry Pi 5 PMIC via `vcgencmd pmic_read_adc` (misses 5 V loads)",
        False, {}, 10.0,
        lambda arg, o, cfg, _a: Rpi5Meter(vcgencmd=arg or "vcgencmd", config=cfg)),
    "rapl": _Kind(
        "rapl[:POWERCAP_ROOT]  RAPL package counters, default root /sys/class/powercap",
        False, {}, 10.0,
        lambda arg, o, cfg, _a: RaplMeter(powercap_root=arg or "/sys/class/powercap",
                                          config=cfg)),
    "sim": _Kind(
        "sim[:idle_w=3.3,core_w=2.175,tx_j_per_byte=...]  modelled power from client activity",
        False, _SIM_OPTIONS, SIM_POLL_HZ,
        lambda arg, o, cfg, a: SimMeter(model=SimModel(**o), activity=a, config=cfg)),
}

#: Every meter kind and its SPEC usage line (``for kind in METER_KINDS`` gives the names).
METER_KINDS: dict[str, str] = {k: v.usage for k, v in _KINDS.items()}


def _kinds_help() -> str:
    return "valid kinds:\n  " + "\n  ".join(METER_KINDS.values())


def parse_spec(spec: str) -> ParsedSpec:
    """Split a SPEC into kind, positional argument and raw options (no value checks)."""
    spec = spec.strip()
    if not spec:
        raise MeterSpecError("empty meter spec; " + _kinds_help())
    head, sep, rest = spec.partition(":")
    if not sep:  # "sim" or "sim,idle_w=2"
        head, _, rest = spec.partition(",")
        parts = [p for p in rest.split(",") if p] if rest else []
    else:
        parts = rest.split(",")
    kind = head.strip().lower()
    if kind not in _KINDS:
        raise MeterSpecError(f"unknown meter kind {kind!r} in {spec!r}; " + _kinds_help())
    arg: str | None = None
    if parts and "=" not in parts[0]:
        arg = parts.pop(0).strip() or None
    options: dict[str, str] = {}
    for p in parts:
        key, eq, value = p.partition("=")
        if not eq or not key.strip():
            raise MeterSpecError(f"option {p!r} in {spec!r} is not key=value")
        options[key.strip()] = value.strip()
    return ParsedSpec(kind, arg, options)


def open_meter(spec: str, *, activity: Activity | None = None) -> PowerMeter:
    """A meter for ``spec`` (not started: use ``async with``). Raises MeterSpecError.

    ``activity`` feeds the ``sim`` meter; real meters ignore it.
    """
    p = parse_spec(spec)
    info = _KINDS[p.kind]
    if info.arg_required and p.arg is None:
        raise MeterSpecError(f"{p.kind} needs an argument: {info.usage}")
    if p.kind == "sim" and p.arg is not None:
        raise MeterSpecError(f"sim takes only key=value options: {info.usage}")
    allowed = {**_CONFIG_OPTIONS, **info.options}
    cfg_kwargs: dict[str, Any] = {"poll_hz": info.default_poll_hz}
    kind_opts: dict[str, Any] = {}
    for key, raw in p.options.items():
        parser = allowed.get(key)
        if parser is None:
            raise MeterSpecError(
                f"unknown option {key!r} for {p.kind}; valid: {', '.join(sorted(allowed))}")
        try:
            value = parser(raw) if parser is not int else int(raw, 0)
        except ValueError as err:
            raise MeterSpecError(f"option {key}={raw!r}: not a number") from err
        (cfg_kwargs if key in _CONFIG_OPTIONS else kind_opts)[key] = value
    if "rate_hz" in kind_opts and "poll_hz" not in p.options:
        cfg_kwargs["poll_hz"] = kind_opts["rate_hz"]  # a streamed rate is the sample rate
    try:
        config = MeterConfig(**cfg_kwargs)
        return info.build(p.arg, kind_opts, config, activity)
    except ValueError as err:
        if isinstance(err, MeterSpecError):
            raise
        raise MeterSpecError(f"{spec!r}: {err}") from err
