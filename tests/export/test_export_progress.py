"""Progress of `model-export llm` commands and rank-drafts' table layout.

Progress bars go to stderr only when stderr is a terminal: each command is run as a real
subprocess once with stderr on a pseudo-terminal (os.openpty, 120 columns) and once with stderr
a pipe. The table test feeds `RankReport.table` values far wider than the fixtures' and parses
the printed columns back.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from export._rank_drafts import Acceptance, DraftRank, Expected, RankReport

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: pip install 'coinfer[llm]'")

REPO = Path(__file__).resolve().parents[2]


def _on_pty(args: list[str], timeout: float = 120.0) -> tuple[int, str, str]:
    """Run `python -m export *args` with stderr on a pseudo-terminal and stdout a pipe; return
    (exit status, stdout, everything written to the terminal)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "export", *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError as e:  # EIO: every slave descriptor closed (the child exited)
            if e.errno != errno.EIO:
                raise
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    rc = proc.wait(timeout=timeout)
    return rc, out, b"".join(chunks).decode("utf-8", "replace")


def _piped(args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "export", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def _bar_lines(tty: str, desc: str) -> list[str]:
    """The redraws of the bar named `desc` (tqdm writes them after carriage returns)."""
    return [s for s in re.split(r"[\r\n]", tty) if s.lstrip().startswith(f"{desc}:")]


def test_check_pair_shows_a_step_bar_on_a_terminal_only(
    fixture_models: tuple[Path, Path],
) -> None:
    target, draft = fixture_models
    rc, out, tty = _on_pty(["llm", "check-pair", str(draft), str(target)])
    assert rc == 0 and out.startswith("VALID"), tty
    bars = _bar_lines(tty, "check-pair")
    assert bars and "2/2 steps" in bars[-1], tty
    assert any("reading draft.gguf" in b for b in bars) and "\r" in tty
    piped = _piped(["llm", "check-pair", str(draft), str(target)])
    assert piped.returncode == 0 and piped.stdout == out
    assert "\r" not in piped.stderr and "steps" not in piped.stderr
    rc, _, tty = _on_pty(["llm", "check-pair", str(draft), str(target), "--no-progress"])
    assert rc == 0 and not _bar_lines(tty, "check-pair")


def test_make_draft_shows_its_steps_on_a_terminal_only(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    target, _ = fixture_models
    args = ["llm", "make-draft", "--from", str(target), "--keep-layers", "1", "--type", "q8_0"]
    rc, out, tty = _on_pty([*args, "--out", str(tmp_path / "a.gguf")])
    assert rc == 0 and "check-pair against target.gguf: valid" in out, tty
    bars = _bar_lines(tty, "make-draft")
    assert bars and "5/5 steps" in bars[-1], tty
    for step in ("reading target.gguf", "writing 1 layers", "quantizing to q8_0",
                 "loading and running the draft", "check-pair against the source"):
        assert any(step in b for b in bars), step
    assert _bar_lines(tty, "quantize q8_0")  # the per-tensor bar, stacked below
    piped = _piped([*args, "--out", str(tmp_path / "b.gguf")])
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and "steps" not in piped.stderr
    assert "checking that the draft loads" in piped.stderr  # the plain progress lines stay


def test_rank_drafts_times_the_target_with_a_bar_on_a_terminal_only(
    fixture_models: tuple[Path, Path],
) -> None:
    target, draft = fixture_models
    args = ["llm", "rank-drafts", str(target), str(draft), "--max-tokens", "4", "--max-b", "2"]
    rc, out, tty = _on_pty(args)
    assert rc == 0 and "a(T=0.8)" in out, tty
    assert _bar_lines(tty, "target batches") and _bar_lines(tty, "check-pair"), tty
    assert _bar_lines(tty, "draft.gguf T=0")  # the per-prompt bars
    piped = _piped(args)
    assert piped.returncode == 0 and "\r" not in piped.stderr


# -- the table -----------------------------------------------------------------------------


def _rank(path: str, mib: float, tok_s: float, a: float, speedup: float, b: int) -> DraftRank:
    acc = {t: Acceptance(temperature=t, accepted=int(a * 1000), rejections=1000 - int(a * 1000))
           for t in (0.0, 0.8)}  # fmt: skip
    return DraftRank(
        path=Path(path),
        size_bytes=int(mib * 2**20),
        t_draft_s=1.0 / tok_s,
        acceptance=acc,
        expected={t: Expected(b=b, tokens_per_s=tok_s, speedup=speedup) for t in (0.0, 0.8)},
    )


def test_table_columns_line_up_for_large_values() -> None:
    drafts = [
        _rank("/m/tiny.gguf", 0.2, 18224.1, 0.612, 1.23, 3),
        _rank("/m/a-rather-long-draft-file-name-q4_k_m.gguf", 123456.7, 1234567.8, 0.05, 123.45,
              16),
        _rank("/m/x.gguf", 3.0, 9.0, 1.0, 0.5, 1),
    ]  # fmt: skip
    report = RankReport(
        target=Path("/m/target.gguf"), rtt_s=0.005, t_eval_s=[0.01] * 17,
        t_eval_measured_s=[0.01] * 17, t_row_s={0.0: 0.0, 0.8: 0.001}, n_prompts=8,
        max_tokens=48, gamma=4, top_k=32, rank_by=0.0, drafts=drafts,
    )  # fmt: skip
    lines = report.table().splitlines()
    header = next(line for line in lines if line.startswith("#"))
    rows = [line for line in lines if line[:1].isdigit()]
    assert len(rows) == 3
    names = header.split()
    assert names == ["#", "draft", "MiB", "tok/s", "a(T=0)", "a(T=0.8)", "b*", "speedup", "b*",
                     "speedup"]  # fmt: skip
    # Each header name's span; every row's cell must end where its right-aligned header ends
    # (start where the left-aligned draft header starts) and be set off by >= 2 spaces.
    spans = [m.span() for m in re.finditer(r"\S+", header)]
    for row in rows:
        cells = [m.span() for m in re.finditer(r"\S+", row)]
        assert len(cells) == len(names), row
        for i, ((hs, he), (cs, ce)) in enumerate(zip(spans, cells, strict=True)):
            if names[i] == "draft":
                assert cs == hs, row
            else:
                assert ce == he, (names[i], row)
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(cells)]
        assert min(gaps) >= 2, row
    values = [row.split() for row in rows]
    assert values[1][2:4] == ["123456.7", "1234567.8"] and values[1][7] == "123.45x"
    assert values[1][1] == "a-rather-long-draft-file-name-q4_k_m.gguf"
    titles = lines[1]  # the greedy / T=0.8 group titles sit over their two columns each
    g, s = titles.index("greedy"), titles.index("T=0.8")
    assert spans[6][0] <= g < spans[7][1] and spans[8][0] <= s < spans[9][1]
