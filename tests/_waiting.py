"""Waiting for an event in another process or task, which a test can only observe by asking
(a file appears, a server answers, a counter moves): ask until it holds, fail on a deadline.
The one place where the suite polls; the deadline is generous, so a busy machine is slower,
never wrong."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def _timed_out(what: str, timeout_s: float, last: Any) -> AssertionError:
    return AssertionError(f"timed out after {timeout_s:g} s waiting for {what}"
                          + ("" if last is None else f" (last: {last!r:.300})"))


async def wait_until(pred: Callable[[], Any], timeout_s: float = 5.0, what: str = "condition",
                     *, poll_s: float = 0.01) -> Any:
    """Ask ``pred()`` (a value or an awaitable) on the event loop until it is truthy and
    return that value; AssertionError naming ``what`` after ``timeout_s``. An exception from
    ``pred`` (a process that died, say) ends the wait at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout_s, value)
        await asyncio.sleep(poll_s)


def wait_until_sync(pred: Callable[[], Any], timeout_s: float = 5.0, what: str = "condition",
                    *, poll_s: float = 0.05) -> Any:
    """``wait_until`` for a test without an event loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout_s, value)
        time.sleep(poll_s)
