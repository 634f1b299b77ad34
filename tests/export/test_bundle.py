"""`model-export bundle`: the file list, the cloud-init user-data (``cloud-init schema``, the
Debian package cloud-init) and the systemd unit (``systemd-analyze verify``, package systemd).
Both tools are real; a test that needs one skips naming its package when it is absent."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export._bundle import BOARDS, BundleSpec, device_unit, serve_command
from export.cli import main

CLOUD_INIT = shutil.which("cloud-init")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_cloud_init = pytest.mark.skipif(
    CLOUD_INIT is None, reason="needs cloud-init (apt-get install cloud-init)")
needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="needs systemd-analyze (apt-get install systemd)")


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """(draft.gguf with its sidecar, a wheelhouse's file names: coinfer's wheel, an aarch64
    llama one and numpy's for each board's Python; the emulated-board test installs real ones)."""
    draft = tmp_path / "in" / "draft-q4.gguf"
    draft.parent.mkdir()
    draft.write_bytes(b"GGUF" + bytes(60))
    draft.with_name(draft.name + ".json").write_text("{}\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("coinfer-0.1.0-py3-none-any.whl",
                 "llama_cpp_python-0.3.36-py3-none-linux_aarch64.whl",
                 "numpy-2.3.5-cp313-cp313-manylinux_2_27_aarch64.whl",
                 "numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.whl",
                 "pip-25.3-py3-none-any.whl"):
        (wheels / name).write_bytes(b"PK")
    return draft, wheels


def bundle(tmp_path: Path, inputs: tuple[Path, Path], *extra: str, board: str = "rpi5") -> Path:
    out = tmp_path / f"bundle-{board}"
    assert main(["bundle", "--board", board, "--draft", str(inputs[0]), "--wheelhouse",
                 str(inputs[1]), "--out", str(out), *extra]) == 0
    return out


def test_the_file_list(tmp_path: Path, inputs: tuple[Path, Path],
                       capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    # Written into the bundle's unit only: nothing here connects or browses (no --interface
    # or --no-discover applies to model-export).
    edge_flag = ("--edge", "http://10.0.0.2:8470")
    out = bundle(tmp_path, inputs, *edge_flag, "--token-file", str(token))
    listed = capsys.readouterr().out.split()
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert listed == files == [
        "coinfer/README.txt", "coinfer/coinfer-ondevice.service", "coinfer/install.sh",
        "coinfer/models/draft-q4.gguf", "coinfer/models/draft-q4.gguf.json",
        "coinfer/token",
        "coinfer/wheels/coinfer-0.1.0-py3-none-any.whl",
        "coinfer/wheels/llama_cpp_python-0.3.36-py3-none-linux_aarch64.whl",
        "coinfer/wheels/numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.whl",
        "coinfer/wheels/numpy-2.3.5-cp313-cp313-manylinux_2_27_aarch64.whl",
        "coinfer/wheels/pip-25.3-py3-none-any.whl",
        "meta-data", "user-data"]
    unit = (out / "coinfer" / "coinfer-ondevice.service").read_text()
    assert "--edge http://10.0.0.2:8470" in unit and "--token-file /etc/coinfer/token" in unit
    assert "User=coinfer" in unit and "Restart=on-failure" in unit


def test_discover_leaves_the_edge_to_zeroconf(tmp_path: Path,
                                              inputs: tuple[Path, Path]) -> None:
    out = bundle(tmp_path, inputs, "--discover", "--meter", "ina219-i2c:1:0x40")
    unit = (out / "coinfer" / "coinfer-ondevice.service").read_text()
    assert "--edge" not in unit and "--meter ina219-i2c:1:0x40" in unit
    assert "SupplementaryGroups=dialout i2c" in unit


@needs_cloud_init
@pytest.mark.parametrize("board", sorted(BOARDS))
def test_user_data_is_valid_cloud_config(tmp_path: Path, inputs: tuple[Path, Path],
                                         board: str) -> None:
    out = bundle(tmp_path, inputs, board=board)
    done = subprocess.run([CLOUD_INIT, "schema", "--config-file", str(out / "user-data")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (out / "user-data").read_text()
    assert text.startswith("#cloud-config\n")
    assert "[bash, /boot/firmware/coinfer/install.sh]" in text
    assert "package_update: false" in text and "packages:" not in text  # offline


@needs_systemd
@pytest.mark.parametrize("edge", [None, "https://edge.local:8470"])
def test_the_unit_verifies(tmp_path: Path, edge: str | None) -> None:
    """The unit as the bundle writes it, with the venv prefix of this test's Python (a real
    ``bin/ondevice``), so systemd-analyze can check ExecStart too."""
    spec = BundleSpec("rpi5", Path("d.gguf"), tmp_path, edge=edge, meter="rpi5")
    unit = tmp_path / "coinfer-ondevice.service"
    unit.write_text(device_unit(spec, venv=sys.prefix))
    assert Path(serve_command(spec, sys.prefix)[0]).is_file()
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and "coinfer-ondevice" not in done.stderr, done.stderr


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_install_script_is_offline_bash_for_the_boards_python(tmp_path: Path,
                                                              inputs: tuple[Path, Path],
                                                              board: str) -> None:
    out = bundle(tmp_path, inputs, board=board)
    script = out / "coinfer" / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    assert "--no-index" in text and "--only-binary=:all:" in text
    assert '"$HERE/wheels/coinfer-0.1.0-py3-none-any.whl[llm,dnn,i2c]"' in text
    assert "apt-get" not in text and "CMAKE_ARGS" not in text and "--upgrade pip" not in text
    assert f'!= "{BOARDS[board].python}"' in text


@pytest.mark.parametrize("change, message", [
    (lambda d, w: (d.with_name(d.name + ".json").unlink(), None), "sidecar"),
    (lambda d, w: (w / "coinfer-0.1.0-py3-none-any.whl").unlink(), "coinfer-*.whl"),
    (lambda d, w: (w / "llama_cpp_python-0.3.36-py3-none-linux_aarch64.whl").unlink(),
     "make wheelhouse ARCH=aarch64"),
    (lambda d, w: (w / "numpy-2.3.5-cp313-cp313-manylinux_2_27_aarch64.whl").unlink(),
     "no numpy wheel for Python 3.13"),
])
def test_bad_input_is_one_line(tmp_path: Path, inputs: tuple[Path, Path], change, message: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    change(*inputs)
    assert main(["bundle", "--board", "rpi5", "--draft", str(inputs[0]), "--wheelhouse",
                 str(inputs[1]), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_bookworm_bundle_names_its_python(tmp_path: Path, inputs: tuple[Path, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Raspberry Pi OS Bookworm's Python is 3.11: the default (Trixie's 3.13) wheelhouse is
    refused for it, one for 3.11 is taken, and its installer checks for 3.11."""
    (inputs[1] / "numpy-2.3.5-cp311-cp311-manylinux_2_27_aarch64.whl").write_bytes(b"PK")
    out = bundle(tmp_path, inputs, "--python", "3.11")
    text = (out / "coinfer" / "install.sh").read_text()
    assert '!= "3.11"' in text and "an image with Python 3.11" in text
    (inputs[1] / "numpy-2.3.5-cp311-cp311-manylinux_2_27_aarch64.whl").unlink()
    capsys.readouterr()
    assert main(["bundle", "--board", "rpi5", "--draft", str(inputs[0]), "--wheelhouse",
                 str(inputs[1]), "--python", "3.11", "--out", str(tmp_path / "o")]) == 2
    assert "no numpy wheel for Python 3.11" in capsys.readouterr().err


