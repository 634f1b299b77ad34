"""``rpi5[:VCGENCMD]``: the Raspberry Pi 5 PMIC's ADCs via ``vcgencmd pmic_read_adc``.

Output format, one reading per line (the PMIC's channel index in parentheses)::

    3V3_SYS_A current(1)=0.06148359A
    3V3_SYS_V volt(9)=3.29982600V
    EXT5V_V volt(24)=5.14306000V

================= ================================================================
line              meaning
================= ================================================================
``NAME_A current`` current into rail NAME, amperes
``NAME_V volt``    voltage of rail NAME, volts
================= ================================================================

Power is the sum of V x I over the rails that report both. Caveat: these are the PMIC's own
rails (SoC core, DDR, 3V3, 1V8, ...). The 5 V input (``EXT5V``) has a voltage but no current,
so anything fed straight from 5 V (USB devices, fans, HATs, the PMIC's own losses) is not
counted: the result is below the wall power. ``VCGENCMD`` is the command to run (default
``vcgencmd`` on ``PATH``), which lets tests replay recorded output.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

from hw._meter import MeterConfig, PowerMeter
from hw._types import FrameError, MeterError, PowerSample

__all__ = ["Rpi5Meter", "decode_pmic", "parse_pmic"]

_LINE = re.compile(
    r"^\s*(?P<rail>\S+)_(?P<kind>[AV])\s+(?:current|volt)\(\d+\)=(?P<value>[-+0-9.eE]+)[AV]\s*$"
)


def parse_pmic(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """``(amps by rail, volts by rail)`` from ``pmic_read_adc`` output; ignores other lines."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        (amps if m["kind"] == "A" else volts)[m["rail"]] = float(m["value"])
    return amps, volts


def decode_pmic(text: str, t_s: float) -> PowerSample:
    """Sum of V x I over rails reporting both; FrameError when no rail does."""
    amps, volts = parse_pmic(text)
    rails = sorted(set(amps) & set(volts))
    if not rails:
        raise FrameError("no rail with both current and voltage in pmic_read_adc output")
    power_w = sum(amps[r] * volts[r] for r in rails)
    return PowerSample(t_s=t_s, power_w=power_w, voltage_v=volts.get("EXT5V"))


class Rpi5Meter(PowerMeter):
    """``rpi5``: poll ``vcgencmd pmic_read_adc`` (about 10 ms a call on a Pi 5)."""

    kind = "rpi5"

    def __init__(self, *, vcgencmd: str = "vcgencmd", config: MeterConfig | None = None) -> None:
        super().__init__(config=config)
        self.vcgencmd = vcgencmd

    def describe(self) -> str:
        return self.vcgencmd

    def _run(self) -> str:
        exe = shutil.which(self.vcgencmd)
        if exe is None:
            raise MeterError(
                f"{self.vcgencmd} not found: the rpi5 meter needs Raspberry Pi OS's vcgencmd "
                f"(package libraspberrypi-bin / raspi-utils) on a Raspberry Pi 5"
            )
        try:
            done = subprocess.run([exe, "pmic_read_adc"], capture_output=True, text=True,
                                  timeout=self.config.timeout_s, check=False)
        except subprocess.TimeoutExpired as err:
            raise FrameError(f"{self.vcgencmd} took over {self.config.timeout_s:g} s") from err
        if done.returncode != 0:
            msg = (done.stderr or done.stdout).strip()
            raise MeterError(f"{self.vcgencmd} pmic_read_adc failed ({done.returncode}): {msg}"
                             " (needs a Raspberry Pi 5 and access to /dev/vcio: group video)")
        return done.stdout

    def _device_probe(self) -> None:
        decode_pmic(self._run(), time.monotonic())

    def _device_open(self) -> None:
        """Nothing to open: every read runs the command."""

    def _device_read(self) -> list[PowerSample]:
        t0 = time.monotonic()
        text = self._run()
        t1 = time.monotonic()
        # The ADCs are read while the command runs: stamp the middle of the call.
        return [decode_pmic(text, (t0 + t1) / 2)]

    def _device_close(self) -> None:
        """Nothing to close."""
