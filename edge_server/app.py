"""The edge's aiohttp application: target-model verification and split-DNN tails over one
WebSocket per session.

``create_app(config)`` builds the app; the target model, its serving engine and the DNN
(``config.dnn_dir``) are opened in a ``cleanup_ctx`` and freed after the last session.
Serving (``AppRunner`` + ``TCPSite``) lives in ``cli.py``. Every LLM session is a sequence of
one shared llama.cpp context; the engine (``_engine.py``) batches the pending work of all
sessions into one decode per step, in one dedicated compute thread, so the event loop never
blocks. DNN tails run in the DNN service's own threads (``_dnn.py``).

Each WebSocket is one ``_connection.Connection``: it dispatches every frame to the handler of
its type (LLM frames in ``_llm_session.py``, DNN frames in ``_dnn_session.py``) and owns the
life of the one session open on it. Bad input never takes the server down: a malformed frame
gets an ``error`` frame and the socket stays open; a bug inside a session closes that session
with ``error/internal``.

``GET /metrics`` serves the edge's Prometheus metrics (``_metrics.EdgeMetrics``, owned by the
``EdgeState``); like every route it needs the token, unless ``config.metrics_public``.
``GET /status`` is a live status page polling ``GET /v1/status`` (``_status.py``); both follow
the rule of ``/metrics`` and also take the token as ``?token=``.

``POST /v1/drain`` (with the token) drains the edge as SIGTERM does (``_drain.py``).
``GET /health`` (200 while the process serves, draining or not) and ``GET /ready`` (200 while
serving, 503 while draining) answer without the token: load balancers and systemd probes have
none, and they reveal only the edge's state (``OPEN_PATHS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from edge_server._connection import Connection
from edge_server._dnn import open_service
from edge_server._state import STATE, EdgeState
from edge_server._status import STATUS_PATHS, add_status_routes
from edge_server.config import EdgeConfig
from ondevice.common import bearer, jsonout, wire
from ondevice.common.metrics_http import METRICS_PATH, add_metrics_route

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


PUBLIC_PATHS = frozenset({METRICS_PATH, *STATUS_PATHS})  # open with ``metrics_public``
HEALTH_PATH = "/health"  # 200 while the process serves (draining or not)
READY_PATH = "/ready"  # 200 while serving, 503 while draining
DRAIN_PATH = "/v1/drain"  # POST: start draining (the token, like every other route)
OPEN_PATHS = frozenset({HEALTH_PATH, READY_PATH})  # never need the token: state only


def _query_token_ok(request: web.Request, token: str) -> bool:
    """The status routes also take the token as ``?token=`` (a browser navigating to a page
    sends no ``Authorization`` header), compared in constant time."""
    given = request.query.get("token") if request.path in STATUS_PATHS else None
    return given is not None and bearer.token_matches(given, token)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require ``Authorization: Bearer TOKEN`` when the edge has a token (constant-time check),
    on every route but ``OPEN_PATHS`` (``/health``, ``/ready``: the state alone, for probes
    that hold no token) and, with ``metrics_public``, ``/metrics`` and the status routes; the
    status routes also take ``?token=TOKEN``."""
    cfg = request.app[STATE].config
    token = cfg.token
    if token is not None and request.path not in OPEN_PATHS and not (
            cfg.metrics_public and request.path in PUBLIC_PATHS):
        header = request.headers.get("Authorization", "")
        if not (bearer.authorized(header, token) or _query_token_ok(request, token)):
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


async def _open_llm(state: EdgeState, stack: contextlib.AsyncExitStack) -> None:
    """Load the target, its KV pool and the engine over them; ``stack`` frees them."""
    from edge_server._engine import Engine
    from edge_server._llama_pool import LlamaPool
    from ondevice.common.llama_runtime import LlamaModel

    cfg = state.config
    path = cfg.model_path
    assert path is not None
    gpu = state.gpu_layers
    model = await state.run(lambda: LlamaModel(path, n_gpu_layers=gpu))
    stack.push_async_callback(state.run, model.close)
    state.model = model
    state.vocab_hash = await state.run(model.vocab_hash)
    pool = await state.run(lambda: LlamaPool(model, n_seq=cfg.max_sessions,
                                             kv_tokens=cfg.kv_pool_tokens,
                                             config=state.llama_config))
    stack.push_async_callback(state.run, pool.close)
    # A session may hold --n-ctx tokens, as long as the shared pool has them.
    state.n_ctx = min(cfg.n_ctx, pool.kv_tokens)
    state.engine = await stack.enter_async_context(Engine(
        pool, state.executor, scheduler=cfg.scheduler, batch_window_ms=cfg.batch_window_ms,
        prefill_chunk=cfg.prefill_chunk, metrics=state.metrics))
    log.info("serving %s (vocab %s, n_ctx %d per session, KV pool %d, %s scheduler, "
             "%d GPU layers)", model.model_id, state.vocab_hash, state.n_ctx,
             pool.kv_tokens, cfg.scheduler, min(gpu, model.n_layer + 1))


