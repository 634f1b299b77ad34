"""``ondevice generate`` takes runtime settings from a GGUF's sidecar unless flags say otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ondevice.llm.device import draft_config


def test_sidecar_settings_and_flag_precedence(tmp_path: Path,
                                              fixture_models: tuple[Path, Path]) -> None:
    out = tmp_path / "draft-rpi5.gguf"
    done = subprocess.run(
        [sys.executable, "-m", "export", "llm", "quantize", "--in", str(fixture_models[1]),
         "--preset", "rpi5", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    runtime = json.loads((tmp_path / "draft-rpi5.gguf.json").read_text())["runtime"]
    cfg = draft_config(str(out), n_ctx=None, n_threads=None)
    assert cfg.n_ctx == runtime["n_ctx"] and cfg.n_threads == runtime["n_threads"]
    assert cfg.n_gpu_layers == runtime["n_gpu_layers"]
    flagged = draft_config(str(out), n_ctx=256, n_threads=1)
    assert (flagged.n_ctx, flagged.n_threads) == (256, 1)
    plain = draft_config(str(fixture_models[1]), n_ctx=None, n_threads=None)
    assert plain.n_ctx == 4096 and plain.n_threads is None
