"""Run an ``edge-server`` as a child process on this machine (the demo and the benchmarks).

The child gets its own session, so a Ctrl-C in the terminal reaches only the parent, which
stops the child with SIGTERM (the edge then unregisters from zeroconf and frees its models).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence

STARTUP_S = 120.0  # s: loading a large target can take this long on a slow disk
STOP_S = 15.0  # s: SIGTERM, then SIGKILL after this long


async def spawn_edge(
    args: Sequence[str], *, core: int | None = None, quiet: bool = False,
    startup_s: float = STARTUP_S, prefix: Sequence[str] = (),
) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``edge-server ARGS``; return the process and the URL it prints once listening
    (its stdout is then the caller's to read or drain).

    ``core`` pins the child (and every thread it starts) to one CPU; ``quiet`` drops its
    stderr; ``prefix`` runs it inside something that execs it (``ip netns exec NS``).
    Raises RuntimeError if it exits or stays silent past ``startup_s`` (the child is then
    killed).
    """
    code = ("import os, runpy, sys; "
            + (f"os.sched_setaffinity(0, {{{core}}}); " if core is not None else "")
            + "sys.argv = ['edge-server'] + sys.argv[1:]; "
            "runpy.run_module('edge_server.cli', run_name='__main__')")
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-c", code, *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL if quiet else None, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + startup_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"edge-server did not start within {startup_s:g} s")
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=left)
            if not line:
                raise RuntimeError(f"edge-server exited with status {await proc.wait()}")
            text = line.decode(errors="replace").strip()
            if "listening on" in text:
                return proc, text.rsplit(" ", 1)[-1]
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise


async def stop_edge(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM (the edge drains: at once when no session is open), SIGKILL after ``STOP_S``;
    its exit status. Idempotent."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=STOP_S)
        except asyncio.TimeoutError:
            proc.kill()
    return await proc.wait()


@contextlib.asynccontextmanager
async def edge_child(
    args: Sequence[str], *, core: int | None = None, quiet: bool = False,
    startup_s: float = STARTUP_S, prefix: Sequence[str] = (),
) -> AsyncIterator[str]:
    """Start ``edge-server ARGS`` (``spawn_edge``); yield the URL it prints once listening;
    stop it on exit (``stop_edge``)."""
    proc, url = await spawn_edge(args, core=core, quiet=quiet, startup_s=startup_s,
                                 prefix=prefix)
    try:
        yield url
    finally:
        await stop_edge(proc)
