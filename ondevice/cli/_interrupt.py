"""Ctrl-C for long commands: the first one asks the command to wind down, the second aborts.

``run_interruptible(main)`` runs ``main(stop)`` under ``asyncio.run`` with a SIGINT handler on
the event loop. The first Ctrl-C sets ``stop``: the command finishes the step in flight (a
llama.cpp call is never abandoned half-way), stops, and still prints what it has (the text so
far and the report). A second Ctrl-C cancels the command's task; the llama.cpp runtime's lock
keeps native memory alive until a call in flight returns, so even then nothing is freed under
a worker thread. Either way the command exits with ``EXIT_INTERRUPTED`` (130, as a shell
reports a SIGINT death).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ondevice.cli._exit import EXIT_INTERRUPTED

T = TypeVar("T")

__all__ = ["EXIT_INTERRUPTED", "Aborted", "run_interruptible"]



class Aborted(Exception):
    """A second Ctrl-C cancelled the command before it could wind down."""


def run_interruptible(main: Callable[[asyncio.Event], Awaitable[T]], *,
                      what: str = "stopping") -> tuple[T, bool]:
    """``(main(stop)'s result, whether Ctrl-C was pressed)``; raises Aborted on a second
    Ctrl-C. ``what`` completes the line printed on the first one ("^C: <what> ...")."""

    async def wrapper() -> tuple[T, bool]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_sigint() -> None:
            if stop.is_set():
                print("\n^C again: aborting", file=sys.stderr, flush=True)
                task.cancel()
                return
            stop.set()
            print(f"\n^C: {what} after the current step (Ctrl-C again to abort)",
                  file=sys.stderr, flush=True)

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            result = await main(stop)
        except asyncio.CancelledError:
            raise Aborted from None
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        return result, stop.is_set()

    return asyncio.run(wrapper())
