"""`model-export bundle`: a directory that turns a freshly flashed board into a coinfer device.

Copy the directory's contents onto the boot partition of an SD card flashed with Raspberry Pi
OS Trixie (Raspberry Pi Imager; the partition is ``/boot/firmware`` on the running Pi). On first
boot cloud-init reads ``user-data`` from there and runs ``coinfer/install.sh``, which creates
the ``coinfer`` system user and the venv, installs coinfer and every wheel it needs from
``coinfer/wheels`` with no network (``pip install --no-index``; nothing is downloaded or
compiled on the board), puts the draft into ``/var/lib/coinfer/models`` and enables
``coinfer-ondevice.service`` (``ondevice serve``). Bookworm images have no cloud-init and a
JetPack image has no seed on its card: copy the directory to the board and run
``sudo bash coinfer/install.sh`` there (the same script). Layout (docs/install.md)::

    OUT/user-data                         cloud-init (#cloud-config), validated by the tests
    OUT/meta-data                         the NoCloud instance id
    OUT/coinfer/install.sh                the installer (what user-data runs)
    OUT/coinfer/coinfer-ondevice.service  the systemd unit
    OUT/coinfer/models/D.gguf[.json]      the draft and its sidecar
    OUT/coinfer/wheels/*.whl              every wheel, aarch64, for the board's Python
    OUT/coinfer/token                     the edge token (only with --token-file)
    OUT/coinfer/README.txt                what this is, the file list

``write_bundle`` is file output (no network, nothing compiled) from a wheelhouse; without one
the CLI builds it first (``export/_wheelhouse.py``: a cross build and the registry's wheels).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from export._errors import ExportError
from export._wheelhouse import BOARD_PYTHON, DEVICE_EXTRAS
from ondevice.common import jsonout

BOOT_DIR = "/boot/firmware"  # where Raspberry Pi OS (bookworm, trixie) mounts the boot partition
VENV = "/opt/coinfer/venv"
STATE_DIR = "/var/lib/coinfer"
MODELS_DIR = f"{STATE_DIR}/models"
TOKEN_PATH = "/etc/coinfer/token"
UNIT = "coinfer-ondevice.service"


@dataclass(frozen=True)
class Board:
    """What a board's image brings that the installer relies on (README, Install)."""

    name: str
    python: str  # the image's CPython X.Y: the wheelhouse must be built for it
    image: str  # the image that python is from
    venv_package: str  # the image's package that brings `python3 -m venv`


BOARDS: dict[str, Board] = {
    "rpi5": Board("rpi5", BOARD_PYTHON["rpi5"], "Raspberry Pi OS Trixie (Debian 13)",
                  "python3-venv"),
    # The same aarch64 wheels (Cortex-A78AE has dotprod and fp16): llama.cpp on the CPU.
    "jetson-orin": Board("jetson-orin", BOARD_PYTHON["jetson-orin"],
                         "JetPack 6 (Ubuntu 22.04)", "python3.10-venv"),
}


@dataclass(frozen=True)
class BundleSpec:
    """What `model-export bundle` was asked for."""

    board: str
    draft: Path
    out: Path
    wheelhouse: Path | None = None
    edge: str | None = None  # None: find one with zeroconf (--discover)
    meter: str = "sim"
    token_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    python: str | None = None  # the image's Python X.Y; None: the board's default image's

    @property
    def py(self) -> str:
        return self.python or BOARDS[self.board].python


def _groups(meter: str) -> list[str]:
    """Supplementary groups the service needs for its meter (serial ports, I2C, vcgencmd)."""
    groups = ["dialout"]
    if meter.startswith("ina219-i2c"):
        groups.append("i2c")
    if meter.startswith("rpi5"):
        groups.append("video")
    return groups


def serve_command(spec: BundleSpec, venv: str = VENV) -> list[str]:
    """The device service's command line (absolute paths on the board)."""
    cmd = [f"{venv}/bin/ondevice", "serve", "--draft", f"{MODELS_DIR}/{spec.draft.name}",
           "--host", spec.host, "--port", str(spec.port), "--meter", spec.meter]
    if spec.edge is not None:
        cmd += ["--edge", spec.edge]
    if spec.token_file is not None:
        cmd += ["--token-file", TOKEN_PATH]
    return cmd


