"""The README's Python API example runs as printed (against a local edge, the fixture draft)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from _edge import EdgeProc

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_python_example_runs(fixture_models: tuple[Path, Path], edge: EdgeProc,
                                    tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "from ondevice import Device" in b]
    assert 'draft="D.gguf"' in code and '"http://127.0.0.1:8470"' in code
    code = code.replace('"D.gguf"', repr(str(fixture_models[1]))).replace(
        '"http://127.0.0.1:8470"', repr(edge.url))
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("tokens/s") == 2 and "J/token" in done.stdout
    assert "Traceback" not in done.stderr
