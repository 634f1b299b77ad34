"""The edge's aiohttp application: target-model verification and split-DNN tails over one
WebSocket per session.

``create_app(config)`` builds the app; the target model, its serving engine and the DNN
(``config.dnn_dir``) are opened in a ``cleanup_ctx`` and freed after the last session.
Serving (``AppRunner`` + ``TCPSite``) lives in ``cli.py``. Every LLM session is a sequence of
one shared llama.cpp context; the engine (``_engine.py``) batches the pending work of all
sessions into one decode per step, in one dedicated compute thread, so the event loop never
blocks. DNN tails run in the DNN service's own threads (``_dnn.py``).

Bad input never takes the server down: a malformed frame gets an ``error`` frame and the
socket stays open; a bug inside a session closes that session with ``error/internal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from aiohttp import WSMsgType, web

from edge_server._dnn import DnnEndpoint, DnnService, open_service
from edge_server._limits import SessionSlots, Slot
from edge_server.config import EdgeConfig
from ondevice.common import bearer, jsonout, wire

if TYPE_CHECKING:  # llama.cpp is loaded only by an edge with --model (a [dnn]-only install)
    from edge_server._engine import Engine, EngineSession
    from ondevice.common.llama_pool import LlamaPool
    from ondevice.common.llama_runtime import LlamaConfig, LlamaModel

MAX_SEED = 2**64 - 1  # the wire's largest unsigned integer (edge_server._engine.MAX_SEED)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class EdgeState:
    """What every handler shares; one per app."""

    config: EdgeConfig
    model: LlamaModel | None = None
    vocab_hash: str = ""
    n_ctx: int = 0  # the context llama.cpp gives each session (set when the model loads)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="edge-compute")
    )
    sessions: dict[str, EngineSession] = field(default_factory=dict)
    engine: Engine | None = None
    dnn: DnnService | None = None
    slots: SessionSlots = field(init=False)  # the session limits, held from before a build
    on_load_change: Callable[[], None] | None = None  # set by the advertiser

    def __post_init__(self) -> None:
        cfg = self.config
        self.slots = SessionSlots(cfg.max_sessions, cfg.max_sessions_per_client)
        self.n_ctx = cfg.n_ctx  # until the model is loaded and llama.cpp is asked

    def load_changed(self) -> None:
        if self.on_load_change is not None:
            self.on_load_change()

    async def run(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run a llama.cpp call in the compute thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @property
    def llama_config(self) -> LlamaConfig:
        from ondevice.common.llama_runtime import LlamaConfig

        cfg = self.config
        return LlamaConfig(n_ctx=cfg.kv_pool_tokens, n_batch=cfg.n_batch,
                           n_threads=cfg.n_threads, kv_type=cfg.kv_type,
                           n_gpu_layers=self.gpu_layers)

    @property
    def gpu_layers(self) -> int:
        """Layers to offload: the flag, else all of them when llama.cpp has a GPU backend."""
        if self.config.n_gpu_layers is not None:
            return self.config.n_gpu_layers
        from ondevice.common.llama_runtime import gpu_offload_supported

        return 1_000_000 if gpu_offload_supported() else 0

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt an ``open`` may carry: the limit, within the real context."""
        return min(self.config.max_prompt_tokens, self.n_ctx - 1)

    @property
    def open_sessions(self) -> int:
        """LLM sessions and DNN tasks open now."""
        return len(self.sessions) + (len(self.dnn.sessions) if self.dnn is not None else 0)

    @property
    def load(self) -> float:
        return self.open_sessions / self.config.max_sessions

    @property
    def capabilities(self) -> list[str]:
        return (["llm"] if self.model is not None else []) + (
            ["dnn"] if self.dnn is not None else [])

    @property
    def model_ids(self) -> list[str]:
        return ([self.model.model_id] if self.model is not None else []) + (
            [self.dnn.model_id] if self.dnn is not None else [])


