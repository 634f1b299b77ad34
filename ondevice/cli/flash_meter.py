"""``ondevice flash-meter``: put the INA219 bridge firmware on a Raspberry Pi Pico.

The Pico must already run MicroPython (hold BOOTSEL, plug it in, copy MicroPython's UF2 onto
the ``RPI-RP2`` drive; docs/meters.md). This command then, with ``mpremote`` (the ``[pico]``
extra):

1. copies ``hw/firmware/ina219.py`` and ``hw/firmware/main.py`` (from the installed package)
   to the Pico's flash, as ``:ina219.py`` and ``:main.py``;
2. resets the Pico, which boots into ``main.py`` and starts streaming samples;
3. opens the serial port, sends ``info`` and waits for the banner line
   (``# coinfer-ina219 v1 ...``), which it prints: the bridge answers.

``firmware_files()`` and ``mpremote_commands()`` are the file set and the exact command lines,
pure functions that the tests check without a Pico. Exit status: 0 the bridge answered,
1 mpremote failed or no banner came within ``--timeout`` seconds, 2 usage error.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from ondevice.common import argtypes
from ondevice.common.extras import available, install_hint

HELP = "copy the INA219 bridge firmware to a Pico running MicroPython (mpremote)"

# (file in hw/firmware, its name on the Pico); main.py runs at boot, it imports ina219.py
FIRMWARE = (("ina219.py", "ina219.py"), ("main.py", "main.py"))


def firmware_dir() -> Path:
    """The installed firmware's folder (``hw/firmware`` inside the package)."""
    import hw.firmware

    return Path(hw.firmware.__file__).resolve().parent


def firmware_files(src: Path | None = None) -> list[tuple[Path, str]]:
    """(local file, ``:name`` on the Pico) for each firmware file, in copy order; raises
    ``FileNotFoundError`` naming a missing file."""
    base = firmware_dir() if src is None else src
    out = []
    for local, remote in FIRMWARE:
        path = base / local
        if not path.is_file():
            raise FileNotFoundError(f"firmware file missing: {path}")
        out.append((path, f":{remote}"))
    return out


def mpremote_commands(port: str, files: list[tuple[Path, str]],
                      python: str = sys.executable) -> list[list[str]]:
    """The mpremote command lines: one ``connect PORT fs cp A :A + fs cp B :B`` that copies
    every file in one session, then ``connect PORT reset`` (a hard reset: main.py starts)."""
    base = [python, "-m", "mpremote", "connect", port]
    copy: list[str] = list(base)
    for i, (local, remote) in enumerate(files):
        if i:
            copy.append("+")
        copy += ["fs", "cp", str(local), remote]
    return [copy, [*base, "reset"]]


def read_banner(port: str, timeout_s: float, banner: str) -> str | None:
    """Open ``port`` (pyserial), send ``info`` and return the first line that starts with
    ``banner``, or None after ``timeout_s``. The port may take a moment to come back after
    the reset; opening is retried until the deadline."""
    import serial

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with serial.Serial(port, 115200, timeout=0.5) as ser:
                ser.reset_input_buffer()
                ser.write(b"info\n")
                while time.monotonic() < deadline:
                    line = ser.readline().decode("ascii", "replace").strip()
                    if line.startswith(banner):
                        return line
        except (OSError, serial.SerialException):
            time.sleep(0.5)
    return None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flash-meter",
        help=HELP,
        description="Copy hw/firmware (ina219.py, main.py) to a Raspberry Pi Pico running "
        "MicroPython with mpremote, reset it and read its banner back (docs/meters.md).",
    )
    p.add_argument("--port", default="/dev/ttyACM0",
                   help="the Pico's serial port (default /dev/ttyACM0)")
    p.add_argument("--timeout", type=argtypes.positive_float, default=10.0,
                   help="seconds to wait for the banner after the reset (default 10)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the mpremote commands and copy nothing")


def run(args: argparse.Namespace) -> int:
    try:
        files = firmware_files()
    except FileNotFoundError as exc:
        print(f"ondevice flash-meter: {exc}", file=sys.stderr)
        return 1
    commands = mpremote_commands(args.port, files)
    if args.dry_run:
        for cmd in commands:
            print(" ".join(cmd))
        return 0
    if not available("mpremote"):
        print(f"ondevice flash-meter: {install_hint('mpremote')}", file=sys.stderr)
        return 1
    for cmd in commands:
        print("+ " + " ".join(cmd[2:]), file=sys.stderr)
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            print(f"ondevice flash-meter: mpremote failed (exit {done.returncode}); is "
                  f"MicroPython on the Pico and {args.port} the right port "
                  f"(`mpremote devs`)?", file=sys.stderr)
            return 1
    from hw.firmware.ina219 import LINE_BANNER

    line = read_banner(args.port, args.timeout, LINE_BANNER)
    if line is None:
        print(f"ondevice flash-meter: no banner from {args.port} within {args.timeout:g} s; "
              "check the INA219 wiring (docs/meters.md)", file=sys.stderr)
        return 1
    print(line)
    print(f"flashed; check with: ondevice meter --meter ina219-serial:{args.port} --seconds 5",
          file=sys.stderr)
    return 0
