"""`model-export wheelhouse`: every wheel a board needs, built on any x86-64 Linux machine.

A board installs coinfer offline from a wheelhouse (``pip install --no-index
--find-links``): coinfer's own wheel, llama-cpp-python's (PyPI has only its sdist, so it is
built here: on an x86-64 host with Debian's aarch64 cross compilers, on an aarch64 host
natively), and every other dependency as the registry's aarch64 wheel for the board's Python.
llama-cpp-python loads llama.cpp's shared libraries through ctypes and holds no Python
extension, so a cross build retagged ``linux_aarch64`` (``wheel tags``) is a correct wheel for
any Python 3 on the board.

The llama.cpp flags: the Raspberry Pi 5's Cortex-A76 (armv8.2-a with dotprod and fp16), which
the Jetson Orin's Cortex-A78AE also has, so one wheel serves both; OpenMP off (ggml's own
thread pool), so the wheel needs no runtime library beyond glibc and libstdc++, both on every
board image. The built llama wheel is kept in a cache keyed by its version and flags: a
second wheelhouse takes seconds. Network: the package registry only (pip).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from export._errors import ExportError

LLAMA_VERSION = "0.3.36"  # the pin of pyproject.toml's [llm] extra
ARM_ARCH = "armv8.2-a+dotprod+fp16"  # Cortex-A76 (Pi 5), Cortex-A78AE (Jetson Orin)
LLAMA_FLAGS = ("-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={ARM_ARCH}", "-DGGML_OPENMP=OFF",
               "-DLLAVA_BUILD=OFF")
CROSS_FLAGS = ("-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
               "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc",
               "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++")
CROSS_PACKAGES = {"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
                  "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu"}
# The board images' Python: Raspberry Pi OS Trixie (Debian 13) 3.13, Bookworm 3.11, JetPack 6
# (Ubuntu 22.04) 3.10.
BOARD_PYTHON = {"rpi5": "3.13", "jetson-orin": "3.10"}
DEVICE_EXTRAS = ("llm", "dnn", "i2c")  # the draft, the DNN head, the I2C meter
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64",
             "linux_aarch64")


def cache_dir() -> Path:
    """Where built llama wheels are kept: ``$COINFER_CACHE`` or ``~/.cache/coinfer``."""
    return Path(os.environ.get("COINFER_CACHE") or Path.home() / ".cache" / "coinfer")


def project_root() -> Path:
    """The coinfer source checkout this module runs from (its wheel is built from it)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise ExportError("coinfer's wheel is built from a source checkout: run this from one "
                          "(git clone ...), or build the wheelhouse there and pass --wheelhouse")
    return root


def llama_cmake_args(*, cross: bool, native: bool = False) -> str:
    """CMAKE_ARGS of the aarch64 llama.cpp build: with the cross compilers when ``cross``;
    ``native`` (on the board itself) for this CPU alone (-mcpu=native)."""
    if native:
        return "-DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF"
    return " ".join((*CROSS_FLAGS, *LLAMA_FLAGS) if cross else LLAMA_FLAGS)


def _cross() -> bool:
    machine = platform.machine()
    if machine in ("aarch64", "arm64"):
        return False
    if machine not in ("x86_64", "AMD64"):
        raise ExportError(f"building aarch64 wheels on a {machine} host is not supported: use "
                          "an x86-64 Linux machine or an aarch64 board")
    missing = [pkg for tool, pkg in CROSS_PACKAGES.items() if shutil.which(tool) is None]
    if missing:
        raise ExportError(f"the aarch64 cross compilers are missing: install the Debian packages "
                          f"{' '.join(sorted(set(missing)))} (apt-get install -y "
                          f"{' '.join(sorted(set(missing)))}), then run this again")
    return True


