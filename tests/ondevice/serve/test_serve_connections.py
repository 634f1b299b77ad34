"""``ondevice serve``'s connection guards, as the edge's: a request head must arrive within
``--header-timeout``, at most ``--max-pending-connections`` may be on their way at once (more
get 503 at once), and running out of file descriptors is one log line, not a flood, and
passes. A real serve process on 127.0.0.1, raw sockets as the slow clients."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from _edge import EdgeProc
from _serve import ServeProc, serve

FLAGS = ("--n-ctx", "512", "--threads", "1")
SLOW_HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"  # and never the blank line


def _connect(s: ServeProc) -> socket.socket:
    u = urlsplit(s.url)
    return socket.create_connection((u.hostname, u.port), timeout=60)


def _read_to_eof(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (60 s at most); a reset (the
    server closed with our bytes unread) ends it too."""
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            out += chunk
    return out


def test_slow_request_heads_are_closed_and_capped(fixture_models: tuple[Path, Path],
                                                   edge: EdgeProc) -> None:
    """Ten connections send half a request head: four are pending (closed at the 5 s
    timeout, without an answer), six are refused at once (503, or a reset that overtook it)."""
    with serve(fixture_models[1], *FLAGS, "--header-timeout", "5",
               "--max-pending-connections", "4", edge=edge.url) as s:
        socks = []
        for _ in range(10):
            sock = _connect(s)
            sock.sendall(SLOW_HEAD)
            socks.append(sock)
        t0 = time.monotonic()

        def end(sock: socket.socket) -> tuple[float, bytes]:
            answer = _read_to_eof(sock)
            return time.monotonic() - t0, answer

        with ThreadPoolExecutor(len(socks)) as pool:
            ends = list(pool.map(end, socks))
        for sock in socks:
            sock.close()
        refused = [a for t, a in ends if t < 4.0]
        timed_out = [a for t, a in ends if t >= 4.0]
        assert len(refused) == 6 and len(timed_out) == 4, ends
        assert all(a == b"" or a.startswith(b"HTTP/1.1 503") for a in refused), ends
        assert timed_out == [b""] * 4, ends
        assert s.health()["status"] == "ok"


def _health_ok(s: ServeProc) -> bool:
    try:
        with urllib.request.urlopen(s.url + "/health", timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_out_of_file_descriptors_is_one_line_and_passes(fixture_models: tuple[Path, Path],
                                                        edge: EdgeProc) -> None:
    """The serve process's open-file limit is lowered to just above what it uses; 40 silent
    connections then make accept() fail with EMFILE until the head timeout frees them."""
    with serve(fixture_models[1], *FLAGS, "--header-timeout", "1", edge=edge.url) as s:
        pid = s.proc.pid
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 6, in_use + 6))
        socks = [_connect(s) for _ in range(40)]  # the kernel completes them (backlog)
        try:
            for sock in socks:
                assert _read_to_eof(sock) == b""  # each is accepted, then closed at 1 s
        finally:
            for sock in socks:
                sock.close()
        deadline = time.monotonic() + 60
        while not _health_ok(s):
            assert time.monotonic() < deadline, "serve did not answer after the flood"
            time.sleep(0.2)
        err = s.stderr()
    assert err.count("cannot accept connections") == 1, err[-3000:]
    assert "socket.accept() out of system resource" not in err
    assert "Traceback" not in err and len(err) < 10_000, err[-3000:]
