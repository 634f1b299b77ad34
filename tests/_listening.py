"""Test helper: a real server process, started and awaited until it says where it listens.

``edge-server`` and ``ondevice serve`` both print ``... listening on URL`` on stdout once they
serve; ``listening`` runs one, waits for that line, and stops it on exit (SIGTERM, then
SIGKILL). Its stderr goes to a log file the tests read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server told its port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Listening:
    proc: subprocess.Popen
    url: str  # the URL it printed
    log_path: Path  # its stderr


@contextlib.contextmanager
def listening(cmd: list[str], *, what: str, startup_s: float, stop_s: float,
              on_line: Callable[[str], None] | None = None) -> Iterator[Listening]:
    """Run ``cmd``; yield once it printed ``listening on URL`` (RuntimeError naming ``what``
    and its log when it exits first or takes over ``startup_s``). ``on_line`` then hears every
    later stdout line (a thread reads them). On exit SIGTERM, SIGKILL after ``stop_s``."""
    fd, log_name = tempfile.mkstemp(prefix=f"{what.replace(' ', '-')}-", suffix=".log")
    log_file = os.fdopen(fd, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True)
    pump: threading.Thread | None = None
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + startup_s
        url = None
        while url is None:
            line = proc.stdout.readline()
            if not line:
                log_file.flush()
                raise RuntimeError(f"{what} exited ({proc.wait()}): {Path(log_name).read_text()}")
            if "listening on" in line:
                url = line.strip().rsplit(" ", 1)[-1]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start")
        if on_line is not None:
            stdout, hear = proc.stdout, on_line

            def read() -> None:
                for x in stdout:
                    hear(x.rstrip("\n"))

            pump = threading.Thread(target=read, daemon=True)
            pump.start()
        yield Listening(proc, url, Path(log_name))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if pump is not None:
            pump.join(5)  # it reads to the end of the output of a process that has ended
        log_file.close()
        if proc.stdout:
            proc.stdout.close()
