"""The device side on an emulated arm64 board (``make check-aarch64``; ``make test`` runs it).

An arm64 Debian Trixie root made with ``mmdebstrap`` (kept between runs under
``$COINFER_CACHE``, rebuilt when missing) holds what matters here of a Raspberry Pi OS Lite
image: python3 3.13, python3-venv, systemd, ca-certificates, passwd, and no compiler. qemu-user runs
its programs (``binfmt_misc``). Into a copy of it goes a bundle of the fixture draft with a
wheelhouse cross-built on this host (``model-export wheelhouse``), and there:

- the bundle's ``install.sh`` runs with no network at all (``unshare -n``) and succeeds;
- ``ondevice selftest`` lists DOTPROD and FP16_VA (the Pi 5 / Orin build flags);
- ``ondevice generate`` against an edge-server on this host over loopback, greedy, with
  ``fixed --gamma 4`` and ``gelato``, gives the text the same command gives on this host;
- ``ondevice classify`` with the INT8 digits head (onnxruntime's aarch64 wheel) against this
  host's edge, and ``ondevice meter --meter sim``;
- ``systemd-analyze verify`` accepts the installed unit inside the root.

A Jetson Orin has the same instruction set (Cortex-A78AE: armv8.2-a with dotprod and fp16); its
bundle differs only in the Python its wheels are for (3.10), so this root stands in for it.
Skips name what is missing: root, mmdebstrap, arch-test (mmdebstrap's check that this machine
runs arm64 binaries), qemu-user-static, the cross compilers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _edge import edge_server

# Making the root (5-9 min), the cold cross build (4 min) and the offline install under
# emulation run in the first test's fixtures: a budget well above the suite's 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(2400)]

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
# What a Raspberry Pi OS Lite image holds that matters to the installer (passwd: useradd,
# groupadd; priority "required" there); no compiler.
PACKAGES = ("python3", "python3-venv", "systemd", "ca-certificates", "passwd")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
PROMPT = "The quick brown fox"
TOKENS = 24


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot, mmdebstrap, unshare)"
    for tool, pkg in (("mmdebstrap", "mmdebstrap"), ("arch-test", "arch-test"),
                      ("qemu-aarch64-static", "qemu-user-static"),
                      ("update-binfmts", "binfmt-support"),
                      ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
                      ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
                      ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install {pkg})"
    return None


def _binfmt() -> None:
    """qemu's aarch64 handler registered with binfmt_misc (mounted first if it is not)."""
    if not (BINFMT / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if not (BINFMT / "qemu-aarch64").exists():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=True)
    if "enabled" not in (BINFMT / "qemu-aarch64").read_text():
        pytest.skip("qemu-aarch64's binfmt_misc handler is disabled here")


def _cache() -> Path:
    from export._wheelhouse import cache_dir

    return cache_dir()


# A board's environment, not this host's (no PIP_* settings, no venv of this host).
BOARD_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME": "/root", "LANG": "C.UTF-8"}


def _timed(log: dict[str, float], what: str, cmd: list[str], *, timeout: float = 1200,
           **kw: object) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    if cmd[0] in ("chroot", "unshare"):
        kw.setdefault("env", BOARD_ENV)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    log[what] = round(time.monotonic() - t0, 1)
    return done


@pytest.fixture(scope="module")
def timings() -> dict[str, float]:
    log: dict[str, float] = {}
    yield log
    print("\naarch64 board timings (s):", json.dumps(log, allow_nan=False))


