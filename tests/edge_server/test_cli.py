"""``edge-server``'s command line: mistakes in what it is given are usage errors (exit 2) found
before anything loads, with one line naming the flag. Real subprocesses, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def edge_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_server.cli", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("content", "why"), [
    (b"", "not a GGUF file"), (b"PK\x03\x04 a zip, not a model", "not a GGUF file"),
    (b"GGU", "not a GGUF file"),
])
def test_a_model_that_is_not_gguf_is_a_usage_error(tmp_path: Path, content: bytes,
                                                   why: str) -> None:
    model = tmp_path / "target.gguf"
    model.write_bytes(content)
    done = edge_cli("--model", str(model), "--no-advertise", "--host", "127.0.0.1",
                    "--port", "0")
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert why in done.stderr and str(model) in done.stderr and "--model" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "listening" not in done.stdout


def test_a_missing_model_is_a_usage_error(tmp_path: Path) -> None:
    done = edge_cli("--model", str(tmp_path / "nope.gguf"), "--no-advertise")
    assert done.returncode == 2 and "not found" in done.stderr, done.stderr


def test_version_names_the_edge_server() -> None:
    done = edge_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("edge-server (coinfer) "), done
