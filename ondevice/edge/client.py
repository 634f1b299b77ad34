"""The device's side of one edge session: an ``async with`` WebSocket client.

Every frame goes out through ``_send``: encoded once, its size told to ``on_bytes``, a
transport failure mapped; a request and its reply go through ``_request``. Any transport
failure (refused connection, reset, closed socket, timeout) surfaces as ``EdgeUnavailable``
so the generation loop can degrade to the draft alone; an ``error`` frame from the edge
surfaces as ``wire.EdgeError``.

One socket carries sequential sessions: ``async_end_session`` ends an LLM session with a
``close`` frame (no reply) and the next ``async_open`` starts another on the same socket.
``EdgePool`` keeps such sockets between generations, one per edge, and closes every socket
it opened when it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from ondevice.common import wire

DEFAULT_TIMEOUT_S = 15.0  # s; a verify round on a loaded edge stays well under this
MOVE_READ_S = 1.0  # s: after a failed send, how long to look for a ``move`` already received


class EdgeUnavailable(ConnectionError):
    """The edge cannot be reached or stopped answering."""


class EdgeMoved(EdgeUnavailable):
    """The edge answered a frame with ``move`` (it is draining) and ended the session: the
    frame was not acted on; resume on another edge from the committed sequence. A subclass
    of EdgeUnavailable, so every cleanup of a lost edge applies; the caller tells the two
    apart to go elsewhere without counting the edge as failed."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"edge {url} asked the session to move ({reason or 'no reason'})")
        self.url = url
        self.reason = reason


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is this machine (127.0.0.0/8, ::1 or localhost)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_problem(url: str, *, token: str | None, fingerprint: str | None,
                      allow_plaintext_token: bool = False) -> str | None:
    """Why connecting to ``url`` this way would be unsafe, or None.

    - A TLS pin (``fingerprint``) on an ``http://`` URL would be silently meaningless.
    - A bearer token sent over ``http://`` to another host travels in the clear; allowed only
      with ``allow_plaintext_token`` (loopback never leaves the machine, so it is fine).
    """
    plain = not url.startswith("https://")
    if plain and fingerprint:
        return (f"a TLS certificate pin was given for {url}, which is not https://: use the "
                "https:// URL of an edge started with --tls-cert/--tls-key, or drop the pin")
    if plain and token and not allow_plaintext_token and not is_loopback_url(url):
        return (f"the bearer token would travel in plaintext to {url}: use https:// (edge-server"
                " --tls-cert/--tls-key), or accept the risk with --allow-plaintext-token")
    return None


def client_ssl(url: str, fingerprint: str | None) -> aiohttp.Fingerprint | bool:
    """TLS setting for ``url``: pin the certificate's SHA-256 (hex) when given.

    A pinned self-signed edge certificate is accepted only if its DER SHA-256 matches; without
    a fingerprint an ``https`` edge must present a certificate the system trusts.
    """
    if url.startswith("https://") and fingerprint:
        return aiohttp.Fingerprint(bytes.fromhex(fingerprint.replace(":", "")))
    return True


