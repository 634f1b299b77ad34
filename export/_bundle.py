"""`model-export bundle`: a directory that turns a freshly flashed board into a coinfer device.

Copy the directory's contents onto the boot partition of an SD card flashed with Raspberry Pi
OS (Raspberry Pi Imager; the partition is ``/boot/firmware`` on the running Pi). On first boot
cloud-init reads ``user-data`` from there: it installs the apt packages, then runs
``coinfer/install.sh``, which creates the ``coinfer`` system user and the venv, installs coinfer
and its wheels from ``coinfer/wheels``, puts the draft into ``/var/lib/coinfer/models`` and
enables ``coinfer-ondevice.service`` (``ondevice serve``). A Jetson's JetPack image has no
cloud-init seed on its card: copy the directory to the board and run
``sudo bash coinfer/install.sh`` there (the same script). Layout (docs/install.md)::

    OUT/user-data                         cloud-init (#cloud-config), validated by the tests
    OUT/meta-data                         the NoCloud instance id
    OUT/coinfer/install.sh                the installer (what user-data runs)
    OUT/coinfer/coinfer-ondevice.service  the systemd unit
    OUT/coinfer/models/D.gguf[.json]      the draft and its sidecar
    OUT/coinfer/wheels/*.whl              coinfer's wheel (+ llama-cpp-python's, ...)
    OUT/coinfer/token                     the edge token (only with --token-file)
    OUT/coinfer/README.txt                what this is, the file list

``write_bundle`` is pure file output (no network, nothing compiled); the CLI calls it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from export._errors import ExportError

BOOT_DIR = "/boot/firmware"  # where Raspberry Pi OS (bookworm, trixie) mounts the boot partition
VENV = "/opt/coinfer/venv"
STATE_DIR = "/var/lib/coinfer"
MODELS_DIR = f"{STATE_DIR}/models"
TOKEN_PATH = "/etc/coinfer/token"
UNIT = "coinfer-ondevice.service"


@dataclass(frozen=True)
class Board:
    """How to build and run coinfer on one board (README, Install)."""

    name: str
    apt: tuple[str, ...]
    cmake_args: str  # CMAKE_ARGS for llama-cpp-python when no prebuilt wheel is in wheels/
    extra_env: tuple[tuple[str, str], ...] = ()


BOARDS: dict[str, Board] = {
    # Built on the Pi 5 itself: native = Cortex-A76 with dotprod and fp16.
    "rpi5": Board("rpi5", ("python3-venv", "python3-dev", "build-essential", "cmake"),
                  "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF"),
    # JetPack 6: CUDA 12 in /usr/local/cuda, Orin = compute capability 8.7.
    "jetson-orin": Board("jetson-orin", ("python3-venv", "python3-dev", "build-essential",
                                         "cmake"),
                         "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=87 -DGGML_NATIVE=ON "
                         "-DLLAVA_BUILD=OFF",
                         (("CUDACXX", "/usr/local/cuda/bin/nvcc"),)),
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
    Pi, by hand on a Jetson). Idempotent: a second run reinstalls and restarts."""
    board = BOARDS[spec.board]
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in board.extra_env)
    groups = ",".join(_groups(spec.meter))
    coinfer_wheel = next(w for w in wheels if w.startswith("coinfer-"))
    token = (f'install -d -m 0750 -o root -g coinfer /etc/coinfer\n'
             f'install -m 0640 -o root -g coinfer "$HERE/token" {TOKEN_PATH}\n'
             if spec.token_file is not None else "")
    return f"""#!/bin/bash
# coinfer device installer for {board.name}, written by `model-export bundle`.
# Run as root: sudo bash install.sh   (cloud-init's user-data runs it on first boot)
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends {" ".join(board.apt)}
for g in {groups.replace(",", " ")}; do getent group "$g" >/dev/null || groupadd --system "$g"; done
id coinfer >/dev/null 2>&1 || useradd --system --user-group --home-dir {STATE_DIR} \\
    --create-home --shell /usr/sbin/nologin --groups {groups} coinfer
install -d -m 0755 -o coinfer -g coinfer {STATE_DIR} {MODELS_DIR}
install -m 0644 -o coinfer -g coinfer "$HERE"/models/* {MODELS_DIR}/
{token}[ -x {VENV}/bin/python ] || python3 -m venv {VENV}
{VENV}/bin/python -m pip install --upgrade pip
# llama-cpp-python: the wheel in wheels/ when there is one, else compiled here with these flags
{env + " " if env else ""}CMAKE_ARGS={shlex.quote(board.cmake_args)} \\
    {VENV}/bin/python -m pip install --find-links "$HERE/wheels" \\
    "$HERE/wheels/{coinfer_wheel}[llm]"
{VENV}/bin/ondevice --version
install -m 0644 "$HERE/{UNIT}" /etc/systemd/system/{UNIT}
systemctl daemon-reload
systemctl enable {UNIT}
systemctl restart {UNIT}
echo "coinfer: {UNIT} started; logs: journalctl -u {UNIT} -f"
"""


