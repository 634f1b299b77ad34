"""Connection-level guards of an HTTP server (the edge's and ``ondevice serve``'s), below
aiohttp's request handling.

aiohttp bounds the size of a request head (8190-byte lines, 128 headers) but not the time it
takes to arrive: a client that sends its head one byte at a time holds a connection for as
long as it likes. ``HeadGuard`` wraps the protocol aiohttp makes for each connection
(``_GuardedProtocol``, an ``asyncio.Protocol`` that forwards every call) and

- closes a connection that has not completed its first request head (the blank line that
  ends it) ``timeout_s`` after it was accepted (after the TLS handshake, with TLS);
- keeps at most ``max_pending`` connections in that state: one accepted beyond them is
  answered ``503`` and closed at once, without reaching aiohttp.

Later request heads on a kept-alive connection are bounded by aiohttp's own keep-alive
timeout (``keepalive_timeout`` of the runner), which closes a connection that has not
completed its next request that long after the previous response.

``GuardedSite`` is aiohttp's ``TCPSite`` with the guard in front of the runner's protocol
factory. ``OneLineBadRequests`` turns aiohttp's report of a request it cannot parse (a 400:
line too long, too many headers, bad request line) from an ERROR with a traceback into one
WARNING line; ``http_logger(name)`` is the logger, with that filter, that the runner gives
aiohttp (aiohttp's own loggers are left alone).

When the process runs out of file descriptors, asyncio's accept loop reports
"socket.accept() out of system resource" with a traceback every time it retries (each
second, per listening socket). ``limit_accept_errors(loop)`` makes that one WARNING line per
``interval_s`` saying how often it happened and what to do.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger(__name__)

ACCEPT_ERROR_INTERVAL_S = 60.0

_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")  # CRLF; a bare-LF end counts too (refused: 400, closed)
_BUSY_BODY = b"too many connections are sending their request head; try again\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class HeadGuard:
    """Bounds on connections that have not yet completed their first request head.

    ``pending`` counts them now. Each must complete it within ``timeout_s`` seconds of being
    accepted; at most ``max_pending`` may be pending at once.
    """

    def __init__(self, *, timeout_s: float, max_pending: int) -> None:
        if not timeout_s > 0 or max_pending < 1:
            raise ValueError("the head timeout must be > 0 and max_pending >= 1")
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.pending = 0

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that guards what ``make`` makes."""
        return lambda: _GuardedProtocol(self, make)


class _GuardedProtocol(asyncio.Protocol):
    """One connection: forwards every event to the protocol ``make`` returns, which is made
    only for a connection the guard admits, and closes the connection if its first request
    head does not complete in time."""

    def __init__(self, guard: HeadGuard, make: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make = make
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pending = False
        self._tail = b""  # the last bytes seen, to find a head end split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        guard = self._guard
        if guard.pending >= guard.max_pending:
            log.info("refused a connection from %s: %d connections are still sending their "
                     "request head", _peer(transport), guard.pending)
            transport.write(_BUSY)
            transport.close()
            return
        guard.pending += 1
        self._pending = True
        self._timer = asyncio.get_running_loop().call_later(guard.timeout_s, self._expired)
        self._inner = self._make()
        self._inner.connection_made(transport)

    def _head_done(self) -> None:
        """The connection is no longer pending (head complete, or gone)."""
        if self._pending:
            self._pending = False
            self._guard.pending -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _ends_head(self, data: bytes) -> bool:
        buf = self._tail + data
        if not self._tail:  # blank lines before a request line do not end a head
            buf = buf.lstrip(b"\r\n")
        if any(end in buf for end in _HEAD_ENDS):
            return True
        self._tail = buf[-3:]
        return False

    def _expired(self) -> None:
        self._timer = None
        if self._pending and self._transport is not None:
            log.info("closed a connection from %s: no complete request head within %g s",
                     _peer(self._transport), self._guard.timeout_s)
            self._head_done()
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._pending and self._ends_head(data):
            self._head_done()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        if self._inner is not None:
            self._inner.connection_lost(exc)
        self._inner = self._transport = None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


class GuardedSite(web.BaseSite):
    """A TCP site, as aiohttp's ``TCPSite``, whose connections pass through ``guard``."""

    __slots__ = ("_bound_port", "_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, guard: HeadGuard,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._guard = guard
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one picked, for port 0, once started)."""
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host or '0.0.0.0'}:{self.port}"

    async def start(self) -> None:
        """Listen (OSError, e.g. EADDRINUSE, when the address cannot be bound)."""
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(server), self._host, self._port,
            ssl=self._ssl_context, backlog=self._backlog,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


class OneLineBadRequests(logging.Filter):
    """A record carrying aiohttp's ``HttpProcessingError`` (a request it could not parse and
    answered 400) becomes one WARNING line without traceback; other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = " ".join(str(exc.message).split())
            if len(reason) > 200:
                reason = reason[:200] + "..."
            what = record.getMessage()
            record.msg, record.args = "%s: %d %s", (what, exc.code, reason)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def http_logger(name: str) -> logging.Logger:
    """The logger a server hands aiohttp's request handlers (``logger=`` of the runner)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, OneLineBadRequests) for f in logger.filters):
        logger.addFilter(OneLineBadRequests())
    return logger


class _AcceptErrors:
    """A loop exception handler: accept failures for want of a resource become one line per
    ``interval_s``; everything else goes to the handler that was there before."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, previous: Any, interval_s: float, logger: logging.Logger) -> None:
        self.previous = previous
        self.interval_s = interval_s
        self.log = logger
        self.count = 0
        self.last_s: float | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != self.MESSAGE:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.count += 1
        now = time.monotonic()
        if self.last_s is not None and now - self.last_s < self.interval_s:
            return
        exc = context.get("exception")
        what = getattr(exc, "strerror", None) or str(exc or "no resource")
        self.log.warning("cannot accept connections: %s (%d time(s) since the last report; "
                         "asyncio retries every second). Raise the open-file limit (ulimit -n, "
                         "systemd LimitNOFILE=) or lower --max-pending-connections",
                         what, self.count)
        self.count, self.last_s = 0, now


def limit_accept_errors(loop: asyncio.AbstractEventLoop, *,
                        interval_s: float = ACCEPT_ERROR_INTERVAL_S,
                        logger: logging.Logger = log) -> None:
    """Report ``loop``'s accept failures (out of file descriptors or memory) in one line per
    ``interval_s`` instead of a traceback per retry."""
    loop.set_exception_handler(_AcceptErrors(loop.get_exception_handler(), interval_s, logger))
