"""The command lines answer mistakes at once and cleanly: usage errors exit 2 before any work,
``--help``/``--version`` load nothing heavy, Ctrl-C at any moment exits 130 without a
traceback. Real subprocesses, real files."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def cli(*args: str, module: str = "ondevice.cli", timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=timeout)


def usage_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    for w in words:
        assert w in done.stderr, (w, done.stderr)


@pytest.mark.parametrize("url", ["127.0.0.1:18470", "ftp://127.0.0.1:18470",
                                 "http://", "http://127.0.0.1:99999", "edge.lan"])
@pytest.mark.parametrize("command", ["generate", "classify", "serve"])
def test_a_malformed_edge_url_is_a_usage_error(fixture_models: tuple[Path, Path],
                                               command: str, url: str) -> None:
    extra = {"generate": ("--draft", str(fixture_models[1]), "--prompt", "hi"),
             "serve": ("--draft", str(fixture_models[1])),
             "classify": ("--dataset", "samples")}[command]
    done = cli(command, *extra, "--edge", url, "--no-discover")
    usage_error(done, "--edge")
    if "://" not in url:
        assert f"http://{url}" in done.stderr  # the likely fix


HEAVY = {"llama_cpp", "onnxruntime", "matplotlib", "torch", "sklearn"}  # never for --help
LIGHT = HEAVY | {"numpy", "aiohttp", "zeroconf"}  # nor these, where nothing lists numbers


def _imported(stderr: str) -> set[str]:
    """Top-level packages named in ``python -X importtime``'s report."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize(("argv", "banned"), [
    (("ondevice.cli", "--help"), LIGHT), (("ondevice.cli", "--version"), LIGHT),
    (("ondevice.cli", "generate", "--help"), LIGHT), (("ondevice.cli", "serve", "--help"), LIGHT),
    (("ondevice.cli", "meter", "--help"), LIGHT), (("ondevice.cli", "demo", "--help"), LIGHT),
    (("ondevice.cli", "discover", "--help"), LIGHT),
    (("ondevice.cli", "classify", "--help"), HEAVY), (("ondevice.cli", "bench", "--help"), HEAVY),
    (("ondevice.cli", "bench", "gelato", "--help"), HEAVY),
    (("ondevice.cli", "bench", "enachi", "--help"), HEAVY),
    (("ondevice.cli", "bench", "fleet", "--help"), HEAVY),
    (("edge_server.cli", "--help"), HEAVY), (("edge_server.cli", "--version"), HEAVY),
    (("export.cli", "--help"), HEAVY), (("export.cli", "--version"), HEAVY),
])
def test_help_and_version_load_no_model_runtime(argv: tuple[str, ...], banned: set[str]
                                                ) -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()
    loaded = _imported(done.stderr) & banned
    assert not loaded, f"{' '.join(argv)} imported {sorted(loaded)}"


def test_ctrl_c_while_starting_exits_130(fixture_models: tuple[Path, Path]) -> None:
    """Ctrl-C at any moment once coinfer's code runs (importing the command line, loading the
    model, the first round) exits 130 and never prints a traceback. The moment is an event:
    the command line's module has been imported (``-X importtime`` says so), then a delay."""
    for delay_s in (0.0, 0.05, 0.2, 0.4, 0.8, 1.5):  # the speed changes which moment, not what
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "ondevice.cli", "generate", "--draft",
             str(fixture_models[1]), "--prompt", "Hello", "--max-tokens", "2000",
             "--n-ctx", "4096", "--no-discover"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.rstrip().endswith("| ondevice.cli.main"):
                break
        time.sleep(delay_s)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        err = "".join(seen) + err
        assert proc.returncode == 130, (delay_s, proc.returncode, err[-3000:])
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay_s, err[-3000:])


@pytest.mark.parametrize("flag", ["--profile", "--edge-profile"])
def test_an_unknown_profile_is_a_usage_error_before_any_work(flag: str, tmp_path: Path) -> None:
    done = cli("bench", "gelato", "--mode", "sim", flag, "nosuch", "--out", str(tmp_path),
               "--no-progress")
    usage_error(done, "nosuch", "built in")
    assert done.stdout == ""  # no table, no trace replayed first
    assert not any(tmp_path.iterdir())