STATE = web.AppKey("coinfer_edge_state", EdgeState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require ``Authorization: Bearer TOKEN`` when the edge has a token (constant-time check)."""
    token = request.app[STATE].config.token
    if token is not None:
        header = request.headers.get("Authorization", "")
        if not bearer.authorized(header, token):
            reason = ("missing bearer token" if bearer.bearer_token(header) is None
                      else "wrong bearer token")
            raise web.HTTPUnauthorized(
                text=jsonout.dumps({"error": "unauthorized", "message": reason}),
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="coinfer"'},
            )
    return await handler(request)


@web.middleware
async def delay_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Emulate a far edge: hold every HTTP reply (the WebSocket delays each frame itself)."""
    delay_ms = request.app[STATE].config.emulated_delay_ms
    if delay_ms > 0 and request.path != wire.WS_PATH:
        await asyncio.sleep(delay_ms / 1e3)
    return await handler(request)


async def _model_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    cfg = state.config
    pool: LlamaPool | None = None
    if cfg.model_path is not None:
        from edge_server._engine import Engine
        from ondevice.common.llama_pool import LlamaPool
        from ondevice.common.llama_runtime import LlamaModel

        gpu = state.gpu_layers
        state.model = await state.run(
            lambda: LlamaModel(cfg.model_path, n_gpu_layers=gpu))  # type: ignore[arg-type]
        state.vocab_hash = await state.run(state.model.vocab_hash)
        pool = await state.run(lambda: LlamaPool(
            state.model, n_seq=cfg.max_sessions, kv_tokens=cfg.kv_pool_tokens,  # type: ignore
            config=state.llama_config))
        # A session may hold --n-ctx tokens, as long as the shared pool has them.
        state.n_ctx = min(cfg.n_ctx, pool.kv_tokens)
        state.engine = Engine(pool, state.executor, scheduler=cfg.scheduler,
                              batch_window_ms=cfg.batch_window_ms,
                              prefill_chunk=cfg.prefill_chunk)
        await state.engine.__aenter__()
        log.info("serving %s (vocab %s, n_ctx %d per session, KV pool %d, %s scheduler, "
                 "%d GPU layers)", state.model.model_id, state.vocab_hash, state.n_ctx,
                 pool.kv_tokens, cfg.scheduler, min(gpu, state.model.n_layer + 1))
    if cfg.dnn_dir is not None:
        state.dnn = await state.run(open_service, cfg.dnn_dir, cfg.dnn_workers, cfg.dnn_threads)
    yield
    if state.engine is not None:
        for sid in list(state.sessions):
            await state.engine.async_close(state.sessions.pop(sid))
        await state.engine.__aexit__(None, None, None)
    if pool is not None:
        await state.run(pool.close)
    if state.model is not None:
        await state.run(state.model.close)
    if state.dnn is not None:
        await asyncio.to_thread(state.dnn.close)
    state.executor.shutdown(wait=True)


def _llama_backend() -> tuple[bool, str]:
    """(GPU offload available, llama.cpp's system info); (False, why) without llama.cpp."""
    try:
        from ondevice.common.llama_runtime import gpu_offload_supported, system_info
    except ImportError as exc:
        return False, f"no llama.cpp ({exc})"
    return gpu_offload_supported(), system_info()


async def handle_info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cfg = state.config
    model = state.model
    gpu_offload, sysinfo = _llama_backend()
    return web.json_response(dumps=jsonout.dumps, data={
            "protocol": wire.PROTOCOL_VERSION,
            "capabilities": state.capabilities,
            "model": model.model_id if model else None,
            "dnn": state.dnn.model_id if state.dnn else None,
            "dnn_splits": sorted(state.dnn.profile.splits) if state.dnn else [],
            "vocab_hash": state.vocab_hash,
            "n_vocab": model.n_vocab if model else 0,
            "n_ctx": state.n_ctx,
            "backend": {
                "gpu_offload": gpu_offload,
                "gpu_layers": (min(model.n_gpu_layers, model.n_layer + 1) if model else 0),
                "n_layer": model.n_layer if model else 0,
                "system_info": sysinfo,
            },
            "engine": ({**state.engine.stats(), "rss_mib": _rss_mib()}
                       if state.engine is not None else None),
            "sessions": state.open_sessions,
            "max_sessions": cfg.max_sessions,
            "auth": cfg.token is not None,
            "limits": {
                "max_draft_tokens": cfg.max_draft_tokens,
                "max_top_k": cfg.max_top_k,
                "max_prompt_tokens": state.max_prompt_tokens,
                "max_frame_bytes": cfg.max_frame_bytes,
                "max_packet_bytes": cfg.max_packet_bytes,
                "idle_timeout_s": cfg.idle_timeout_s,
                "max_sessions_per_client": cfg.max_sessions_per_client,
                "header_timeout_s": cfg.header_timeout_s,
                "max_pending_connections": cfg.max_pending_connections,
                "keepalive_timeout_s": cfg.keepalive_timeout_s,
            },
        }
    )


def _rss_mib() -> float | None:
    """This process's resident memory (Linux /proc), MiB."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def _check_ids(ids: np.ndarray, n_vocab: int, what: str) -> None:
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n_vocab):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise wire.WireError(
            "token-out-of-range", f"{what} holds token id {bad}, outside 0..{n_vocab - 1}"
        )


def _check_round(msg: wire.Round, cfg: EdgeConfig, n_vocab: int) -> None:
    k = msg.q_ids.shape[1] if msg.q_ids.ndim == 2 else 0
    if msg.draft.shape[0] > cfg.max_draft_tokens:
        raise wire.WireError(
            "draft-too-long",
            f"{msg.draft.shape[0]} drafted tokens; this edge verifies at most"
            f" {cfg.max_draft_tokens} per round",
        )
    if k > cfg.max_top_k:
        raise wire.WireError("bad-frame", f"top-k of {k} exceeds this edge's limit {cfg.max_top_k}")
    _check_ids(msg.draft, n_vocab, "draft")
    _check_ids(msg.q_ids, n_vocab, "q_ids")
    q = msg.q_probs
    if q.size and (not np.all(np.isfinite(q)) or q.min() < 0.0 or np.any(q.sum(axis=1) > 1.001)):
        raise wire.WireError("bad-frame", "q_probs must be finite, >= 0, and sum to <= 1 per row")


ERROR_CHARS = 300  # an error frame's message at most (client data quoted in it is cut)


def _quote(text: str, limit: int = 40) -> str:
    """``repr`` of client-supplied text, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _Connection:
    """One WebSocket: at most one open session on it, an LLM session or a DNN task.

    That session holds one place under the edge's session limits (``slot``), taken before
    the session is built and kept by the socket while it has a session. Opening another
    session on the socket replaces the open one and keeps its place. Every refusal (a frame
    that fails validation, ``too-many-sessions``) leaves the open session as it was: the old
    session is closed only once the new one is built.
    """

    def __init__(self, state: EdgeState, ws: web.WebSocketResponse, peer: str,
                 transport: asyncio.BaseTransport | None = None) -> None:
        self.state = state
        self.ws = ws
        self.peer = peer
        self.transport = transport
        self.sid: str | None = None
        self.session: EngineSession | None = None
        self.slot: Slot | None = None
        self._dnn: DnnEndpoint | None = None
        self._stretch: asyncio.Task[bool] | None = None  # a ``generate`` stretch streaming
        self._stop_stretch = False  # set by ``stop``: the stretch ends after its step

    @property
    def stretching(self) -> bool:
        """True while a ``generate`` stretch streams (it runs beside the frame reader)."""
        return self._stretch is not None and not self._stretch.done()

    async def end_stretch(self) -> None:
        """End the stretch in progress, if any, after its decode step, and wait for it."""
        if self._stretch is not None:
            self._stop_stretch = True
            await asyncio.wait([self._stretch])
            self._stretch = None

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
            log.exception("session %s failed", self.sid)
            try:
                await self.send(wire.Error("internal", f"{type(exc).__name__}: {exc}"))
            except ConnectionError:
                return False
            finally:
                await self.end_session()
        return True

    @property
    def dnn(self) -> DnnEndpoint:
        """This connection's DNN side (WireError when the edge serves no DNN)."""
        if self._dnn is None:
            if self.state.dnn is None:
                raise wire.WireError("unknown-model", "this edge serves no DNN (started "
                                     "without --dnn)")
            self._dnn = DnnEndpoint(self.state.dnn, owner=id(self), send=self.send,
                                    max_packet_bytes=self.state.config.max_packet_bytes)
        return self._dnn

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

    async def _drop_session(self) -> None:
        """Close the open session of either kind; the socket keeps its place."""
        if self._dnn is not None:
            self._dnn.close()
        if self.sid is None:
            return
        session = self.state.sessions.pop(self.sid, None)
        self.sid, self.session = None, None
        if session is not None and self.state.engine is not None:
            await self.state.engine.async_close(session)

    async def end_session(self) -> None:
        """Close the open session, if any, and give its place back."""
        had = self.slot is not None
        await self._drop_session()
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        if had:
            self.state.load_changed()

    async def send(self, msg: wire.Message) -> None:
        """Send one frame; ConnectionError when the device does not take it within
        ``send_timeout_s`` (it stopped reading): the socket is then aborted, so that the
        handler ends and the session's place is freed. An error frame's message is capped at
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
            if self.transport is not None:
                self.transport.abort()
            raise ConnectionError("the device stopped reading") from None

    def _session_for(self, sid: str) -> EngineSession:
        if self.session is None or sid != self.sid:
            raise wire.WireError("unknown-session",
                                 f"no open session {_quote(sid)} on this connection")
        return self.session

    async def handle_frame(self, data: bytes | str, t_in: float) -> None:
        """One frame as it came (``t_in`` its arrival, perf_counter s)."""
        if not isinstance(data, bytes):
            raise wire.WireError("bad-frame", "binary msgpack frames only")
        await self.handle(wire.decode(data), t_in)

    async def handle(self, msg: wire.Message, t_in: float) -> None:
        state, cfg = self.state, self.state.config
        if self.stretching:  # only stop and close until the stretch ends
            if isinstance(msg, wire.Stop):
                self._stop_stretch = True
                return
            if not isinstance(msg, wire.Close):
                raise wire.WireError("bad-frame", f"a {type(msg).__name__} frame while a "
                                     "generate stretch streams: send stop first")
            await self.end_stretch()
        if isinstance(msg, wire.Feature):
            await self.dnn.feature(msg, t_in)
        elif isinstance(msg, wire.Input):
            await self.dnn.input(msg, t_in)
        elif isinstance(msg, wire.DnnOpen):
            await self._dnn_open(msg)
        elif isinstance(msg, wire.Close) and self._dnn is not None and self._dnn.owns(
            msg.session
        ):
            await self.end_session()
        elif isinstance(msg, wire.Round):
            session = self._session_for(msg.session)
            assert state.model is not None
            _check_round(msg, cfg, state.model.n_vocab)
            accepted, token, step = await session.async_verify(msg)
            edge_ms = (time.perf_counter() - t_in) * 1e3
            await self.send(wire.Verdict(accepted, token, step.compute_ms, edge_ms,
                                         queue_ms=step.queue_ms, batch=step.batch,
                                         advise=step.advise_stream, ties=step.ties))
        elif isinstance(msg, wire.Open):
            await self._open(msg)
        elif isinstance(msg, wire.Generate):
            session = self._session_for(msg.session)
            if msg.max_tokens < 0:
                raise wire.WireError("bad-frame", "max_tokens must be >= 0")
            self._stop_stretch = False
            self._stretch = asyncio.create_task(self._run_stretch(session, msg.max_tokens))
        elif isinstance(msg, wire.Stop):
            pass  # no stretch in progress: it ended before the device's stop came
        elif isinstance(msg, wire.Close):
            self._session_for(msg.session)
            await self.end_session()
        else:
            raise wire.WireError("bad-frame", f"a device does not send {type(msg).__name__} frames")

    async def _dnn_open(self, msg: wire.DnnOpen) -> None:
        dnn = self.dnn  # unknown-model on an edge without --dnn
        dnn.check_open(msg)
        with self._admit():
            await self._drop_session()
            opened = dnn.start(msg)
        self.state.load_changed()
        await self.send(opened)

    def _check_open(self, msg: wire.Open) -> LlamaModel:
        """Raise the ``WireError`` this edge refuses ``msg`` with, if any; else return the
        target model. Changes nothing."""
        state = self.state
        if msg.version != wire.PROTOCOL_VERSION:
            raise wire.WireError(
                "protocol", f"device speaks protocol {msg.version}, edge {wire.PROTOCOL_VERSION}"
            )
        model = state.model
        if model is None:
            raise wire.WireError("bad-frame", "this edge serves no LLM (started without --model)")
        if msg.vocab_hash != state.vocab_hash:
            raise wire.WireError(
                "vocab-mismatch",
                f"draft {msg.draft_model!r} (vocabulary {msg.vocab_hash}) cannot be verified by"
                f" target {model.model_id!r} (vocabulary {state.vocab_hash})",
            )
        n = int(msg.prompt.shape[0])
        limit = state.max_prompt_tokens
        if n == 0 or n > limit:
            raise wire.WireError(
                "prompt-too-long" if n else "bad-frame",
                f"prompt of {n} tokens; this edge accepts 1..{limit}",
            )
        _check_ids(msg.prompt, model.n_vocab, "prompt")
        if not 0.0 <= msg.temperature <= 100.0 or msg.top_k < 1:
            raise wire.WireError("bad-frame", "temperature must be in [0, 100] and top_k >= 1")
        if not 0 <= msg.seed <= MAX_SEED:
            raise wire.WireError("bad-frame", f"seed must be in 0..2**64-1, got {msg.seed}")
        return model

    async def _open(self, msg: wire.Open) -> None:
        state = self.state
        model = self._check_open(msg)
        engine = state.engine
        assert engine is not None
        n = int(msg.prompt.shape[0])
        with self._admit():  # too-many-sessions first, then the KV pool
            why = engine.admit(n, state.n_ctx)
            if why is not None and self.session is None:
                raise wire.WireError("kv-full", why)
            if why is not None:  # only the replaced session's room lets the new one in
                await self._drop_session()
                why = engine.admit(n, state.n_ctx)
                if why is not None:
                    raise wire.WireError("kv-full", why)
            session = engine.open(msg.prompt.tolist(), temperature=msg.temperature,
                                  seed=msg.seed, n_ctx=state.n_ctx)
            try:
                await session.async_prefill()
                if self.ws.closed:  # the device left while its session was built
                    raise ConnectionResetError("the device left while its session was opened")
                await self._drop_session()  # the replaced one, now that the new one is built
            except BaseException:
                await engine.async_close(session)
                raise
            self.sid = secrets.token_hex(8)
            self.session = session
            state.sessions[self.sid] = session
        state.load_changed()
        await self.send(wire.Opened(self.sid, model.model_id, state.n_ctx, session.prefill_ms))

    async def _run_stretch(self, session: EngineSession, max_tokens: int) -> bool:
        """The stretch as a task beside the frame reader; when its connection is over (the
        device left or stopped reading) the socket is aborted, which ends the reader."""
        ok = await self.answer(self._generate(session, max_tokens))
        if not ok and self.transport is not None:
            self.transport.abort()
        return ok

    async def _generate(self, session: EngineSession, max_tokens: int) -> None:
        """Edge-only: the target generates alone and streams each token as it comes; the
        engine batches these steps with every other session's work. A ``stop`` ends it after
        the step in flight: that step's frame is the last (``done``)."""
        model = self.state.model
        assert model is not None
        for i in range(max_tokens):
            if self._stop_stretch:
                break
            token, step = await session.async_generate_one()
            done = model.is_eog(token) or i == max_tokens - 1 or self._stop_stretch
            await self.send(wire.Tokens(np.array([token], dtype=np.int32), done,
                                        step.compute_ms, step.queue_ms, step.batch,
                                        step.advise_stream, step.ties))
            if done:
                return
        await self.send(wire.Tokens(np.zeros(0, dtype=np.int32), True, 0.0))


async def handle_session(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE]
    cfg = state.config
    ws = web.WebSocketResponse(max_msg_size=cfg.max_frame_bytes, heartbeat=cfg.heartbeat_s)
    await ws.prepare(request)
    conn = _Connection(state, ws, request.remote or "?", request.transport)
    try:
        while not ws.closed:
            try:
                msg = await ws.receive(timeout=cfg.idle_timeout_s)
            except asyncio.TimeoutError:
                if conn.stretching:  # the device waits for the stretch; it is not idle
                    continue
                with contextlib.suppress(ConnectionError):
                    await conn.send(wire.Error("idle", f"no frame for {cfg.idle_timeout_s:g} s"))
                break
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                if not await conn.answer(conn.handle_frame(msg.data, time.perf_counter())):
                    break
            elif msg.type == WSMsgType.ERROR:
                # e.g. a frame over max_frame_bytes: aiohttp closes the socket with 1009.
                log.info("connection from %s: %s", conn.peer, ws.exception())
                break
            else:  # CLOSE, CLOSING, CLOSED
                break
    finally:
        await conn.end_stretch()
        await conn.end_session()
        if conn._dnn is not None:
            await conn._dnn.disconnect()
        if not ws.closed:
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                await asyncio.wait_for(ws.close(), cfg.send_timeout_s)
    return ws


def create_app(config: EdgeConfig) -> web.Application:
    """Build the edge application. The model is loaded when the app starts."""
    app = web.Application(
        client_max_size=config.max_frame_bytes, middlewares=[auth_middleware, delay_middleware]
    )
    app[STATE] = EdgeState(config=config)
    app.cleanup_ctx.append(_model_ctx)
    app.router.add_get(wire.INFO_PATH, handle_info)
    app.router.add_get(wire.WS_PATH, handle_session)
    return app
