"""The ``ondevice`` command line: one module per command, `main` the entry point.

``main`` imports the command line only when called, inside its Ctrl-C guard: a Ctrl-C while
Python is still loading the modules exits 130 with one line, never a traceback. Before that
guard there is only the interpreter's own start and this file's three small imports (a few
milliseconds no Python program can guard). Once the
command has returned (called as the program, ``argv`` None), a late Ctrl-C is ignored, so
that the interpreter's own shutdown (joining a worker thread in a llama.cpp call) cannot
print a traceback either.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from ondevice.cli._exit import EXIT_INTERRUPTED


def _exit_now(status: int) -> None:
    """Flush and leave with ``status``. After a Ctrl-C that interrupted a C extension's own
    Python code (a Cython module's import runs some through ``PyRun_String``), CPython would
    end the process with SIGINT on a normal exit (status -2, not 130) even though the
    ``KeyboardInterrupt`` was handled; nothing is running yet that needs a cleanup."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    """Run ``ondevice ARGV``; the exit status (130 after Ctrl-C, at any moment)."""
    try:
        from ondevice.cli.main import main as run

        status = run(argv)
    except KeyboardInterrupt:  # before a command's own Ctrl-C handling began (importing)
        print("\nondevice: interrupted", file=sys.stderr)
        if argv is None:
            _exit_now(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    if argv is None:  # the process's own command line: it exits next (not a caller's test)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


__all__ = ["main"]