def device_unit(spec: BundleSpec, venv: str = VENV) -> str:
    """The systemd unit of the device service (docs/systemd.md explains each line); ``venv``
    is where coinfer is installed on the board (the tests verify the unit against theirs)."""
    groups = " ".join(_groups(spec.meter))
    return f"""[Unit]
Description=coinfer device service (ondevice serve, OpenAI-compatible, drafts for an edge)
# Documentation: docs/systemd.md in the coinfer sources
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=coinfer
Group=coinfer
SupplementaryGroups={groups}
WorkingDirectory={STATE_DIR}
Environment=PYTHONUNBUFFERED=1
ExecStart={shlex.join(serve_command(spec, venv))}
Restart=on-failure
RestartSec=5
TimeoutStopSec=30
StandardOutput=journal
StandardError=journal
SyslogIdentifier=coinfer-ondevice
NoNewPrivileges=true
ProtectSystem=full
ProtectHome=true
PrivateTmp=true

[Install]
WantedBy=multi-user.target
"""


def install_script(spec: BundleSpec, wheels: list[str]) -> str:
    """The installer, run as root from the bundle's ``coinfer`` folder (by cloud-init on a
    Pi, by hand on a Jetson or a Bookworm Pi). Offline: it installs from ``wheels/`` only
    (``--no-index``), downloads and compiles nothing, and says what it did. Idempotent: a
    second run reinstalls and restarts. Where systemd does not run (a chroot), the unit is
    enabled for the next boot and not started."""
    board = BOARDS[spec.board]
    python = spec.py
    image = board.image if python == board.python else f"an image with Python {python}"
    groups = ",".join(_groups(spec.meter))
    coinfer_wheel = next(w for w in wheels if w.startswith("coinfer-"))
    extras = ",".join(DEVICE_EXTRAS)
    token = (f'install -d -m 0750 -o root -g coinfer /etc/coinfer\n'
             f'install -m 0640 -o root -g coinfer "$HERE/token" {TOKEN_PATH}\n'
             if spec.token_file is not None else "")
    return f"""#!/bin/bash
# coinfer device installer for {board.name} ({image}, Python {python}),
# written by `model-export bundle`. Run as root: sudo bash install.sh
# (cloud-init's user-data runs it on first boot). Needs no network: every wheel is in wheels/.
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
say() {{ echo "coinfer: $*"; }}
have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$have" != "{python}" ]; then
    say "this image's Python is $have; the wheels are for {python} ({image})." \\
        "Make a bundle for it: make wheelhouse ARCH=aarch64 PY=$have, then" \\
        "model-export bundle --python $have ..." >&2
    exit 1
fi
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    say "python3 -m venv is missing: install the image's {board.venv_package} package" >&2
    exit 1
fi
for g in {groups.replace(",", " ")}; do getent group "$g" >/dev/null || groupadd --system "$g"; done
id coinfer >/dev/null 2>&1 || useradd --system --user-group --home-dir {STATE_DIR} \
    --create-home --shell /usr/sbin/nologin --groups {groups} coinfer
say "system user coinfer (groups {groups})"
install -d -m 0755 -o coinfer -g coinfer {STATE_DIR} {MODELS_DIR}
install -m 0644 -o coinfer -g coinfer "$HERE"/models/* {MODELS_DIR}/
say "draft in {MODELS_DIR}"
{token}[ -x {VENV}/bin/python ] || python3 -m venv --without-pip {VENV}
say "installing coinfer[{extras}] from $HERE/wheels, offline ($(ls "$HERE"/wheels | wc -l) wheels)"
# pip runs from its own wheel (and installs itself into the venv): no ensurepip needed
PIP=$(ls "$HERE"/wheels/pip-*.whl | sort -V | tail -n 1)
PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 {VENV}/bin/python "$PIP/pip" install \\
    --no-index --only-binary=:all: --find-links "$HERE/wheels" \\
    "$PIP" "$HERE/wheels/{coinfer_wheel}[{extras}]"
say "installed: $({VENV}/bin/ondevice --version)"
install -m 0644 "$HERE/{UNIT}" /etc/systemd/system/{UNIT}
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable {UNIT}
    systemctl restart {UNIT}
    say "{UNIT} started; logs: journalctl -u {UNIT} -f"
else
    systemctl enable {UNIT} >/dev/null 2>&1 \
        || ln -sf /etc/systemd/system/{UNIT} /etc/systemd/system/multi-user.target.wants/{UNIT}
    say "{UNIT} enabled; systemd is not running here, so it starts at the next boot"
fi
"""


def user_data(spec: BundleSpec) -> str:
    """cloud-init ``#cloud-config`` for Raspberry Pi OS Trixie: run the installer, nothing
    else (no packages: the first boot needs no network). It carries no users or network
    settings: those stay the Imager's (see docs/install.md)."""
    board = BOARDS[spec.board]
    return f"""#cloud-config
# coinfer device for {board.name}, written by `model-export bundle` (docs/install.md).
# Offline: every wheel is on this partition; nothing is downloaded or compiled.
package_update: false
runcmd:
  - [bash, {BOOT_DIR}/coinfer/install.sh]
final_message: "coinfer: cloud-init done after $UPTIME s; journalctl -u {UNIT}"
"""


