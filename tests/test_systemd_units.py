"""The systemd units of docs/systemd.md pass ``systemd-analyze verify`` (package systemd).

ExecStart's ``/opt/coinfer/venv`` is replaced with this test's venv (``sys.prefix``), whose
``bin/edge-server`` and ``bin/ondevice`` exist, so the check covers the command too."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "systemd.md"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def units() -> dict[str, str]:
    """Unit file name -> text, for every ``## ...: `/etc/systemd/system/X` `` + ini block."""
    text = DOC.read_text()
    found = re.findall(r"`/etc/systemd/system/([\w.-]+\.service)`\n\n```ini\n(.*?)```", text,
                       re.S)
    return dict(found)


def test_the_doc_has_both_units() -> None:
    assert set(units()) == {"coinfer-edge.service", "coinfer-ondevice.service"}
    for text in units().values():
        assert "User=coinfer" in text and "Restart=on-failure" in text
        assert "StandardOutput=journal" in text and "/etc/coinfer/token" in text


@pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                    reason="needs systemd-analyze (apt-get install systemd)")
@pytest.mark.parametrize("name", ["coinfer-edge.service", "coinfer-ondevice.service"])
def test_unit_verifies(tmp_path: Path, name: str) -> None:
    unit = tmp_path / name
    unit.write_text(units()[name].replace("/opt/coinfer/venv", sys.prefix))
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and name.split(".")[0] not in done.stderr, done.stderr
