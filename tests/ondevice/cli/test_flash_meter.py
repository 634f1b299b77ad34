"""``ondevice flash-meter`` without a Pico: the file set, the mpremote command lines, the dry
run, and the missing-extra line. Copying to a real Pico and reading its banner needs one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import hw.firmware
from ondevice.cli.flash_meter import firmware_files, mpremote_commands
from ondevice.cli.main import main

FIRMWARE = Path(hw.firmware.__file__).resolve().parent


def test_the_firmware_set_is_ina219_then_main() -> None:
    files = firmware_files()
    assert [(p.name, r) for p, r in files] == [("ina219.py", ":ina219.py"),
                                               ("main.py", ":main.py")]
    assert all(p.parent == FIRMWARE and p.is_file() for p, _ in files)


def test_a_missing_firmware_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "ina219.py").write_text("")
    with pytest.raises(FileNotFoundError, match=r"main\.py"):
        firmware_files(tmp_path)


def test_commands_copy_in_one_session_then_reset() -> None:
    files = firmware_files()
    copy, reset = mpremote_commands("/dev/ttyACM1", files, python="py")
    assert copy == ["py", "-m", "mpremote", "connect", "/dev/ttyACM1",
                    "fs", "cp", str(files[0][0]), ":ina219.py", "+",
                    "fs", "cp", str(files[1][0]), ":main.py"]
    assert reset == ["py", "-m", "mpremote", "connect", "/dev/ttyACM1", "reset"]


def test_the_commands_are_ones_mpremote_parses() -> None:
    """mpremote (the [pico] extra) knows every command word used."""
    pytest.importorskip("mpremote", reason="needs mpremote: pip install 'coinfer[pico]'")
    from mpremote.main import _BUILTIN_COMMAND_EXPANSIONS, _COMMANDS

    words = {"connect", "fs", "reset"}
    assert words <= set(_COMMANDS) | set(_BUILTIN_COMMAND_EXPANSIONS)


def test_dry_run_prints_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flash-meter", "--port", "/dev/ttyACM7", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith(f"{sys.executable} -m mpremote connect "
                                               "/dev/ttyACM7 fs cp ")
    assert out[1].endswith("connect /dev/ttyACM7 reset")


def test_without_mpremote_one_line_names_the_extra() -> None:
    """A Python where mpremote cannot be imported (``sys.modules["mpremote"] = None`` is the
    interpreter's own way to block an import): one line naming the extra, exit 1."""
    code = ("import sys; sys.modules['mpremote'] = None; from ondevice.cli.main import main; "
            "sys.exit(main(['flash-meter', '--port', '/dev/null']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1, done.stderr
    err = done.stderr.strip()
    assert err.count("\n") == 0 and "coinfer[pico]" in err