def user_data(spec: BundleSpec) -> str:
    """cloud-init ``#cloud-config`` for Raspberry Pi OS: apt packages, then the installer.
    It carries no users or network settings: those stay the Imager's (see docs/install.md)."""
    board = BOARDS[spec.board]
    packages = "\n".join(f"  - {p}" for p in board.apt)
    return f"""#cloud-config
# coinfer device for {board.name}, written by `model-export bundle` (docs/install.md).
package_update: true
packages:
{packages}
runcmd:
  - [bash, {BOOT_DIR}/coinfer/install.sh]
final_message: "coinfer: cloud-init done after $UPTIME s; journalctl -u {UNIT}"
"""


def _wheels(wheelhouse: Path | None) -> list[Path]:
    if wheelhouse is None:
        raise ExportError("--wheelhouse DIR is needed: it must hold coinfer's wheel (`make "
                          "dist`) and, to skip compiling llama.cpp on the board, "
                          "llama-cpp-python's (`make wheelhouse ARCH=aarch64`)")
    if not wheelhouse.is_dir():
        raise ExportError(f"--wheelhouse {wheelhouse} is not a directory")
    wheels = sorted(wheelhouse.glob("*.whl"))
    if not any(w.name.startswith("coinfer-") for w in wheels):
        raise ExportError(f"no coinfer-*.whl in {wheelhouse}; build it with `make dist` and "
                          "copy dist/coinfer-*.whl there")
    return wheels


def write_bundle(spec: BundleSpec) -> list[Path]:
    """Write the bundle under ``spec.out`` (which must not exist or be empty); return every
    file written, relative to ``spec.out``, sorted. ExportError for bad input."""
    if spec.board not in BOARDS:
        raise ExportError(f"unknown board {spec.board!r}; valid: {', '.join(BOARDS)}")
    if not spec.draft.is_file() or spec.draft.suffix != ".gguf":
        raise ExportError(f"--draft {spec.draft}: not a .gguf file")
    sidecar = spec.draft.with_name(spec.draft.name + ".json")
    if not sidecar.is_file():
        raise ExportError(f"no sidecar {sidecar.name} next to the draft; make the draft with "
                          f"`model-export llm quantize --preset {spec.board}`")
    if spec.out.exists() and any(spec.out.iterdir()):
        raise ExportError(f"--out {spec.out} exists and is not empty")
    if spec.token_file is not None and not spec.token_file.is_file():
        raise ExportError(f"--token-file {spec.token_file} not found")
    wheels = _wheels(spec.wheelhouse)
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
        f"Raspberry Pi OS: copy everything here onto the SD card's boot partition after\n"
        f"flashing; first boot installs and starts {UNIT}.\n"
        f"Jetson: copy this folder to the board, then: sudo bash coinfer/install.sh\n"
        f"Service: {json.dumps(shlex.join(serve_command(spec)))}\nFiles:\n{listing}\n")
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
                   help="wheels to install from: coinfer-*.whl (make dist) and, optionally, "
                   "llama-cpp-python's aarch64 wheel (make wheelhouse)")
    p.add_argument("--token-file", type=Path, metavar="F",
                   help="the edge's token, installed as /etc/coinfer/token")
    p.add_argument("--host", default="127.0.0.1",
                   help="address `ondevice serve` listens on (default 127.0.0.1)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.set_defaults(handler=_run_bundle)


def _run_bundle(args: argparse.Namespace) -> int:
    if args.edge is not None and not args.edge.startswith(("http://", "https://")):
        raise ExportError(f"--edge {args.edge}: give http://HOST:PORT or https://HOST:PORT")
    spec = BundleSpec(board=args.board, draft=args.draft, out=args.out,
                      wheelhouse=args.wheelhouse, edge=args.edge, meter=args.meter,
                      token_file=args.token_file, host=args.host)
    for path in write_bundle(spec):
        print(path)
    return 0