def check_wheelhouse(wheelhouse: Path, board: str, python: str) -> list[Path]:
    """The wheels of ``wheelhouse``, checked against the board: coinfer's, llama-cpp-python's
    aarch64 one, pip's, and numpy's for the image's Python (compiled wheels are per Python)."""
    if not wheelhouse.is_dir():
        raise ExportError(f"--wheelhouse {wheelhouse} is not a directory")
    wheels = sorted(wheelhouse.glob("*.whl"))
    fix = f"make wheelhouse ARCH=aarch64 PY={python}"
    if not any(w.name.startswith("coinfer-") for w in wheels):
        raise ExportError(f"no coinfer-*.whl in {wheelhouse}: build the wheelhouse with `{fix}`")
    if not any(w.name.startswith("llama_cpp_python-") and w.name.endswith("aarch64.whl")
               for w in wheels):
        raise ExportError(f"no aarch64 llama_cpp_python wheel in {wheelhouse}: `{fix}` "
                          "builds one on any x86-64 Linux machine")
    if not any(w.name.startswith("pip-") for w in wheels):
        raise ExportError(f"no pip-*.whl in {wheelhouse} (the installer runs pip from it): "
                          f"`{fix}`")
    tag = "cp" + python.replace(".", "")
    if not any(w.name.startswith("numpy-") and f"-{tag}-" in w.name and "aarch64" in w.name
               for w in wheels):
        raise ExportError(f"{wheelhouse} holds no numpy wheel for Python {python}, the "
                          f"image's: `{fix}` (or --python X.Y for the wheelhouse's)")
    return wheels


# What may go into a systemd unit, a cloud-config and a shell script unquoted: values are
# checked against these, never escaped, so that no newline, quote, `$`, `%` (a systemd
# specifier), backtick, space or YAML indicator can change what the files say.
SAFE = {
    "--meter": re.compile(r"[a-z0-9][a-z0-9-]*(:[A-Za-z0-9._/+:@-]*)?"),
    "--edge": re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?"),
    "--host": re.compile(r"[A-Za-z0-9.:-]+"),
    "--draft": re.compile(r"[A-Za-z0-9._+-]+\.gguf"),
}


