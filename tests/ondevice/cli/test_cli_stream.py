"""``ondevice generate`` streams: text on stdout as it is committed, the report on stderr,
``--json`` alone on stdout; prompts from a file or stdin; ``ondevice --version`` and bare
``ondevice``. Real subprocesses, a real edge on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _edge import EdgeProc

PROMPT = "Hello world"


def cli(*args: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ondevice.cli", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def draft(fixture_models: tuple[Path, Path]) -> str:
    return str(fixture_models[1])


def gen(draft: str, edge: EdgeProc, *args: str, **kw: object
        ) -> subprocess.CompletedProcess[str]:
    return cli("generate", "--draft", draft, "--edge", edge.url, "--no-discover", "--n-ctx",
               "512", "--threads", "1", "--policy", "fixed", "--max-tokens", "30", "--seed", "1",
               *args, **kw)


@pytest.fixture(scope="module")
def reference(draft: str, edge: EdgeProc) -> dict:
    done = gen(draft, edge, "--prompt", PROMPT, "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1, done.stdout  # only the JSON object
    return json.loads(done.stdout)


def test_json_stdout_is_only_the_report(reference: dict) -> None:
    assert reference["n_tokens"] == 30 and reference["text"]


def test_text_on_stdout_report_on_stderr(draft: str, edge: EdgeProc, reference: dict) -> None:
    done = gen(draft, edge, "--prompt", PROMPT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference["text"] + "\n"
    assert "tokens/s" in done.stderr and "tokens/s" not in done.stdout


def test_prompt_from_file_and_stdin(draft: str, edge: EdgeProc, reference: dict,
                                    tmp_path: Path) -> None:
    f = tmp_path / "prompt.txt"
    f.write_text(PROMPT + "\n")  # an editor's final newline is not part of the prompt
    done = gen(draft, edge, "--prompt-file", str(f), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"] == reference["text"]
    done = gen(draft, edge, "--prompt", "-", "--json", input=PROMPT + "\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"] == reference["text"]


@pytest.mark.parametrize(("args", "stdin", "words"), [
    (("--prompt-file", "/nonexistent/prompt.txt"), None, "--prompt-file"),
    (("--prompt", "-"), "\n", "empty"),
    (("--prompt", "x", "--prompt-file", "/tmp/x"), None, "not allowed with"),
    ((), None, "one of the arguments --prompt --prompt-file is required"),
])
def test_prompt_source_mistakes_are_usage_errors(draft: str, edge: EdgeProc,
                                                 args: tuple[str, ...], stdin: str | None,
                                                 words: str) -> None:
    done = gen(draft, edge, *args, input=stdin)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert words in done.stderr and "Traceback" not in done.stderr


def test_text_arrives_while_generating_and_ctrl_c_keeps_it(draft: str) -> None:
    """The first text is on stdout while the process still runs (the report is not there
    yet); Ctrl-C then ends it with exit 130 and the report on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondevice.cli", "generate", "--draft", draft, "--no-discover",
         "--policy", "device-only", "--n-ctx", "4096", "--threads", "1", "--prompt", "Hello",
         "--max-tokens", "4000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ,
                                                            "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    first = os.read(proc.stdout.fileno(), 1)
    assert first and proc.poll() is None, "no text before the end"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    text = (first + out).decode()
    assert len(text.strip()) > 1 and "tokens/s" not in text
    assert "(interrupted)" in err.decode()


def test_version_and_bare_command() -> None:
    from importlib.metadata import version

    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"ondevice (coinfer) {version('coinfer')}"
    done = cli()
    assert done.returncode == 2
    assert "generate" in done.stderr and "serve" in done.stderr  # the full help, on stderr


def test_model_export_version() -> None:
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "export", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"model-export (coinfer) {version('coinfer')}"
