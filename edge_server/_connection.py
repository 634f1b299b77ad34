"""One device's WebSocket: the frame reader, the dispatch of frames to their handlers, and the
life of the session open on it.

``Connection.async_serve`` reads frames until the socket ends; each decoded frame goes to the
handler its type names in ``HANDLERS``: the LLM frames to ``_llm_session``, the DNN frames to
``_dnn_session``, ``close`` and ``stop`` (either kind) here. A handler's failure is answered by
``answer``: a ``WireError`` with its error frame (the socket stays open), a bug with
``internal`` (the session ends, the server goes on).

The session's life is this class's alone (``async_open``, ``async_drop_session``,
``async_end_session``): it takes the session's place under the limits before anything is
built, registers the session in ``EdgeState.sessions`` (what ``/v1/info``, the advertised load
and the shutdown count), and closes it on a ``close`` frame, a replacing open, a bug, or the
device leaving (``async_close``).

While the edge drains (``_drain``) a new session is refused with ``error/draining``. Once
the drain's moves begin, the open session moves (``async_move``): the drain wakes the reader
from its wait for the device's next frame (``wake``), so ``move`` goes out at once when the
device is between frames, or takes the place of the answer to a frame that just came, which
is not acted on. The socket stays open for the device to read it; frames that still name the
moved session are dropped unanswered (the device reads ``move`` first, and nothing stale is
left on a socket it may keep), until the device closes the socket or the drain's end closes
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from edge_server._dnn_session import DNN_HANDLERS
from edge_server._limits import Slot
from edge_server._llm_session import LLM_HANDLERS
from edge_server._session import FrameHandler, Session, quote
from ondevice.common import wire

if TYPE_CHECKING:
    from edge_server._dnn import DnnEndpoint
    from edge_server._state import EdgeState

log = logging.getLogger(__name__)

class _Woken(Exception):
    """``Connection.wake`` cut the wait for the next frame short."""


ERROR_CHARS = 300  # an error frame's message at most (client data quoted in it is cut)


async def _close(conn: Connection, msg: wire.Close, t_in: float) -> None:
    """End the open session of either kind (no reply)."""
    if conn.session is None or conn.session.sid != msg.session:
        raise wire.WireError("unknown-session",
                             f"no open session {quote(msg.session)} on this connection")
    await conn.async_end_session()


async def _stop(conn: Connection, msg: wire.Stop, t_in: float) -> None:
    """End the session's stream after its step; nothing when none streams (it ended before
    the device's ``stop`` came)."""
    if conn.session is not None:
        conn.session.request_stop()


HANDLERS: dict[type, FrameHandler] = {
    **LLM_HANDLERS,
    **DNN_HANDLERS,
    wire.Close: _close,
    wire.Stop: _stop,
}