def _check_out(out: Path) -> None:
    """--out must be a new or an empty directory."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: give a new or an empty directory")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"--out {out} exists and is not empty")


def check_values(spec: BundleSpec) -> None:
    """ExportError, one line naming the flag, for a value that is not plain enough to be
    written into the unit, user-data or install.sh (see SAFE)."""
    values = {"--meter": spec.meter, "--host": spec.host, "--draft": spec.draft.name}
    if spec.edge is not None:
        values["--edge"] = spec.edge
    for flag, value in values.items():
        if not SAFE[flag].fullmatch(value):
            shown = value if value.isprintable() else repr(value)
            raise ExportError(f"{flag} {shown}: only letters, digits and . _ - / : (and a URL's "
                              "parts) may go into the service's files; no spaces, quotes, $, %, "
                              "backticks or newlines")


def write_bundle(spec: BundleSpec) -> list[Path]:
    """Write the bundle under ``spec.out`` (which must not exist or be empty); return every
    file written, relative to ``spec.out``, sorted. ExportError for bad input."""
    check_values(spec)
    if spec.board not in BOARDS:
        raise ExportError(f"unknown board {spec.board!r}; valid: {', '.join(BOARDS)}")
    if not spec.draft.is_file() or spec.draft.suffix != ".gguf":
        raise ExportError(f"--draft {spec.draft}: not a .gguf file")
    sidecar = spec.draft.with_name(spec.draft.name + ".json")
    if not sidecar.is_file():
        raise ExportError(f"no sidecar {sidecar.name} next to the draft; make the draft with "
                          f"`model-export llm quantize --preset {spec.board}`")
    _check_out(spec.out)
    if spec.python is not None and not re.fullmatch(r"3\.\d+", spec.python):
        raise ExportError(f"--python {spec.python}: give the image's Python as X.Y, e.g. 3.11")
    if spec.token_file is not None and not spec.token_file.is_file():
        raise ExportError(f"--token-file {spec.token_file} not found")
    if spec.wheelhouse is None:
        raise ExportError(f"no wheelhouse: `make wheelhouse ARCH=aarch64 PY={spec.py}` builds "
                          "one (or run `model-export bundle` without --wheelhouse from a "
                          "coinfer checkout)")
    wheels = check_wheelhouse(spec.wheelhouse, spec.board, spec.py)
    root = spec.out / "coinfer"
    for sub in ("models", "wheels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(spec.draft, root / "models" / spec.draft.name)
    shutil.copy2(sidecar, root / "models" / sidecar.name)
    for w in wheels:
        shutil.copy2(w, root / "wheels" / w.name)
    if spec.token_file is not None:
        shutil.copy2(spec.token_file, root / "token")
    (root / UNIT).write_text(device_unit(spec))
    (root / "install.sh").write_text(install_script(spec, [w.name for w in wheels]))
    (spec.out / "user-data").write_text(user_data(spec))
    (spec.out / "meta-data").write_text(f"instance-id: coinfer-{spec.board}-1\n")
    files = sorted(p.relative_to(spec.out) for p in spec.out.rglob("*") if p.is_file())
    listing = "\n".join(f"  {p}" for p in [*files, Path("coinfer/README.txt")])
    (root / "README.txt").write_text(
        f"coinfer device bundle for {spec.board} (model-export bundle).\n"
        f"Raspberry Pi OS Trixie: copy everything here onto the SD card's boot partition\n"
        f"after flashing; first boot installs (offline) and starts {UNIT}.\n"
        f"Bookworm or Jetson: copy this folder to the board, then:\n"
        f"  sudo bash coinfer/install.sh\n"
        f"Wheels: aarch64, Python {spec.py}.\n"
        f"Service: {jsonout.dumps(shlex.join(serve_command(spec)))}\nFiles:\n{listing}\n")
    return sorted(p.relative_to(spec.out) for p in spec.out.rglob("*") if p.is_file())


def add_bundle(sub: argparse._SubParsersAction) -> None:
    """Register `model-export bundle`."""
    p = sub.add_parser(
        "bundle",
        help="a boot-partition folder that installs coinfer on a freshly flashed board",
        description="Write a folder to copy onto a freshly flashed SD card's boot partition: "
        "the draft and its sidecar, the wheels, a cloud-init user-data that installs coinfer "
        "and starts `ondevice serve` as a systemd service (docs/install.md).",
    )
    p.add_argument("--board", required=True, choices=sorted(BOARDS))
    p.add_argument("--draft", required=True, type=Path, metavar="D.gguf",
                   help="the quantized draft (its sidecar D.gguf.json must sit next to it)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--edge", metavar="URL", help="the edge to use (http[s]://HOST:PORT)")
    where.add_argument("--discover", action="store_true",
                       help="find an edge with zeroconf (the default without --edge)")
    p.add_argument("--meter", default="sim", metavar="SPEC",
                   help="power meter SPEC for the service (default sim)")
    p.add_argument("--wheelhouse", type=Path, metavar="DIR",
                   help="the board's wheels (`make wheelhouse ARCH=aarch64 PY=X.Y`); without "
                   "it the wheelhouse is built into the bundle first (a coinfer checkout, "
                   "Debian's aarch64 cross compilers and the package registry; minutes)")
    p.add_argument("--python", metavar="X.Y",
                   help="the image's Python, when not the board's default image's: "
                   + ", ".join(f"{b.name} {b.python} ({b.image})" for b in BOARDS.values())
                   + "; e.g. 3.11 for Raspberry Pi OS Bookworm")
    p.add_argument("--token-file", type=Path, metavar="F",
                   help="the edge's token, installed as /etc/coinfer/token")
    p.add_argument("--host", default="127.0.0.1",
                   help="address `ondevice serve` listens on (default 127.0.0.1)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.set_defaults(handler=_run_bundle)


def _run_bundle(args: argparse.Namespace) -> int:
    if args.edge is not None and not args.edge.startswith(("http://", "https://")):
        raise ExportError(f"--edge {args.edge}: give http://HOST:PORT or https://HOST:PORT")
    wheelhouse = args.wheelhouse
    if wheelhouse is None:
        from export._wheelhouse import build_wheelhouse

        _check_out(args.out)
        check_values(BundleSpec(board=args.board, draft=args.draft, out=args.out,
                                edge=args.edge, meter=args.meter, host=args.host))
        python = args.python or BOARDS[args.board].python
        print(f"no --wheelhouse: building one for {args.board} (aarch64, Python {python})")
        with tempfile.TemporaryDirectory(prefix="coinfer-wheelhouse-") as tmp:
            build_wheelhouse(Path(tmp), python=python)
            return _write(args, Path(tmp))
    return _write(args, wheelhouse)


def _write(args: argparse.Namespace, wheelhouse: Path) -> int:
    spec = BundleSpec(board=args.board, draft=args.draft, out=args.out,
                      wheelhouse=wheelhouse, edge=args.edge, meter=args.meter,
                      token_file=args.token_file, host=args.host, python=args.python)
    for path in write_bundle(spec):
        print(path)
    return 0
