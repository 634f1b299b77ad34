"""Draining an edge: taking it out of service without losing or repeating a device's work.

``edge-server`` starts a drain on its first SIGTERM or SIGINT, ``POST /v1/drain`` starts the
same one (``EdgeState.start_drain``, idempotent); a second signal stops at once. From its
start ``t0``, with ``T`` the drain timeout (``EdgeConfig.drain_timeout_s``):

1. at once, new sessions (``open``, ``dnn_open``) are refused with ``error/draining``
   (``Connection.async_open``), ``GET /ready`` answers 503, and, when sessions are open, the
   advertiser (``EdgeState.on_drain``, set by the CLI) announces the TXT record with
   ``state=draining`` and then unregisters;
2. the open sessions go on until they end;
3. at ``move_at = t0 + T - grace`` (``grace = min(MOVE_GRACE_S, T / 4)``) every session still
   open moves (``begin_moves``: each connection is woken from its wait for the next frame):
   its connection ends a ``generate`` stretch after its step
   (the last ``tokens`` frame has ``done``), sends ``move`` (at once when the device is between
   frames, else in place of acting on the frame that came) and ends the session
   (``Connection.async_move``); the socket stays open for the device to read ``move``;
4. once no session is left and every device that was moved has closed its socket, and at the
   latest at ``end_at = t0 + T - close`` (``close = min(CLOSE_S, grace / 2)``), every socket
   still open is closed with 1001 (going away), and aborted when its close does not complete
   within ``close``; then ``finished`` is set and the CLI stops the server and exits 0: within
   ``T`` of the drain's start, plus the shutdown.

With no session open a drain ends at once, so stopping an idle edge stays fast. A device whose
socket is idle or half gone holds nothing up past ``end_at``: its socket is aborted then.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_server._state import EdgeState

MOVE_GRACE_S = 2.0  # s: moves start this long before the drain timeout (at most T / 4)
CLOSE_S = 0.5  # s: a socket's close handshake at the end of a drain, before it is aborted
CHECK_S = 0.25  # s: the longest wait between two looks at the open sessions


@dataclass(slots=True)
class Drain:
    """The drain of one edge (one per ``EdgeState``); times are ``time.monotonic()`` s.

    Runs on the event loop only. ``started_s`` is None while the edge serves.
    """

    timeout_s: float
    started_s: float | None = None
    begun: asyncio.Event = field(default_factory=asyncio.Event)  # the drain started
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # the edge may stop now
    # a session opened or ended, or a connection ended: the drain looks again
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None  # ``async_drain``, while it runs
    moved: int = 0  # sessions told to move (``Connection.async_move``)
    moving: bool = False  # the open sessions are to move (step 3)

    @property
    def active(self) -> bool:
        return self.started_s is not None

    @property
    def state(self) -> str:
        """``serving`` or ``draining``: what ``/v1/info``, ``/health`` and ``/ready`` say."""
        return "draining" if self.active else "serving"

    @property
    def grace_s(self) -> float:
        return min(MOVE_GRACE_S, self.timeout_s / 4)

    @property
    def close_s(self) -> float:
        return min(CLOSE_S, self.grace_s / 2)

    @property
    def move_at(self) -> float:
        assert self.started_s is not None
        return self.started_s + self.timeout_s - self.grace_s

    @property
    def end_at(self) -> float:
        assert self.started_s is not None
        return self.started_s + self.timeout_s - self.close_s

    def seconds_left(self, now_s: float) -> float | None:
        """Seconds until the drain's timeout (never below 0); None while the edge serves."""
        if self.started_s is None:
            return None
        return max(self.started_s + self.timeout_s - now_s, 0.0)

    def begin_moves(self, state: EdgeState) -> None:
        """Step 3: from now on every open session moves; wake the connections waiting for
        their device's next frame (``Connection.wake``), so that those between frames move
        at once."""
        self.moving = True
        for conn in list(state.connections):
            conn.wake()


async def async_drain(state: EdgeState) -> None:
    """Steps 1 to 4 of the module docstring for ``state``'s drain, which has started; sets
    ``finished`` however it ends (the CLI also cancels it on a second signal)."""
    drain = state.drain
    announcing = None
    if state.sessions and state.on_drain is not None:
        announcing = asyncio.create_task(state.on_drain())
    try:
        await _until(state, drain.move_at, lambda: not state.sessions)
        if state.sessions:
            drain.begin_moves(state)
            await _until(state, drain.end_at, lambda: not state.sessions and not any(
                c.moved is not None for c in state.connections))
        if announcing is not None:  # the goodbye goes out before the edge stops
            await asyncio.wait([announcing], timeout=max(drain.end_at - time.monotonic(), 0.0))
        await async_close_connections(state, drain.close_s)
    finally:
        if announcing is not None and not announcing.done():
            announcing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcing
        drain.finished.set()


async def _until(state: EdgeState, until_s: float, done: Callable[[], bool]) -> None:
    """Return once ``done()``, asked as sessions and connections end, or at ``until_s``
    (monotonic s)."""
    changed = state.drain.changed
    while not done():
        left = until_s - time.monotonic()
        if left <= 0:
            return
        changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(changed.wait(), min(left, CHECK_S))


async def async_close_connections(state: EdgeState, timeout_s: float) -> None:
    """Close every socket still open (1001, going away) and wait for their connections to
    end; abort those that have not within ``timeout_s``."""
    conns = list(state.connections)
    if not conns:
        return
    tasks = [asyncio.create_task(c.async_going_away()) for c in conns]
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for conn in conns:
        if not conn.ended:
            conn.abort()
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def abort_connections(state: EdgeState) -> None:
    """Drop every socket at once (a second signal: stop now)."""
    for conn in list(state.connections):
        conn.abort()


__all__ = ["Drain", "abort_connections", "async_close_connections", "async_drain"]
