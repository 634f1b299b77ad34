"""``ondevice bench enachi --quick``: the whole benchmark on a short setting (CI).

It starts its own edge-server, runs every policy per deadline, the budget run and 1-2 users
for real over loopback, and must print its table and write JSON and a PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_enachi_quick_writes_table_json_png(digits_dnn: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ondevice.cli", "bench", "enachi", "--quick", "--dnn",
         str(digits_dnn), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr
    assert "== digits-cnn: accuracy" in out.stdout
    for policy in ("enachi", "no-progressive", "constant-power", "edge-only", "device-only",
                   "fixed-split s1", "fixed-split s2", "fixed-split s3"):
        assert f"\n{policy} " in out.stdout
    assert "budget " in out.stdout and "energy per device vs users" in out.stdout
    data = json.loads((tmp_path / "enachi.json").read_text())
    parts = {r["part"] for r in data["rows"]}
    assert parts == {"deadline", "budget", "users"}
    assert {r["users"] for r in data["rows"] if r["part"] == "users"} == {1, 2}
    t = data["targets"]["digits-cnn"]
    assert {"per_deadline", "tight", "budget", "users"} <= set(t)
    assert all(r["tasks"] > 0 and r["energy_source"] == "modelled" for r in data["rows"])
    png = (tmp_path / "enachi.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (tmp_path / "enachi.txt").read_text().startswith("== digits-cnn")