def _tail_observer(state: EdgeState) -> Callable[[float], None]:
    """What the DNN service calls with each tail's compute seconds: count and time it."""
    m = state.metrics

    def observe(seconds: float) -> None:
        m.dnn_tails.inc()
        m.dnn_tail_seconds.observe(seconds)

    return observe


async def _close_sessions(state: EdgeState) -> None:
    """End a drain still running and close the sessions still open (the app is stopping)."""
    task = state.drain.task
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    while state.sessions:
        _, session = state.sessions.popitem()
        await session.async_close()


async def _model_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the models before the app serves; after its last session, close what is still
    open and free everything in reverse order (the compute thread last)."""
    state = app[STATE]
    cfg = state.config
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(state.executor.shutdown, wait=True)
        if cfg.model_path is not None:
            await _open_llm(state, stack)
        if cfg.dnn_dir is not None:
            dnn = await state.run(open_service, cfg.dnn_dir, cfg.dnn_workers, cfg.dnn_threads)
            stack.push_async_callback(asyncio.to_thread, dnn.close)
            dnn.on_tail = _tail_observer(state)
            state.dnn = dnn
        stack.push_async_callback(_close_sessions, state)
        yield


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
            **_drain_state(state),
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


def _drain_state(state: EdgeState) -> dict[str, object]:
    """``state`` (serving or draining), and while draining ``drain_s_left``: seconds until
    the drain's timeout."""
    drain = state.drain
    if not drain.active:
        return {"state": drain.state}
    return {"state": drain.state, "drain_s_left": round(drain.seconds_left(time.monotonic()), 2)}


async def handle_health(request: web.Request) -> web.Response:
    """200 while the process serves, draining or not (a liveness probe)."""
    return web.json_response({"status": "ok", **_drain_state(request.app[STATE])},
                             dumps=jsonout.dumps)


async def handle_ready(request: web.Request) -> web.Response:
    """200 while the edge takes new sessions, 503 while it drains (a readiness probe)."""
    state = request.app[STATE]
    return web.json_response({"ready": not state.drain.active, **_drain_state(state)},
                             status=503 if state.drain.active else 200, dumps=jsonout.dumps)


async def handle_drain(request: web.Request) -> web.Response:
    """Start draining (idempotent): 202, the state, the sessions open and the drain's time."""
    state = request.app[STATE]
    if state.start_drain():
        log.info("draining: POST %s from %s", DRAIN_PATH, request.remote)
    return web.json_response(
        {**_drain_state(state), "sessions": state.open_sessions,
         "drain_timeout_s": state.config.drain_timeout_s},
        status=202, dumps=jsonout.dumps)


def _rss_mib() -> float | None:
    """This process's resident memory (Linux /proc), MiB."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


async def handle_session(request: web.Request) -> web.WebSocketResponse:
    """One device's WebSocket, served until it ends (``_connection.Connection``)."""
    state = request.app[STATE]
    cfg = state.config
    ws = web.WebSocketResponse(max_msg_size=cfg.max_frame_bytes, heartbeat=cfg.heartbeat_s)
    await ws.prepare(request)
    async with Connection(state, ws, request.remote or "?", request.transport) as conn:
        await conn.async_serve()
    return ws


def create_app(config: EdgeConfig) -> web.Application:
    """Build the edge application. The model is loaded when the app starts."""
    app = web.Application(
        client_max_size=config.max_frame_bytes, middlewares=[auth_middleware, delay_middleware]
    )
    app[STATE] = state = EdgeState(config=config)
    app.cleanup_ctx.append(_model_ctx)
    app.router.add_get(wire.INFO_PATH, handle_info)
    app.router.add_get(wire.WS_PATH, handle_session)
    app.router.add_get(HEALTH_PATH, handle_health)
    app.router.add_get(READY_PATH, handle_ready)
    app.router.add_post(DRAIN_PATH, handle_drain)
    add_metrics_route(app, state.metrics.registry)
    add_status_routes(app)
    return app


__all__ = ["STATE", "EdgeState", "create_app"]