INJECTIONS = ["sim\nExecStartPre=/bin/touch /tmp/pwned", "sim'x", 'sim"x', "sim$(id)", "sim%h",
              "sim`id`", "sim x"]


@pytest.mark.parametrize("text", INJECTIONS, ids=["newline", "quote", "dquote", "dollar",
                                                  "percent", "backtick", "space"])
@pytest.mark.parametrize("flag", ["--meter", "--edge", "--host", "--draft"])
def test_nothing_is_injected_into_the_services_files(tmp_path: Path,
                                                     inputs: tuple[Path, Path], flag: str,
                                                     text: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A value with a newline, quote, $, % (a systemd specifier), backtick or space never
    reaches the unit, user-data or install.sh: one line naming the flag, exit 2, no files."""
    draft = inputs[0]
    args = {"--meter": "sim", "--edge": "http://10.0.0.2:8470", "--host": "127.0.0.1"}
    if flag == "--draft":
        draft = draft.with_name(f"d{text.replace('/', '_')}.gguf")
        shutil.copy(inputs[0], draft)
        shutil.copy(inputs[0].with_name(inputs[0].name + ".json"),
                    draft.with_name(draft.name + ".json"))
    elif flag == "--edge":
        args[flag] = f"http://10.0.0.2:8470/{text}"
    else:
        args[flag] = text
    out = tmp_path / "o"
    rc = main(["bundle", "--board", "rpi5", "--draft", str(draft), "--wheelhouse",
               str(inputs[1]), *[x for kv in args.items() for x in kv], "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and flag in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_out_naming_a_file_is_one_line(tmp_path: Path, inputs: tuple[Path, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a-file"
    out.write_text("x")
    assert main(["bundle", "--board", "rpi5", "--draft", str(inputs[0]), "--wheelhouse",
                 str(inputs[1]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file" in err and len(err.splitlines()) == 1