class Connection:
    """One WebSocket: at most one open session on it, an LLM session or a DNN task.

    That session holds one place under the edge's session limits (``slot``), taken before
    the session is built and kept by the socket while it has a session. Opening another
    session on the socket replaces the open one and keeps its place. Every refusal (a frame
    that fails validation, ``too-many-sessions``) leaves the open session as it was: the old
    session is closed only once the new one is built (or when the build needs its room).

    ``async with`` it around ``async_serve``: leaving ends the session, frees its place,
    runs what the session kinds registered with ``on_close`` and closes the socket.
    """

    def __init__(self, state: EdgeState, ws: web.WebSocketResponse, peer: str,
                 transport: asyncio.BaseTransport | None = None) -> None:
        self.state = state
        self.ws = ws
        self.peer = peer
        self.transport = transport
        self.session: Session | None = None
        self.slot: Slot | None = None
        self.dnn: DnnEndpoint | None = None  # the DNN side (``_dnn_session``), on first use
        self._on_close = contextlib.AsyncExitStack()
        self._ended = asyncio.Event()  # set once ``async_close`` has run
        self.moved: str | None = None  # the session this connection moved (``async_move``)
        self._receiver: asyncio.Task[object] | None = None  # waiting in ``_receive``
        self._woken = False  # ``wake`` cancelled that wait

    async def __aenter__(self) -> Connection:
        self.state.connections.add(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.async_close()

    @property
    def ended(self) -> bool:
        """True once the connection is over (``async_close`` ran)."""
        return self._ended.is_set()

    @property
    def streaming(self) -> bool:
        """True while the open session streams frames of its own (it is not idle)."""
        return self.session is not None and self.session.streaming

    # -- frames out -------------------------------------------------------------------------

    async def send(self, msg: wire.Message) -> None:
        """Send one frame; ConnectionError when the device does not take it within
        ``send_timeout_s`` (it stopped reading): the socket is then aborted, so that the
        reader ends and the session's place is freed. An error frame's message is capped at
        ERROR_CHARS: it never echoes unbounded client data."""
        cfg = self.state.config
        if cfg.emulated_delay_ms > 0:
            await asyncio.sleep(cfg.emulated_delay_ms / 1e3)
        if isinstance(msg, wire.Error) and len(msg.message) > ERROR_CHARS:
            msg = wire.Error(msg.code, msg.message[:ERROR_CHARS] + "...")
        try:
            await asyncio.wait_for(self.ws.send_bytes(wire.encode(msg)), cfg.send_timeout_s)
        except asyncio.TimeoutError:
            log.info("connection from %s: a frame not taken in %g s; closing it", self.peer,
                     cfg.send_timeout_s)
            self.abort()
            raise ConnectionError("the device stopped reading") from None

    def abort(self) -> None:
        """Drop the socket at once (the device left or stopped reading); the reader ends."""
        if self.transport is not None:
            self.transport.abort()

    async def answer(self, work: Awaitable[None]) -> bool:
        """Run one frame's work, answering its failure: a ``WireError`` with its error frame,
        a bug with ``internal`` (the session ends, the server goes on). False once the
        connection is over (the device left or stopped reading)."""
        try:
            await work
        except wire.WireError as exc:
            try:
                await self.send(wire.Error(exc.code, exc.message))
            except ConnectionError:
                return False
        except ConnectionError:  # the device left while we answered it
            return False
        except Exception as exc:  # a bug in one session must not end the server
            if self.ws.closed:
                return False
            log.exception("session %s failed", self.session.sid if self.session else None)
            try:
                await self.send(wire.Error("internal", f"{type(exc).__name__}: {exc}"))
            except ConnectionError:
                return False
            finally:
                await self.async_end_session()
        return True

    # -- frames in --------------------------------------------------------------------------

    async def async_serve(self) -> None:
        """Read and answer frames until the socket ends, the device is idle for
        ``idle_timeout_s`` (an ``idle`` error frame), the open session moves (the edge
        drains) or the connection is over."""
        cfg = self.state.config
        ws = self.ws
        drain = self.state.drain
        while not ws.closed:
            if drain.moving and self.session is not None:
                await self.async_move()
            try:
                msg = await self._receive(cfg.idle_timeout_s)
            except _Woken:
                continue  # the drain's moves began: the loop's top moves the session
            except asyncio.TimeoutError:
                if self.streaming:  # the device waits for the stream; it is not idle
                    continue
                with contextlib.suppress(ConnectionError):
                    await self.send(wire.Error("idle", f"no frame for {cfg.idle_timeout_s:g} s"))
                return
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                if not await self.answer(self.handle_frame(msg.data, time.perf_counter())):
                    return
            elif msg.type == WSMsgType.ERROR:
                # e.g. a frame over max_frame_bytes: aiohttp closes the socket with 1009.
                log.info("connection from %s: %s", self.peer, ws.exception())
                return
            else:  # CLOSE, CLOSING, CLOSED
                return

    async def _receive(self, timeout_s: float) -> WSMessage:
        """The device's next frame, as ``ws.receive``; raises ``_Woken`` when ``wake`` cut
        the wait short (a frame not read yet stays unread). No extra task per frame: the
        drain interrupts this one wait instead of every read racing it."""
        self._receiver = asyncio.current_task()
        try:
            return await self.ws.receive(timeout=timeout_s)
        except asyncio.CancelledError:
            if not self._woken:
                raise
            self._woken = False
            task = asyncio.current_task()
            if hasattr(task, "uncancel"):  # Python 3.11+ counts cancellations; 3.10 does not
                task.uncancel()
            raise _Woken from None
        finally:
            self._receiver = None

    def wake(self) -> None:
        """Cut short the wait for the device's next frame, if the connection is waiting and
        has a session open (the drain's moves began: ``_drain.Drain.begin_moves``)."""
        if self._receiver is not None and self.session is not None and not self._woken:
            self._woken = True
            self._receiver.cancel()

    async def handle_frame(self, data: bytes | str, t_in: float) -> None:
        """One frame as it came (``t_in`` its arrival, perf_counter s)."""
        if not isinstance(data, bytes):
            raise wire.WireError("bad-frame", "binary msgpack frames only")
        await self.handle(wire.decode(data), t_in)

    async def handle(self, msg: wire.Message, t_in: float) -> None:
        """Dispatch one decoded frame to its handler. While the session streams only
        ``stop`` and ``close`` are taken; a ``close`` ends the stream first. Once the drain's
        moves began, a frame for the open session other than ``stop`` and ``close`` is not
        acted on: the session moves (``async_move``)."""
        session = self.session
        sid = getattr(msg, "session", None)
        if sid is not None and sid == self.moved:
            return  # the device reads ``move`` before any answer: none is due
        if (self.state.drain.moving and session is not None and sid == session.sid
                and not isinstance(msg, wire.Close | wire.Stop)):
            await self.async_move()
            return
        if session is not None and session.streaming:
            if isinstance(msg, wire.Close):
                await session.async_end_stream()
            elif not isinstance(msg, wire.Stop):
                raise wire.WireError("bad-frame", f"a {type(msg).__name__} frame while a "
                                     "generate stretch streams: send stop first")
        handler = HANDLERS.get(type(msg))
        if handler is None:
            raise wire.WireError("bad-frame", f"a device does not send {type(msg).__name__} frames")
        await handler(self, msg, t_in)

    # -- the session's life -----------------------------------------------------------------

    @contextlib.contextmanager
    def _admit(self) -> Iterator[Slot]:
        """The place for a session about to open on this socket: the socket's own when it
        holds one (the new session will replace the open one), else a new reservation, taken
        before the body awaits anything (``too-many-sessions`` when none is free). If the
        body raises (a refusal, a failed build, the device gone, cancellation) a new
        reservation is given back; otherwise the socket keeps it."""
        if self.slot is not None:
            yield self.slot
            return
        slot = self.state.slots.reserve(self.peer)
        try:
            yield slot
        except BaseException:
            slot.release()
            raise
        self.slot = slot

    async def async_open(self, build: Callable[[], Awaitable[Session]]) -> Session:
        """Open the session ``build`` makes in place of the open one, if any, and register
        it. The place is taken first; ``build`` raises a refusal, frees what it made when it
        fails, and may drop the open session itself when it needs its room
        (``async_drop_session``); otherwise the open one is closed once the new one is built.
        Raises ConnectionResetError when the device left meanwhile, and refuses with
        ``draining`` while the edge drains."""
        drain = self.state.drain
        if drain.active:
            left = drain.seconds_left(time.monotonic())
            raise wire.WireError("draining", f"this edge is draining (going out of service in "
                                 f"at most {left:.0f} s): open the session on another edge")
        with self._admit():
            session = await build()
            try:
                if self.ws.closed:
                    raise ConnectionResetError("the device left while its session was opened")
                await self.async_drop_session()
            except BaseException:
                await session.async_close()
                raise
            self.session = session
            self.state.sessions[session.sid] = session
        self.state.load_changed()
        return session

    async def async_drop_session(self) -> None:
        """Close the open session, if any; the socket keeps its place."""
        session, self.session = self.session, None
        if session is not None:
            self.state.sessions.pop(session.sid, None)
            await session.async_close()

    async def async_end_session(self) -> None:
        """Close the open session, if any, and give its place back."""
        had = self.slot is not None
        await self.async_drop_session()
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        if had:
            self.state.load_changed()

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` when the connection closes, after its session ended (last
        registered, first run)."""
        self._on_close.push_async_callback(callback)

    async def async_move(self, reason: str = "draining") -> None:
        """Move the open session to another edge: end its stream after its step, send
        ``move`` (the device resumes elsewhere from what it committed; nothing it sent after
        its last answer was acted on) and end the session; the socket stays open."""
        session = self.session
        if session is None:
            return
        await session.async_end_stream()
        self.moved = session.sid
        self.state.drain.moved += 1
        with contextlib.suppress(ConnectionError):
            await self.send(wire.Move(session.sid, reason))
        await self.async_end_session()
        log.info("session %s of %s moved (%s)", session.sid, self.peer, reason)

    async def async_going_away(self) -> None:
        """Close the socket with 1001 (the edge stops) and wait until the connection ended."""
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError):
                await self.ws.close(code=WSCloseCode.GOING_AWAY)
        await self._ended.wait()

    async def async_close(self) -> None:
        """End the session, free its place, run the ``on_close`` callbacks and close the
        socket. Idempotent."""
        try:
            await self.async_end_session()
            await self._on_close.aclose()
            if not self.ws.closed:
                with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                    await asyncio.wait_for(self.ws.close(), self.state.config.send_timeout_s)
        finally:
            self.state.connections.discard(self)
            self._ended.set()
            self.state.drain.changed.set()
