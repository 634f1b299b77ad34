"""Safety nets for the hw tests: fail a test that leaks threads, child processes or tasks,
or blocks the event loop; plus shared fixtures."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

import pytest

# A callback holding the loop longer than this fails the test. Generous because CI and the
# development machine share two cores with compilers; a blocking serial read would hold
# the loop for its full timeout (>= 0.2 s in these tests) every time, so still shows.
SLOW_CALLBACK_S = 0.5


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.add(int(pid))
    return out


@pytest.fixture(autouse=True)
def no_leaks():
    threads_before = set(threading.enumerate())
    children_before = _children()
    yield
    deadline = time.monotonic() + 3.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        children = _children() - children_before
        if not (leaked or children) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"
    assert not children, f"test leaked child processes: {sorted(children)}"


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Executing"):
            self.messages.append(msg)


@pytest.fixture(autouse=True)
async def loop_guard(no_leaks):
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_S
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    tasks_before = asyncio.all_tasks()
    try:
        yield
    finally:
        logger.removeHandler(handler)
    leaked = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
    for t in leaked:
        t.cancel()
    assert not leaked, f"test leaked tasks: {leaked}"
    assert not handler.messages, f"event loop blocked: {handler.messages}"


@pytest.fixture
def pty_path(tmp_path):
    """A stable device path in a temp dir, like /dev/rfcomm0."""
    return str(tmp_path / "ttyMETER")