@pytest.fixture(scope="module")
def arm64_root(tmp_path_factory: pytest.TempPathFactory, timings: dict[str, float]) -> Path:
    """A fresh copy of the cached arm64 Trixie root (made when missing)."""
    missing = _missing()
    if missing:
        pytest.skip(missing)
    _binfmt()
    key = hashlib.sha256(f"{SUITE} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    cached = _cache() / f"arm64-{SUITE}-{key}.tar"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        part = cached.with_suffix(".part.tar")
        done = _timed(timings, "root_create", [
            "mmdebstrap", "--arch=arm64", "--variant=apt", f"--include={','.join(PACKAGES)}",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*", SUITE, str(part), MIRROR])
        assert done.returncode == 0, done.stderr[-4000:]
        part.rename(cached)
    root = tmp_path_factory.mktemp("arm64") / "root"
    root.mkdir()
    done = _timed(timings, "root_unpack", ["tar", "-C", str(root), "-xf", str(cached)])
    assert done.returncode == 0, done.stderr
    # the chroot's /dev and /proc, for Python and pip; unmounted at the end
    for fs, where in (("proc", "proc"), ("devtmpfs", "dev")):
        subprocess.run(["mount", "-t", fs, fs, str(root / where)], check=True)
    yield root
    for where in ("dev", "proc"):
        subprocess.run(["umount", "-l", str(root / where)], check=False)


@pytest.fixture(scope="module")
def draft(fixture_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture draft quantized for the Pi 5 (with its sidecar), as a user makes one."""
    from export.cli import main

    out = tmp_path_factory.mktemp("draft") / "draft-rpi5.gguf"
    assert main(["llm", "quantize", "--in", str(fixture_models[1]), "--preset", "rpi5",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def installed(arm64_root: Path, draft: Path, tmp_path_factory: pytest.TempPathFactory,
              timings: dict[str, float]) -> Path:
    """The bundle (its wheelhouse cross-built here) installed in the root, offline."""
    from export._wheelhouse import build_wheelhouse
    from export.cli import main

    wheels = tmp_path_factory.mktemp("wheelhouse")
    t0 = time.monotonic()
    build_wheelhouse(wheels, python="3.13")
    timings["wheelhouse"] = round(time.monotonic() - t0, 1)
    boot = arm64_root / "boot" / "firmware"
    boot.parent.mkdir(exist_ok=True)
    # the unit's --edge is only written into the unit: nothing here browses or connects
    assert main(["bundle", "--board", "rpi5", "--draft", str(draft), "--wheelhouse",
                 str(wheels), "--edge", "http://127.0.0.1:8470", "--out", str(boot)]) == 0
    done = _timed(timings, "offline_install",
                  ["unshare", "-n", "chroot", str(arm64_root), "bash",
                   "/boot/firmware/coinfer/install.sh"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "installing coinfer[llm,dnn,i2c]" in done.stdout and "installed:" in done.stdout
    assert "starts at the next boot" in done.stdout
    return arm64_root


def board(root: Path, *args: str, timings: dict[str, float], what: str,
          timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the board's ``ondevice`` in the root (sharing this host's loopback)."""
    return _timed(timings, what, ["chroot", str(root), "/opt/coinfer/venv/bin/ondevice", *args],
                  timeout=timeout)


def test_install_needs_no_compiler_and_no_network(installed: Path) -> None:
    """Offline, on an image without a compiler: every wheel came from the bundle."""
    for compiler in ("usr/bin/gcc", "usr/bin/cc", "usr/bin/cmake"):
        assert not (installed / compiler).exists(), compiler
    wants = installed / "etc/systemd/system/multi-user.target.wants/coinfer-ondevice.service"
    assert wants.is_symlink()  # to /etc/systemd/system/..., a path inside the root


def test_selftest_reports_the_board_build(installed: Path, timings: dict[str, float]) -> None:
    done = board(installed, "selftest", "--model", "/var/lib/coinfer/models/draft-rpi5.gguf",
                 timings=timings, what="selftest")
    assert done.returncode == 0, done.stderr
    assert "DOTPROD" in done.stdout and "FP16_VA" in done.stdout, done.stdout


@pytest.mark.parametrize("policy", [["--policy", "fixed", "--gamma", "4"], ["--policy", "gelato"]],
                         ids=["fixed-4", "gelato"])
def test_the_board_generates_the_hosts_text(installed: Path, draft: Path,
                                            fixture_models: tuple[Path, Path],
                                            timings: dict[str, float], policy: list[str]) -> None:
    with edge_server(fixture_models[0]) as edge:
        common = ["generate", "--edge", edge.url, "--no-discover", "--prompt", PROMPT,
                  "--max-tokens", str(TOKENS), "--json", *policy]
        host = subprocess.run([sys.executable, "-m", "ondevice.cli", *common[:1], "--draft",
                               str(draft), *common[1:]], capture_output=True, text=True,
                              timeout=300)
        assert host.returncode == 0, host.stderr
        arm = board(installed, common[0], "--draft", "/var/lib/coinfer/models/draft-rpi5.gguf",
                    *common[1:], timings=timings, what=f"generate {policy[1]}")
        assert arm.returncode == 0, arm.stderr[-3000:]
    got, want = (json.loads(x.stdout.strip().splitlines()[-1]) for x in (arm, host))
    assert got["tokens"] == want["tokens"] and got["text"] == want["text"]
    assert not got["degraded"] and got["n_tokens"] == want["n_tokens"] > 0


def test_the_board_classifies_digits_and_reads_a_meter(installed: Path, digits_dnn: Path,
                                                       timings: dict[str, float]) -> None:
    """Two of load_digits' images (as .npy: the board has no scikit-learn), each classified
    right with the INT8 head on the board and the tail on this host's edge."""
    from sklearn.datasets import load_digits

    head = installed / "var/lib/coinfer/digits"
    shutil.copytree(digits_dnn, head)
    digits = load_digits()
    with edge_server(None, "--dnn", str(digits_dnn)) as edge:
        for i in (0, 7):
            npy = head / f"digit{i}.npy"
            np.save(npy, digits.images[i].astype(np.uint8))
            # a deadline no emulated head misses: the answer must not depend on speed
            done = board(installed, "classify", "--dnn", "/var/lib/coinfer/digits", "--edge",
                         edge.url, "--no-discover", "--image",
                         f"/var/lib/coinfer/digits/{npy.name}", "--deadline-ms", "60000",
                         "--json", timings=timings, what=f"classify {i}")
            assert done.returncode == 0, done.stderr[-3000:]
            got = json.loads(done.stdout.strip().splitlines()[-1])
            assert got["edge"] == edge.url and not got["errors"], got["errors"]
            assert [t["prediction"] for t in got["tasks"]] == [int(digits.target[i])], got
    meter = board(installed, "meter", "--meter", "sim", "--seconds", "1", "--json",
                  timings=timings, what="meter")
    assert meter.returncode == 0, meter.stderr
    reading = json.loads(meter.stdout.strip().splitlines()[-1])
    assert reading["source"] == "sim" and not reading["measured"] and reading["energy_j"] > 0


def test_the_installed_unit_verifies_in_the_root(installed: Path,
                                                 timings: dict[str, float]) -> None:
    done = _timed(timings, "systemd-analyze", [
        "chroot", str(installed), "systemd-analyze", "verify",
        "/etc/systemd/system/coinfer-ondevice.service"])
    assert done.returncode == 0 and "coinfer-ondevice" not in done.stderr, done.stderr
