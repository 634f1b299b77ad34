"""``ondevice bench ahead``: fixed gamma and gelato with and without drafting ahead against one
delayed edge, over the two-namespace rig (root) or loopback, side by side."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ondevice.cli import main


@pytest.mark.parametrize("rig", ["netns", "loopback"])
def test_bench_ahead_compares_with_and_without(fixture_models: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               rig: str) -> None:
    if rig == "netns" and os.geteuid() != 0:
        pytest.skip("the two-namespace rig needs root (the loopback case runs)")
    target, draft = fixture_models
    rc = main(["bench", "ahead", "--target", str(target), "--draft", str(draft),
               "--n-prompts", "1", "--max-tokens", "24", "--delay-ms", "20", "--ahead", "4",
               "--out", str(tmp_path), *(["--loopback"] if rig == "loopback" else [])])
    out = capsys.readouterr().out
    assert rc == 0, out
    data = json.loads((tmp_path / "ahead.json").read_text())
    if rig == "netns" and data["rig"] != "netns":
        pytest.skip(f"no network namespaces here: {data['rig_note']}")
    assert data["rig"] == rig and data["delay_ms"] == 20 and data["energy_source"] == "modelled"
    rows = {r["label"]: r for r in data["rows"]}
    assert set(rows) == {"fixed-4", "fixed-4 +4 ahead", "gelato, no drafting ahead", "gelato"}
    assert all(r["tokens"] > 0 and r["degraded"] == 0 for r in rows.values())
    assert rows["fixed-4"]["ahead_drafted"] == 0 == rows["gelato, no drafting ahead"][
        "ahead_drafted"]
    assert rows["fixed-4 +4 ahead"]["ahead_drafted"] > 0
    assert "fixed-4 +4 ahead / fixed-4:" in out and "(same run)" in out
    assert (tmp_path / "ahead.png").stat().st_size > 0
