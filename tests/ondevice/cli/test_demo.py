"""``ondevice demo``: Gemma 3 270M end to end, and a clean shutdown on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "demo", "--max-tokens", "12", "--json"],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    data = json.loads(done.stdout.strip().splitlines()[-1])
    assert data["n_tokens"] == 12 or data["stop_reason"] == "eos"
    assert data["policy"] == "gelato" and data["edge"].startswith("http://127.0.0.1:")
    assert not data["degraded"]
    assert data["energy_source"] == "modelled" and data["energy_j"] > 0
    # GELATO drafted rounds, or streamed: on a machine where the draft costs about what the
    # target does (this VM: 39 vs 45 ms a token) it times the draft first and streams
    streamed = data["policy_settings"]["streamed_tokens"]
    assert (data["rounds"] >= 1 and data["acceptance"] is not None) or streamed > 0
    assert streamed + data["accepted"] + data["rounds"] >= data["n_tokens"]
    assert "tokens/s" in done.stdout and "modelled" in done.stdout


def test_demo_ctrl_c_stops_the_edge() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondevice.cli", "demo", "--max-tokens", "400"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = None
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 600
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "edge-server up at" in line:
                url = line.split("edge-server up at ", 1)[1].split()[0]
        assert url, "the demo never started its edge"
        time.sleep(1.0)  # generating now
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/v1/info", timeout=5)
