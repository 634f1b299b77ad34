"""The Makefile's llama.cpp build flags per architecture, read with ``make -n`` (nothing is
compiled or installed): the line it prints and the CMAKE_ARGS the pip command gets."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None,
                                reason="needs make (apt package make)")


def make_dry(*overrides: str, env_cmake: str | None = None) -> tuple[str, str]:
    """(the chosen-flags line, the CMAKE_ARGS of the install recipe) of
    ``make -n -B install`` with ``overrides`` (``ARCH=...``)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("CMAKE_ARGS", "MAKEFLAGS")}
    if env_cmake is not None:
        env["CMAKE_ARGS"] = env_cmake
    out = subprocess.run(["make", "-n", "-B", "install", *overrides], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    info = next(line for line in out.splitlines() if line.startswith("coinfer: llama.cpp"))
    recipe = re.search(r"CMAKE_ARGS='([^']*)' \S+ -m pip install", out)
    assert recipe is not None, out
    return info, recipe.group(1)


def test_x86_64_keeps_the_portable_build() -> None:
    info, args = make_dry("ARCH=x86_64")
    assert args.split() == ["-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF"]
    assert "ARCH=x86_64" in info and args in info


def test_aarch64_targets_the_pi5_cortex_a76_with_dotprod_and_fp16() -> None:
    _, args = make_dry("ARCH=aarch64")
    assert "-DGGML_NATIVE=OFF" in args.split()
    assert "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" in args.split()
    assert "CUDA" not in args


def test_aarch64_native_on_the_board() -> None:
    _, args = make_dry("ARCH=aarch64", "NATIVE=1")
    assert "-DGGML_NATIVE=ON" in args.split() and "ARM_ARCH" not in args


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_gpu_cuda_adds_the_cuda_backend(arch: str) -> None:
    info, args = make_dry(f"ARCH={arch}", "GPU=cuda")
    assert "-DGGML_CUDA=on" in args.split() and "GPU=cuda" in info


def test_cmake_args_from_the_environment_win() -> None:
    info, args = make_dry("ARCH=aarch64", env_cmake="-DGGML_VULKAN=on")
    assert args == "-DGGML_VULKAN=on" and "from the environment" in info


def test_unknown_architecture_and_gpu_are_refused() -> None:
    for bad in ("ARCH=riscv64", "GPU=rocm"):
        done = subprocess.run(["make", "-n", "llama-flags", bad], cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode != 0 and bad.split("=")[1] in done.stderr


def test_an_aarch64_wheelhouse_cross_builds_for_the_boards_python() -> None:
    """``make wheelhouse ARCH=aarch64`` on this x86-64 host runs ``model-export wheelhouse``
    (a cross build and the registry's aarch64 wheels) into wheelhouse/aarch64-pyX.Y; PY picks
    the board image's Python (3.13 by default: Raspberry Pi OS Trixie)."""
    out = subprocess.run(["make", "-n", "-B", "wheelhouse", "ARCH=aarch64"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "export.cli wheelhouse --python 3.13 --out wheelhouse/aarch64-py3.13" in out
    out = subprocess.run(["make", "-n", "-B", "wheelhouse", "ARCH=aarch64", "PY=3.10"],
                         cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert "--python 3.10 --out wheelhouse/aarch64-py3.10" in out


def test_the_wheelhouse_names_the_missing_cross_compilers(tmp_path: Path) -> None:
    """Without Debian's aarch64 cross compilers on PATH the build stops before compiling and
    names the packages to install (nothing is installed system-wide by the build)."""
    import os
    import sys

    import pytest as _pytest

    if os.uname().machine != "x86_64":
        _pytest.skip("cross builds are from x86-64 hosts")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3", "pip"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir), "COINFER_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "export.cli", "wheelhouse", "--out",
                           str(tmp_path / "wh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "g++-aarch64-linux-gnu" in done.stderr and "gcc-aarch64-linux-gnu" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