def _run(cmd: Sequence[str], *, env: dict[str, str] | None = None, what: str) -> None:
    done = subprocess.run(list(cmd), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ExportError(f"{what} failed (exit {done.returncode}):\n{tail}")


def llama_wheel(*, native: bool = False, say: Callable[[str], None] = print) -> Path:
    """llama-cpp-python's aarch64 wheel, from the cache or built (cross on x86-64) and
    retagged ``py3-none-linux_aarch64``. ``native``: built on the board for its own CPU."""
    cross = _cross()
    if native and cross:
        raise ExportError("NATIVE=1 builds for the CPU it runs on: run it on the board")
    args = llama_cmake_args(cross=cross, native=native)
    key = hashlib.sha256(f"{LLAMA_VERSION} {args}".encode()).hexdigest()[:16]
    slot = cache_dir() / "wheels" / f"llama-cpp-python-{LLAMA_VERSION}-{key}"
    found = sorted(slot.glob("llama_cpp_python-*-linux_aarch64.whl"))
    if found:
        say(f"llama-cpp-python {LLAMA_VERSION} for aarch64: cached ({found[0]})")
        return found[0]
    say(f"llama-cpp-python {LLAMA_VERSION} for aarch64: compiling llama.cpp "
        f"({'cross, ' if cross else ''}{ARM_ARCH}; several minutes) ...")
    with tempfile.TemporaryDirectory(prefix="coinfer-llama-") as tmp:
        env = {**os.environ, "CMAKE_ARGS": args}
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
              "--no-binary", "llama-cpp-python", "-w", tmp,
              f"llama-cpp-python=={LLAMA_VERSION}"], env=env, what="building llama-cpp-python")
        built = next(Path(tmp).glob("llama_cpp_python-*.whl"))
        if cross:  # the libraries inside are aarch64; only the tag says otherwise
            _run([sys.executable, "-m", "wheel", "tags", "--remove", "--platform-tag",
                  "linux_aarch64", str(built)], what="retagging the wheel")
            built = next(Path(tmp).glob("llama_cpp_python-*linux_aarch64.whl"))
        slot.mkdir(parents=True, exist_ok=True)
        kept = slot / built.name
        shutil.move(str(built), kept)
    say(f"  kept in {kept}")
    return kept


def coinfer_wheel(out: Path, *, say: Callable[[str], None] = print) -> Path:
    """coinfer's own wheel (pure Python), built from the source checkout into ``out``."""
    root = project_root()
    say(f"coinfer: building its wheel from {root} ...")
    for old in out.glob("coinfer-*.whl"):
        old.unlink()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(root)],
         what="building coinfer's wheel")
    return next(out.glob("coinfer-*.whl"))


def build_wheelhouse(out: Path, *, python: str = BOARD_PYTHON["rpi5"],
                     extras: Sequence[str] = DEVICE_EXTRAS, native: bool = False,
                     say: Callable[[str], None] = print) -> list[Path]:
    """Fill ``out`` with every wheel ``coinfer[extras]`` needs on an aarch64 board running
    CPython ``python`` (X.Y), and pip's (the installer runs pip from its wheel: no ensurepip,
    minutes under emulation); return them sorted. ExportError with one line on what to do
    when a tool, a compiler or a wheel is missing."""
    if not python.replace(".", "").isdigit() or python.count(".") != 1:
        raise ExportError(f"--python {python}: give X.Y, e.g. 3.13")
    out.mkdir(parents=True, exist_ok=True)
    llama = llama_wheel(native=native, say=say)
    shutil.copy2(llama, out / llama.name)
    own = coinfer_wheel(out, say=say)
    say(f"dependencies: aarch64 wheels for CPython {python} from the package registry ...")
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", *platforms,
          "--python-version", python, "--implementation", "cp", "--find-links", str(out),
          "-d", str(out), f"{own}[{','.join(extras)}]", "pip"],
         what=f"downloading the aarch64 wheels for Python {python} (a dependency without an "
              "aarch64 wheel for it is named above)")
    wheels = sorted(out.glob("*.whl"))
    say(f"wheelhouse {out}: {len(wheels)} wheels, "
        f"{sum(w.stat().st_size for w in wheels) / 2**20:.0f} MiB")
    return wheels


def add_wheelhouse(sub: argparse._SubParsersAction) -> None:
    """Register `model-export wheelhouse`."""
    p = sub.add_parser(
        "wheelhouse", help="every wheel an aarch64 board needs, for its Python",
        description="Build llama-cpp-python for aarch64 (cross-compiled on x86-64 with "
        "Debian's gcc-aarch64-linux-gnu and g++-aarch64-linux-gnu; natively on a board), "
        "coinfer's wheel, and download every other dependency's aarch64 wheel for the "
        "board's Python: what `model-export bundle --wheelhouse` installs offline.")
    p.add_argument("--python", default=BOARD_PYTHON["rpi5"], metavar="X.Y",
                   help="the board image's Python: 3.13 Raspberry Pi OS Trixie (default), "
                   "3.11 Bookworm, 3.10 JetPack 6")
    p.add_argument("--native", action="store_true",
                   help="on the board: build llama.cpp for this CPU alone (-mcpu=native)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.set_defaults(handler=_run_wheelhouse)


def _run_wheelhouse(args: argparse.Namespace) -> int:
    build_wheelhouse(args.out, python=args.python, native=args.native)
    return 0


__all__ = ["BOARD_PYTHON", "DEVICE_EXTRAS", "LLAMA_VERSION", "add_wheelhouse",
           "build_wheelhouse", "cache_dir", "llama_cmake_args", "llama_wheel"]
