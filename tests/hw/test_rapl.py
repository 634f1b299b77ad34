"""RAPL on powercap trees built in a temp dir: package domains only, wraparound, permissions."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time

import pytest
from _waiting import wait_until
from hw_emulators import FileWriter, Trace, assert_energy_matches

from hw import MeterError, open_meter
from hw._rapl import RaplMeter, discover_packages

REL_TOL = 0.02  # counters are exact; what is left is the 5 ms update period of the writer
OPTS = "poll_hz=50,timeout_s=0.3,backoff_s=0.05"


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def domain(root: str, entry: str, name: str, range_uj: int, energy_uj: int = 0) -> str:
    d = os.path.join(root, entry)
    _write(os.path.join(d, "name"), name)
    _write(os.path.join(d, "max_energy_range_uj"), str(range_uj))
    _write(os.path.join(d, "energy_uj"), str(energy_uj))
    return os.path.join(d, "energy_uj")


def two_socket_tree(root: str) -> dict[str, str]:
    """Two packages with small wrap ranges, plus domains that must never be summed."""
    _write(os.path.join(root, "intel-rapl/enabled"), "1")  # the control type, no domain
    paths = {
        "pkg0": domain(root, "intel-rapl:0", "package-0", 2_000_000, 1_900_000),  # wraps at 2 J
        "pkg1": domain(root, "intel-rapl:1", "package-1", 3_000_000, 17),  # wraps at 3 J
        "core": domain(root, "intel-rapl:0:0", "core", 2_000_000),  # inside package-0
        "dram": domain(root, "intel-rapl:1:0", "dram", 2_000_000),  # inside package-1
        "mmio": domain(root, "intel-rapl-mmio:0", "package-0", 2_000_000),  # duplicate
        "psys": domain(root, "intel-rapl:2", "psys", 2_000_000),  # the platform
    }
    return paths


def test_discovers_top_level_packages_only(tmp_path):
    two_socket_tree(str(tmp_path))
    names = [(d.name, d.range_j) for d in discover_packages(str(tmp_path))]
    assert names == [("package-0", 2.0), ("package-1", 3.0)]


async def test_energy_with_wraparound_and_no_double_counting(tmp_path):
    root = str(tmp_path)
    paths = two_socket_tree(root)
    trace = Trace(base_w=6.0, amp_w=1.5)  # ~6 W: package-0 (60 %) wraps about every 0.55 s
    t_start = time.monotonic()
    wraps = {"pkg0": 0}

    def files(t: float) -> dict[str, str]:
        e = trace.energy_j(t_start, t)
        raw0 = 1_900_000 + round(0.6 * e * 1e6)
        wraps["pkg0"] = raw0 // 2_000_000
        out = {paths["pkg0"]: f"{raw0 % 2_000_000}\n",
               paths["pkg1"]: f"{(17 + round(0.4 * e * 1e6)) % 3_000_000}\n"}
        for k in ("core", "dram", "mmio", "psys"):  # each would inflate the sum if counted
            out[paths[k]] = f"{round(0.5 * e * 1e6) % 2_000_000}\n"
        return out

    with FileWriter(files):
        async with open_meter(f"rapl:{root},{OPTS}") as meter:
            assert meter.kind == "rapl" and meter.measured
            await wait_until(lambda: meter.latest is not None)
            t0 = time.monotonic()
            await wait_until(lambda: time.monotonic() - t0 > 1.5, what="1.5 s")
            t1 = time.monotonic()
            assert_energy_matches(meter, trace, t0, t1, rel=REL_TOL, span_w=3.0)
            assert meter.coverage(t0, t1) > 0.9
            assert meter.latest.energy_j is not None
            # power is the counter's slope: over the window, inside the trace's range (one read's
            # slope is 0 W when the emulated sysfs writer, starved on a busy machine, has not
            # moved the counters since the last read; a real RAPL counter moves every ~1 ms)
            mean_w = meter.energy_j(t0, t1) / (t1 - t0)
            assert 6.0 - 1.5 - 0.1 < mean_w < 6.0 + 1.5 + 1.5 + 0.1
            assert max(meter.integrator.powers_w(t0, t1)) > 6.0 - 1.5 - 0.1
    assert wraps["pkg0"] >= 2, "the trace must wrap package-0's counter"


def test_unreadable_counter_names_the_fix():
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file unreadable for another user (this test drops "
                    "to uid 65534 in a forked child)")
    root = tempfile.mkdtemp(prefix="rapl-perm-")
    try:
        os.chmod(root, 0o755)
        path = domain(root, "intel-rapl:0", "package-0", 2_000_000, 5)
        os.chmod(os.path.join(root, "intel-rapl:0"), 0o755)
        for f in ("name", "max_energy_range_uj"):
            os.chmod(os.path.join(root, "intel-rapl:0", f), 0o444)
        os.chmod(path, stat.S_IRUSR)  # root-only, as since Linux 5.10
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody and probe
            code = 0
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                msg = "no error"
                try:
                    RaplMeter(powercap_root=root)._device_probe()
                except MeterError as err:
                    msg = str(err)
                os.write(w, msg.encode())
            except OSError as err:
                os.write(w, f"SKIP {err}".encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            msg = f.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        if msg.startswith("SKIP"):
            pytest.skip(f"cannot drop privileges to uid 65534 here: {msg[5:]}")
        assert "CVE-2020-8694" in msg and "chmod o+r" in msg and "udev" in msg, msg
    finally:
        shutil.rmtree(root)


async def test_no_rapl_is_a_clear_error(tmp_path):
    with pytest.raises(MeterError, match="no RAPL package domain"):
        async with open_meter(f"rapl:{tmp_path}"):
            raise AssertionError("must not start")