class EdgeClient:
    """One session on an edge. ``on_bytes(tx, rx)`` is told of every frame's size."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_frame_bytes: int = 1 << 22,
        on_bytes: Callable[[int, int], None] | None = None,
        token: str | None = None,
        fingerprint: str | None = None,
        allow_plaintext_token: bool = False,
    ) -> None:
        """Raises ``wire.EdgeError("insecure")`` when ``transport_problem`` finds one."""
        problem = transport_problem(url, token=token, fingerprint=fingerprint,
                                    allow_plaintext_token=allow_plaintext_token)
        if problem is not None:
            raise wire.EdgeError("insecure", problem)
        self.url = url.rstrip("/")
        self.token = token
        self.fingerprint = fingerprint
        self.timeout_s = timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.on_bytes = on_bytes
        self.session_id: str | None = None
        self.opened: wire.Opened | None = None
        self.info: dict[str, Any] | None = None  # the last /v1/info answer
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        # True while a request's reply (or an edge-only stream) has not been read to its end:
        # the socket then holds frames a next session must not see, so it is not reused.
        self._in_flight = False
        self._stretch = False  # inside async_generate, before its last chunk
        self._stop_sent = False

    async def __aenter__(self) -> EdgeClient:
        return await self.async_connect()

    async def async_connect(self) -> EdgeClient:
        """Open the HTTP session and the WebSocket (``async with`` does this); a client kept
        across tasks connects with this and ends with ``async_close``. Raises
        EdgeUnavailable, or EdgeError for a refused token or certificate."""
        self._http = aiohttp.ClientSession()
        ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            self._ws = await asyncio.wait_for(
                self._http.ws_connect(
                    ws_url + wire.WS_PATH,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                    max_msg_size=self.max_frame_bytes,
                    headers=headers,
                    ssl=client_ssl(self.url, self.fingerprint),
                ),
                self.timeout_s,
            )
        except aiohttp.WSServerHandshakeError as exc:
            await self.async_close()
            if exc.status == 401:
                raise wire.EdgeError(
                    "unauthorized",
                    f"edge {self.url} refused the bearer token"
                    " (set --token-file or COINFER_TOKEN)",
                ) from exc
            raise EdgeUnavailable(f"edge {self.url} refused the session: {exc}") from exc
        except aiohttp.ServerFingerprintMismatch as exc:
            await self.async_close()
            raise wire.EdgeError(
                "tls-fingerprint",
                f"edge {self.url} presented a certificate with sha256 {exc.got.hex()},"
                f" expected {exc.expected.hex()}",
            ) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            await self.async_close()
            raise wire.EdgeError(
                "tls-fingerprint",
                f"edge {self.url} presented a certificate this device does not trust ({exc});"
                " pin it with --edge-fingerprint or let discovery supply the advertised one",
            ) from exc
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            await self.async_close()
            hint = ""
            if isinstance(exc, aiohttp.ServerDisconnectedError) and self.url.startswith("http:"):
                hint = " (if the edge serves TLS, use its https:// URL)"
            raise EdgeUnavailable(f"cannot reach edge {self.url}: {exc or type(exc).__name__}"
                                  f"{hint}") from exc
        return self

    async def async_info(self) -> dict[str, Any]:
        """The edge's ``GET /v1/info`` (model, context, limits), over this client's session."""
        if self._http is None:
            raise self._not_connected()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            async with self._http.get(
                self.url + wire.INFO_PATH, headers=headers,
                ssl=client_ssl(self.url, self.fingerprint),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as resp:
                if resp.status != 200:
                    raise EdgeUnavailable(f"edge {self.url} answered /v1/info with {resp.status}")
                info = await resp.json()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            raise EdgeUnavailable(f"edge {self.url}: /v1/info failed: {exc}") from exc
        if not isinstance(info, dict):
            raise EdgeUnavailable(f"edge {self.url}: /v1/info is not a JSON object")
        self.info = info
        return info

    @property
    def reusable(self) -> bool:
        """True when the socket is open and no reply is pending: a next session may use it."""
        return self._ws is not None and not self._ws.closed and not self._in_flight

    async def async_end_session(self) -> None:
        """End the open LLM session with a ``close`` frame (the edge sends no reply) and keep
        the socket for the next ``async_open``. Raises EdgeUnavailable if the socket is dead."""
        if self.session_id is not None:
            sid, self.session_id, self.opened = self.session_id, None, None
            await self._send(wire.Close(sid))

    async def __aexit__(self, *exc: object) -> None:
        await self.async_close()

    async def async_close(self) -> None:
        """Close the session and the socket. Idempotent; never raises for a dead edge."""
        sid, self.session_id = self.session_id, None
        if sid is not None:
            # A dead edge cannot be told goodbye: closing must never raise.
            with contextlib.suppress(EdgeUnavailable, asyncio.TimeoutError):
                await asyncio.wait_for(self._send(wire.Close(sid)), 1.0)
        ws, http = self._ws, self._http
        self._ws, self._http = None, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(ws.close(), 2.0)
        if http is not None:
            await http.close()

    def _not_connected(self) -> EdgeUnavailable:
        return EdgeUnavailable(f"connection to {self.url} is closed (or was never opened: "
                               "async with the client)")

    def _open_session(self, first: str) -> str:
        """The open session's id. EdgeUnavailable when the socket is closed, RuntimeError
        when it carries no session (``first`` opens one)."""
        if self._ws is None or self._ws.closed:
            raise self._not_connected()
        if self.session_id is None:
            raise RuntimeError(f"no session open on edge {self.url}: call {first} first")
        return self.session_id

    async def _send(self, msg: wire.Message) -> int:
        """Send one frame; its size in bytes. EdgeUnavailable when the socket is closed or
        the send fails."""
        if self._ws is None or self._ws.closed:
            raise self._not_connected()
        frame = wire.encode(msg)
        if self.on_bytes:
            self.on_bytes(len(frame), 0)
        try:
            await self._ws.send_bytes(frame)
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            raise await self._lost_or_moved(exc) from exc
        return len(frame)

    async def _lost_or_moved(self, exc: BaseException) -> EdgeUnavailable:
        """What a failed send means: EdgeMoved when the edge had answered ``move`` and closed
        the socket before this frame went out (a draining edge does that to a device between
        frames; the ``move`` waits in the socket's buffer), else a lost edge."""
        ws = self._ws
        if ws is not None and self.session_id is not None:
            with contextlib.suppress(asyncio.TimeoutError, aiohttp.ClientError, OSError,
                                     RuntimeError, wire.WireError):
                msg = await ws.receive(timeout=MOVE_READ_S)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    reply = wire.decode(msg.data)
                    if isinstance(reply, wire.Move):
                        return self._moved(reply)
        return EdgeUnavailable(f"lost edge {self.url}: {exc}")

    async def _receive(self) -> wire.Message:
        if self._ws is None:
            raise self._not_connected()
        try:
            msg = await self._ws.receive(timeout=self.timeout_s)
        except asyncio.TimeoutError as exc:
            raise EdgeUnavailable(
                f"edge {self.url} did not answer in {self.timeout_s:g} s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise EdgeUnavailable(f"lost edge {self.url}: {exc}") from exc
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise EdgeUnavailable(f"edge {self.url} closed the session ({msg.type.name})")
        if self.on_bytes:
            self.on_bytes(0, len(msg.data))
        reply = wire.decode(msg.data)
        if isinstance(reply, wire.Error):
            raise wire.EdgeError(reply.code, reply.message)
        if isinstance(reply, wire.Move):
            raise self._moved(reply)
        return reply

    def _moved(self, reply: wire.Move) -> EdgeMoved:
        """The edge ended the session with ``move``: forget it; what to raise."""
        self.session_id = None
        self._in_flight = self._stretch = False
        return EdgeMoved(self.url, reply.reason)

    async def _request(self, msg: wire.Message, expect: type) -> wire.Message:
        self._in_flight = True
        await self._send(msg)
        reply = await self._receive()
        while isinstance(reply, wire.Result) and expect is not wire.Result:
            reply = await self._receive()  # late answers of a DNN task already closed
        self._in_flight = False
        if not isinstance(reply, expect):
            raise wire.EdgeError("bad-frame", f"expected {expect.__name__}, got {reply!r}")
        return reply

    async def async_open(
        self,
        prompt: list[int],
        *,
        vocab_hash: str,
        draft_model: str,
        temperature: float,
        seed: int,
        top_k: int,
    ) -> wire.Opened:
        """Start a session: the edge prefills ``prompt`` (all but its last token)."""
        opened = await self._request(
            wire.Open(
                prompt=np.asarray(prompt, dtype=np.int32),
                vocab_hash=vocab_hash,
                draft_model=draft_model,
                temperature=temperature,
                seed=seed,
                top_k=top_k,
            ),
            wire.Opened,
        )
        assert isinstance(opened, wire.Opened)
        self.session_id = opened.session
        self.opened = opened
        return opened

    async def async_round(
        self, draft: np.ndarray, q_ids: np.ndarray, q_probs: np.ndarray
    ) -> wire.Verdict:
        """Verify one drafted round. Shapes: ``draft [n]``, ``q_ids/q_probs [n, k]``."""
        sid = self._open_session("async_open")
        verdict = await self._request(wire.Round(sid, draft, q_ids, q_probs), wire.Verdict)
        assert isinstance(verdict, wire.Verdict)
        return verdict

    async def async_generate(self, max_tokens: int) -> AsyncIterator[wire.Tokens]:
        """Let the target generate alone; yields token chunks until one has ``done``.
        ``async_stop`` while iterating makes the edge end the stretch after its decode step."""
        sid = self._open_session("async_open")
        self._in_flight = True  # until the chunk with ``done``: a caller may stop reading
        self._stretch = True
        self._stop_sent = False
        await self._send(wire.Generate(sid, max_tokens))
        while True:
            reply = await self._receive()
            if not isinstance(reply, wire.Tokens):
                raise wire.EdgeError("bad-frame", f"expected Tokens, got {reply!r}")
            if reply.done:
                self._in_flight = self._stretch = False
            yield reply
            if reply.done:
                return

    async def async_stop(self) -> None:
        """Ask the edge to end the stretch in progress after its decode step (one ``stop``
        frame however often it is called); the stretch's chunks then end with the edge's
        last frame. Nothing happens outside a stretch."""
        if self._stretch and not self._stop_sent and self.session_id is not None:
            self._stop_sent = True
            await self._send(wire.Stop(self.session_id))

    # -- split inference (ENACHI): one DNN session per task ---------------------------------

    async def async_dnn_open(self, msg: wire.DnnOpen) -> wire.DnnOpened:
        """Open a task; the edge answers with this device's bandwidth share."""
        opened = await self._request(msg, wire.DnnOpened)
        assert isinstance(opened, wire.DnnOpened)
        self.session_id = opened.session
        return opened

    async def async_feature(self, packet: bytes, *, evaluate: bool) -> int:
        """Send one feature packet of the open task (no wait); returns the frame's size."""
        sid = self._open_session("async_dnn_open")
        return await self._send(wire.Feature(sid, packet, evaluate))

    async def async_input(self, offset: int, data: bytes) -> None:
        """Send a slice of the raw input of the open (split 0) task (no wait)."""
        sid = self._open_session("async_dnn_open")
        await self._send(wire.Input(sid, offset, data))

    async def async_result(self) -> wire.Result:
        """The next ``result`` frame of the open task (late ones of closed tasks skipped)."""
        while True:
            reply = await self._receive()
            if not isinstance(reply, wire.Result):
                raise wire.EdgeError("bad-frame", f"expected Result, got {type(reply).__name__}")
            if reply.session == self.session_id:
                return reply

    async def async_dnn_close(self) -> None:
        """End the open task (no reply)."""
        if self.session_id is not None:
            sid, self.session_id = self.session_id, None
            await self._send(wire.Close(sid))


class EdgePool:
    """Open edge sockets kept between generations: at most one idle ``EdgeClient`` per edge.

    ``acquire`` hands out a kept socket when there is a reusable one, else connects; the
    caller opens a session on it and gives it back with ``release`` (which ends the session
    with a ``close`` frame and keeps the socket if it is clean) or ``discard`` (after any
    failure, or a stream it stopped reading). A kept socket the edge closed meanwhile (its
    idle timeout or heartbeat, a restart) fails at the next use; ``acquire`` says whether the
    socket was kept, so the caller can retry once on a fresh one.

    The pool owns every socket it opened until it closes it: ``async with`` the pool, or call
    the idempotent ``async_close``, which closes them all, kept or handed out (each session
    ends; the edge frees its place).
    """

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        allow_plaintext_token: bool = False,
        on_bytes: Callable[[int, int], None] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.token = token
        self.allow_plaintext_token = allow_plaintext_token
        self.on_bytes = on_bytes
        self._idle: dict[tuple[str, str | None], EdgeClient] = {}
        self._open: set[EdgeClient] = set()  # every socket opened and not closed yet
        self.connects = 0  # sockets opened over the pool's life (for reports and tests)
        self.reuses = 0  # sessions that ran on a kept socket

    async def __aenter__(self) -> EdgePool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.async_close()

    @property
    def open_sockets(self) -> int:
        """Sockets the pool opened and has not closed, kept or handed out."""
        return len(self._open)

    async def acquire(self, url: str, fingerprint: str | None) -> tuple[EdgeClient, bool]:
        """``(client, kept)``: a connected client for ``url``, and whether it is a kept socket.
        Raises what ``EdgeClient`` raises (``wire.EdgeError("insecure")``, EdgeUnavailable)."""
        client = self._idle.pop((url.rstrip("/"), fingerprint), None)
        if client is not None and client.reusable:
            self.reuses += 1
            return client, True
        if client is not None:
            await self._close(client)
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(EdgeClient(
                url, timeout_s=self.timeout_s, on_bytes=self.on_bytes, token=self.token,
                fingerprint=fingerprint, allow_plaintext_token=self.allow_plaintext_token))
            self._open.add(client)
            stack.pop_all()  # the pool owns it now: closed by discard, release or async_close
        self.connects += 1
        return client, False

    async def release(self, client: EdgeClient) -> None:
        """End the client's session and keep its socket when clean; else close it."""
        if not client.reusable:
            await self._close(client)
            return
        try:
            await client.async_end_session()
        except EdgeUnavailable:
            await self._close(client)
            return
        key = (client.url, client.fingerprint)
        old = self._idle.pop(key, None)
        self._idle[key] = client
        if old is not None and old is not client:
            await self._close(old)

    async def discard(self, client: EdgeClient) -> None:
        """Close the client (its session ends with it). Never raises for a dead edge."""
        await self._close(client)

    async def _close(self, client: EdgeClient) -> None:
        self._open.discard(client)
        await client.async_close()

    async def async_close(self) -> None:
        """Close every socket the pool opened, kept or handed out. Idempotent."""
        self._idle.clear()
        while self._open:
            await self._close(self._open.pop())
