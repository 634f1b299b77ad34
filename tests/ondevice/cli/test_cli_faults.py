"""Faults and mistakes on the device's command line get an honest answer.

Every command runs as a real subprocess (``python -m ondevice.cli``) against real files, real
edges and real pseudo-terminals; usage errors must exit 2, runtime failures 1, Ctrl-C 130,
never with a traceback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _edge import EdgeProc, Reference, edge_server

from ondevice.edge.client import transport_problem

FP = "ab" * 32  # a well-formed SHA-256


def cli(*args: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ondevice.cli", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


def one_line_usage_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "Unclosed" not in done.stderr, done.stderr
    for w in words:
        assert w in done.stderr, (w, done.stderr)


@pytest.fixture(scope="module")
def draft(fixture_models: tuple[Path, Path]) -> str:
    return str(fixture_models[1])


def gen(draft: str, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return cli("generate", "--draft", draft, "--n-ctx", "512", "--threads", "1", *args, **kw)


# -- TLS pin and token over http -------------------------------------------------------------

def test_pin_on_http_edge_is_refused(draft: str, edge: EdgeProc, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret")
    done = gen(draft, "--edge", edge.url, "--no-discover", "--edge-fingerprint", FP,
               "--token-file", str(token), "--prompt", "hi", "--max-tokens", "4")
    one_line_usage_error(done, "not https://")


def test_token_in_plaintext_only_to_loopback_or_when_allowed() -> None:
    assert transport_problem("http://192.168.1.20:8470", token="t", fingerprint=None)
    assert "plaintext" in transport_problem("http://edge.lan:8470", token="t", fingerprint=None)
    assert transport_problem("http://192.168.1.20:8470", token="t", fingerprint=None,
                             allow_plaintext_token=True) is None
    for url in ("http://127.0.0.1:8470", "http://localhost:1", "http://[::1]:8470",
                "https://192.168.1.20:8470"):
        assert transport_problem(url, token="t", fingerprint=None) is None, url
    assert transport_problem("http://192.168.1.20:8470", token=None, fingerprint=None) is None
    assert transport_problem("https://192.168.1.20:8470", token="t", fingerprint=FP) is None


@pytest.mark.parametrize("bad", ["zz", "ab" * 16, "ab" * 32 + "cd"])
def test_malformed_fingerprint_is_one_line(draft: str, bad: str) -> None:
    done = gen(draft, "--edge", "https://127.0.0.1:9", "--no-discover", "--edge-fingerprint",
               bad, "--prompt", "hi")
    one_line_usage_error(done, "--edge-fingerprint", "64 hex digits")


def test_fingerprint_colons_and_upper_case_are_accepted() -> None:
    from ondevice.common.argtypes import fingerprint

    assert fingerprint(":".join(["AB"] * 32)) == FP


# -- values accepted without a word -----------------------------------------------------------

@pytest.mark.parametrize(("args", "flag"), [
    (("--max-tokens", "0"), "--max-tokens"),
    (("--power-budget", "-3"), "--power-budget"),
    (("--temperature", "-1"), "--temperature"),
    (("--seed", "-1"), "--seed"),
    (("--gamma", "0"), "--gamma"),
    (("--token-file", "/nonexistent/token"), "--token-file"),
    (("--interface", "10.99.99.99"), "--interface 10.99.99.99"),
])
def test_generate_values_out_of_range_are_usage_errors(draft: str, args: tuple[str, ...],
                                                       flag: str) -> None:
    done = gen(draft, "--no-discover", "--prompt", "hi", *args)
    one_line_usage_error(done, flag)


def test_empty_prompt_is_a_usage_error(draft: str) -> None:
    one_line_usage_error(gen(draft, "--no-discover", "--prompt", "  "), "--prompt")


def test_other_commands_values_out_of_range_are_usage_errors() -> None:
    one_line_usage_error(cli("meter", "--meter", "sim", "--seconds", "-1"), "--seconds")
    one_line_usage_error(cli("discover", "--interface", "10.99.99.99", "--timeout", "0.5"),
                         "not an IPv4 address of this host")
    one_line_usage_error(cli("discover", "--timeout", "0"), "--timeout")


# -- Ctrl-C -------------------------------------------------------------------------------

def _start(draft: str, *args: str, json_report: bool = True
           ) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a long generation; return once it logged that it is generating."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondevice.cli", "-v", "generate", "--draft", draft, "--n-ctx",
         "4096", "--threads", "1", "--prompt", "Hello", "--max-tokens", "4000",
         *(["--json"] if json_report else []), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if not line or "generating up to" in line:
            break
    assert "generating up to" in lines[-1], "".join(lines)
    return proc, lines


def _read_stdout(proc: subprocess.Popen[str], n_bytes: int) -> bytes:
    """Block until the process has written ``n_bytes`` to stdout (or closed it); read from
    the pipe itself, so ``communicate`` later returns exactly the rest."""
    assert proc.stdout is not None
    got = b""
    while len(got) < n_bytes:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.parametrize("policy", ["device-only", "fixed"])
def test_ctrl_c_keeps_the_text_and_exits_130(draft: str, edge: EdgeProc,
                                             policy: str) -> None:
    # SIGINT once the text has begun (events, not time: a busy machine is only slower), at
    # different points of the run, each a fresh process
    for n_bytes in (1, 40, 160):
        proc, _ = _start(draft, "--policy", policy, "--edge", edge.url, "--no-discover",
                         json_report=False)
        first = _read_stdout(proc, n_bytes)
        assert len(first) >= n_bytes, first  # 4000 tokens cannot have ended yet
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert (first + rest.encode()).strip(), "the text so far is kept"
        line = re.search(r"tokens +(\d+) in [\d.]+ s = [\d.]+ tokens/s \((\w+)\)", err)
        assert line is not None, err  # the report, on stderr
        assert line[2] == "interrupted" and 0 < int(line[1]) < 4000, line[0]


def test_second_ctrl_c_aborts_without_a_crash(draft: str) -> None:
    for delay_s in (0.1, 0.5, 1.0):
        proc, _ = _start(draft, "--policy", "device-only", "--no-discover")
        time.sleep(delay_s)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (proc.returncode, err)  # -11 would be a segfault
        assert "Traceback" not in err, err


# -- a meter that never answers -------------------------------------------------------------

def test_meter_without_reading_is_not_a_measurement(draft: str) -> None:
    done = gen(draft, "--no-discover", "--prompt", "hi", "--max-tokens", "4",
               "--meter", "um25c:/dev/nonexistent-meter", "--json")
    assert done.returncode == 1, done.stderr
    assert "no reading" in done.stderr and "--meter-optional" in done.stderr
    assert "Traceback" not in done.stderr
    done = gen(draft, "--no-discover", "--prompt", "hi", "--max-tokens", "4",
               "--meter", "um25c:/dev/nonexistent-meter", "--meter-optional", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["energy_j"] is None and report["energy_source"] == "none"
    assert report["j_per_token"] is None and "nonexistent-meter" in report["energy_note"]
    assert "energy        none:" in done.stderr


def test_meter_command_says_why_and_fails() -> None:
    done = cli("meter", "--meter", "um25c:/dev/nonexistent-meter", "--seconds", "3.5")
    assert done.returncode == 1, done.stderr
    assert "no reading" in done.stdout and "nonexistent-meter" in done.stdout
    assert "retrying" in done.stdout  # the live line said so while it tried
    assert "Traceback" not in done.stderr
    # why, said once while it tries and once in the summary; not on every line, not logged too
    why = done.stdout.strip().splitlines()[-1].split("(", 1)[1].rstrip(")")
    assert why and (done.stdout + done.stderr).count(why) == 2, (done.stdout, done.stderr)
    assert done.stdout.count("retrying") >= 2


# -- fallbacks that change the output's source ----------------------------------------------

def test_gamma_is_clamped_to_the_edge_limit(fixture_models: tuple[Path, Path]) -> None:
    target, draft = fixture_models
    with edge_server(target, "--max-draft", "3", "--n-ctx", "512") as e:
        done = gen(str(draft), "--edge", e.url, "--no-discover", "--prompt", "Hello world",
                   "--max-tokens", "24", "--policy", "fixed", "--gamma", "100", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["degraded"] and report["draft_limit"] == 3
    assert report["mean_drafted"] <= 3 and "at most 3 tokens per round" in done.stderr
    ref = Reference(target)
    try:
        assert report["tokens"] == ref.greedy("Hello world", 24)  # still the target's text
    finally:
        ref.close()


def test_prompt_over_the_edge_limit(fixture_models: tuple[Path, Path]) -> None:
    target, draft = fixture_models
    prompt = "one two three four five six seven eight nine ten eleven twelve"
    with edge_server(target, "--max-prompt", "4", "--n-ctx", "512") as e:
        for policy in ("fixed", "edge-only"):
            done = gen(str(draft), "--edge", e.url, "--no-discover", "--prompt", prompt,
                       "--max-tokens", "4", "--policy", policy, "--json")
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout.strip().splitlines()[-1])
            assert report["degraded"] and "prompt" in report["degraded_reason"]
            assert "--max-prompt" in report["degraded_reason"]  # the fix is named
            assert "--require-edge" in done.stderr
            done = gen(str(draft), "--edge", e.url, "--no-discover", "--prompt", prompt,
                       "--max-tokens", "4", "--policy", policy, "--require-edge")
            assert done.returncode == 1 and "prompt" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr


def test_http_to_an_https_edge(fixture_models: tuple[Path, Path],
                               tmp_path: Path) -> None:
    from _tls import self_signed

    target, draft = fixture_models
    cert, key = self_signed(tmp_path, "edge")
    with edge_server(target, "--tls-cert", str(cert), "--tls-key", str(key)) as e:
        plain = e.url.replace("https://", "http://")
        done = gen(str(draft), "--edge", plain, "--no-discover", "--prompt", "hi",
                   "--max-tokens", "4", "--require-edge", "--edge-timeout", "5")
        assert done.returncode == 1, done.stderr
        assert "https://" in done.stderr and "Traceback" not in done.stderr
        done = gen(str(draft), "--edge", plain, "--no-discover", "--prompt", "hi",
                   "--max-tokens", "4", "--edge-timeout", "5", "--json")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert done.returncode == 0 and report["degraded"]
        assert "https://" in report["degraded_reason"]


# -- an explicit --edge does not browse zeroconf --------------------------------------------

def test_explicit_edge_does_not_browse(draft: str, edge: EdgeProc) -> None:
    """Without --discover, --edge URL opens no zeroconf socket at all: a join on any
    interface (lo included) would show in /proc/net/igmp while the command runs."""
    from _mdns_guard import mdns_memberships

    before = sum(mdns_memberships().values())
    proc = subprocess.Popen(
        # Deliberately without --no-discover/--interface: that no browsing starts is the test
        # (and the autouse mDNS guard would fail it on a real interface).
        [sys.executable, "-m", "ondevice.cli", "generate", "--draft", draft, "--edge", edge.url,
         "--prompt", "Hello", "--max-tokens", "300", "--n-ctx", "512", "--threads", "1",
         "--policy", "fixed", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    joined = 0
    while proc.poll() is None:
        joined = max(joined, sum(mdns_memberships().values()) - before)
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert joined <= 0, "zeroconf was started for an explicit --edge"
    assert not json.loads(out.strip().splitlines()[-1])["degraded"]


def test_classify_ctrl_c_reports_the_tasks_done(digits_dnn: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondevice.cli", "classify", "--dnn", str(digits_dnn),
         "--no-discover", "--policy", "device-only", "--dataset", "digits", "--limit", "200",
         "--period-ms", "100", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    seen = 0
    deadline = time.monotonic() + 120
    while seen < 3 and time.monotonic() < deadline:  # task lines go to stderr with --json
        line = proc.stderr.readline()
        if not line:
            break
        seen += line.startswith("task ")
    assert seen >= 3, "classify never reported a task"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["summary"]["interrupted"] is True
    assert 3 <= len(report["tasks"]) < 200
