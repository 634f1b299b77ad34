"""``ondevice serve``'s HTTP application: OpenAI's API in front of one long-lived ``Device``.

``create_app(config)`` follows aiohttp's app-factory style. The ``Device`` is opened by a
``cleanup_ctx`` when the app starts (draft loaded, meter sampling, discovery and edge sockets
kept) and closed when it stops; every request uses that one Device, so GELATO's queue and
estimators, the meter's window and the edge sockets carry over from request to request.

Routes: ``GET /v1/models``, ``GET /v1/models/{model}``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true`` as server-sent events ending with
``data: [DONE]``), ``GET /health`` (no key needed; 503 while draining) and ``GET /metrics``
(Prometheus; needs the key unless ``metrics_public``, see ``_metrics.py``).

Scheduling: one generation at a time on the device, first come first served; up to
``max_queue`` more requests wait, beyond that 429. A client that disconnects (while queued or
generating) cancels its generation: it ends after the round in flight. On shutdown
(``on_shutdown``, e.g. SIGTERM) the app stops admitting (503), the generation in flight ends
after its current round and its client gets what was generated (``finish_reason`` "length",
``coinfer.stop_reason`` "interrupted"), queued requests get 503, and the Device closes (edge
sessions ended, meter stopped, model freed).

Errors are OpenAI's JSON (``{"error": {"message", "type", "param", "code"}}``) with the
matching status, also for unknown routes and oversized bodies; none stops the server. Every
request ends with one log line (``config.log``, by default the ``ondevice.serve`` logger).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ondevice.common import bearer, jsonout
from ondevice.common.metrics_http import METRICS_PATH, add_metrics_route
from ondevice.common.seed import MAX_SEED
from ondevice.llm.device import Device
from ondevice.serve._metrics import RequestTimer, ServeMetrics
from ondevice.serve.openai_api import (
    COMPLETION_DEFAULT_MAX_TOKENS,
    ApiError,
    Kind,
    Request,
    chunk_body,
    coinfer_fields,
    finish_reason,
    parse_body,
    parse_request,
    response_body,
    sse,
    usage,
)

log = logging.getLogger("ondevice.serve")
DISCONNECT_POLL_S = 0.1  # how often a request checks that its client is still there
LOG_INFO = "coinfer.log"  # request key: fields for the request's log line
CLIENT_GONE = 499  # logged status of a request whose client left (nginx's convention)
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")  # counted by status


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeConfig:
    """What ``create_app`` serves.

    ``device`` makes the (unopened) Device, once, at startup. ``model_name`` is the id
    clients send as ``model`` (default: the Device's ``model_id``, the draft's file name).
    ``api_key``: when set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer
    <api_key>``; ``metrics_public`` serves ``/metrics`` without it.
    ``max_queue``: requests that may wait behind the one generating (then 429).
    ``log``: called with one line per request (default: INFO on the ``ondevice.serve``
    logger).
    """

    device: Callable[[], Device]
    model_name: str | None = None
    api_key: str | None = None
    metrics_public: bool = False
    max_queue: int = 8
    log: Callable[[str], None] | None = None


class ServeState:
    """The app's running state: the open Device, the queue, the drain flag."""

    def __init__(self, config: ServeConfig, device: Device, metrics: ServeMetrics) -> None:
        self.config = config
        self.device = device
        self.metrics = metrics
        self.model_name = config.model_name or device.model_id
        self.gate = asyncio.Lock()  # one generation at a time; asyncio.Lock is FIFO
        self.admitted = 0  # generating + waiting
        self.draining = False
        self.served = 0
        self.started = time.time()
        self.log = config.log or log.info
        self.max_token_bytes = 1 << 30  # the draft's longest token, once known (see _fits)


STATE = web.AppKey("state", ServeState)
CONFIG = web.AppKey("config", ServeConfig)
METRICS = web.AppKey("metrics", ServeMetrics)


def create_app(config: ServeConfig) -> web.Application:
    """The application; the Device opens when it starts and closes when it stops."""
    app = web.Application(middlewares=[_log_requests, _errors, _auth])
    app[CONFIG] = config
    metrics = app[METRICS] = ServeMetrics()
    app.cleanup_ctx.append(_device_ctx)
    app.on_shutdown.append(_drain)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model}", model_info)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    add_metrics_route(app, metrics.registry)
    return app


async def _device_ctx(app: web.Application) -> AsyncIterator[None]:
    device = app[CONFIG].device()
    async with device:
        metrics = app[METRICS]
        state = app[STATE] = ServeState(app[CONFIG], device, metrics)
        metrics.bind(running=lambda: int(device.busy),
                     waiting=lambda: max(state.admitted - int(device.busy), 0))
        assert device.model is not None
        state.max_token_bytes = await asyncio.to_thread(device.model.max_token_bytes)
        yield


async def _drain(app: web.Application) -> None:
    state = app.get(STATE)
    if state is not None:
        state.draining = True
        state.device.halt()


# -- middlewares -----------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    t0 = time.monotonic()
    info: dict[str, Any] = {}
    request[LOG_INFO] = info
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        if info.pop("client_gone", False):
            status = CLIENT_GONE
        if request.path in GENERATION_PATHS:
            request.app[METRICS].requests.labels(status=str(status)).inc()
        state = request.app.get(STATE)
        fields = "".join(f" {k}={v}" for k, v in info.items())
        line = (f'{request.remote or "-"} "{request.method} {request.path}" {status} '
                f"{time.monotonic() - t0:.3f}s{fields}")
        (state.log if state is not None else log.info)(line)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        request[LOG_INFO]["error"] = exc.code or exc.type
        return web.json_response(dumps=jsonout.dumps, data=exc.body(), status=exc.status)
    except web.HTTPException as exc:  # unknown route, wrong method, body too large...
        if exc.status < 400:
            raise
        kind = "not_found" if exc.status == 404 else "invalid_request_error"
        err = ApiError(exc.status, f"{exc.reason}: {request.method} {request.path}",
                       type=kind)
        return web.json_response(dumps=jsonout.dumps, data=err.body(), status=exc.status, headers={
            k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        err = ApiError(500, "internal error in the device server (see its log)",
                       type="server_error")
        return web.json_response(dumps=jsonout.dumps, data=err.body(), status=500)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    config = request.app[CONFIG]
    key = config.api_key
    guarded = request.path.startswith("/v1/") or (
        request.path == METRICS_PATH and not config.metrics_public)
    if key is not None and guarded:
        given = request.headers.get("Authorization", "")
        if not bearer.authorized(given, key):
            raise ApiError(401, "Incorrect API key provided" if bearer.bearer_token(given) else
                           "Missing API key: send Authorization: Bearer <key>",
                           code="invalid_api_key")
    return await handler(request)


# -- simple routes ---------------------------------------------------------------------------

def _model_object(state: ServeState) -> dict[str, Any]:
    return {"id": state.model_name, "object": "model", "created": int(state.started),
            "owned_by": "coinfer"}


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(dumps=jsonout.dumps,
                             data={"object": "list", "data": [_model_object(state)]})


async def model_info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _check_model(state, request.match_info["model"])
    return web.json_response(dumps=jsonout.dumps, data=_model_object(state))


async def health(request: web.Request) -> web.Response:
    """For a supervisor: 200 while serving, 503 while draining; what the device is doing."""
    state = request.app[STATE]
    dev, last = state.device, state.device.last_report
    body = {
        "status": "draining" if state.draining else "ok",
        "model": state.model_name,
        "generating": dev.busy,
        "queued": max(state.admitted - (1 if dev.busy else 0), 0),
        "max_queue": state.config.max_queue,
        "served": state.served,
        "uptime_s": round(time.time() - state.started, 3),
        "edge": (last.edge if last is not None else None) or dev.plan.url,
        "degraded": last.degraded if last is not None else None,
        "meter": dev.meter.kind if dev.meter is not None else None,
    }
    return web.json_response(dumps=jsonout.dumps, data=body, status=503 if state.draining else 200)


def _check_model(state: ServeState, name: str) -> None:
    if name != state.model_name:
        raise ApiError(404, f"The model '{name}' does not exist; this server serves "
                            f"'{state.model_name}'", param="model", code="model_not_found")


# -- generation ------------------------------------------------------------------------------

async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completion")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _watch_client(request: web.Request, halt: asyncio.Event) -> None:
    """Set ``halt`` when the client disconnects."""
    while not halt.is_set():
        if _client_gone(request):
            request[LOG_INFO]["client_gone"] = True
            halt.set()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


@contextlib.asynccontextmanager
async def _admitted(state: ServeState, gone: asyncio.Event) -> AsyncIterator[bool]:
    """Hold the device for one generation, after those ahead; 429 when the queue is full,
    503 while draining. Yields False, without the device, when ``gone`` is set (the client
    left) while waiting: its place in the queue is given up at once."""
    def draining() -> ApiError:
        return ApiError(503, "the device server is shutting down", type="server_error",
                        code="shutting_down")

    if state.draining:
        raise draining()
    limit = 1 + state.config.max_queue
    if state.admitted >= limit:
        raise ApiError(429, f"the device is busy: {state.admitted} requests are generating or "
                            f"queued (at most {limit}); retry later", type="requests",
                       code="rate_limit_exceeded")
    state.admitted += 1
    try:
        if not await _acquire(state.gate, gone):
            yield False
            return
        try:
            if state.draining:
                raise draining()
            yield True
        finally:
            state.gate.release()
    finally:
        state.admitted -= 1


async def _acquire(lock: asyncio.Lock, gone: asyncio.Event) -> bool:
    """Acquire ``lock`` (FIFO) unless ``gone`` is set first; True when acquired."""
    if gone.is_set():
        return False
    acquire = asyncio.ensure_future(lock.acquire())
    left = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait((acquire, left), return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        if not acquire.done():
            acquire.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquire
    if acquire.cancelled():
        return False
    if gone.is_set():  # both at once: hand the lock on to the next in line
        lock.release()
        return False
    return True


def _device_error(exc: Exception) -> ApiError | None:
    """The answer to an exception the Device raised, or None for a bug."""
    from ondevice.common import wire
    from ondevice.common.llama_runtime import LlamaError
    from ondevice.llm.generate import EdgeRequired

    if isinstance(exc, EdgeRequired):
        return ApiError(503, f"no edge could be used (the server runs with --require-edge): "
                             f"{exc}", type="server_error", code="edge_unavailable")
    if isinstance(exc, wire.EdgeError):
        return ApiError(502, str(exc), type="server_error", code=exc.code)
    if isinstance(exc, LlamaError):
        return ApiError(500, f"llama.cpp: {exc}", type="server_error")
    if isinstance(exc, ValueError):
        return ApiError(400, str(exc))
    return None


async def _prompt(state: ServeState, req: Request) -> tuple[str, list[int]]:
    """The prompt's text and token ids; chat messages rendered with the model's template."""
    from ondevice.serve._chat import ChatTemplateError, render_chat

    dev = state.device
    if req.kind == "completion":
        assert req.prompt is not None
        return req.prompt, await dev.tokenize(req.prompt)
    model = dev.model
    assert model is not None
    try:
        text = await asyncio.to_thread(render_chat, model, req.messages)
    except ChatTemplateError as exc:
        raise ApiError(400, str(exc), param="messages", code="chat_template_unavailable"
                       ) from None
    return text, await dev.tokenize(text, parse_special=True)


def _prompt_bytes(req: Request) -> int:
    """UTF-8 bytes of the prompt, or of the chat messages' text."""
    if req.prompt is not None:
        return len(req.prompt.encode("utf-8"))
    return sum(len(content.encode("utf-8")) for _, content in req.messages)


def _too_long(req: Request, n_ctx: int, what: str) -> ApiError:
    return ApiError(400, f"This model's maximum context length is {n_ctx} tokens; the "
                         f"prompt has {what}. Shorten it.",
                    param="prompt" if req.kind == "completion" else "messages",
                    code="context_length_exceeded")


async def _generate(request: web.Request, kind: Kind) -> web.StreamResponse:
    """Parse and check the request, cheaply (a prompt whose bytes cannot fit the context is
    refused before it is tokenized); then wait in the queue; tokenize and generate once at
    its front, so that neither tokenizing nor templating runs beside a generation."""
    state = request.app[STATE]
    info = request[LOG_INFO]
    timer = state.metrics.timer(time.monotonic())
    req = parse_request(kind, parse_body(await request.read()))
    _check_model(state, req.model)
    dev = state.device
    n_ctx = dev.n_ctx
    n_bytes = _prompt_bytes(req)
    if n_bytes > n_ctx * state.max_token_bytes:  # at least n_bytes / max_token_bytes tokens
        raise _too_long(req, n_ctx, f"{n_bytes} bytes: more than {n_ctx} tokens of at most "
                                    f"{state.max_token_bytes} bytes each")
    info["stream"] = req.stream
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    halt = asyncio.Event()
    watcher = asyncio.create_task(_watch_client(request, halt))  # from now on, queued too
    try:
        async with _admitted(state, halt) as admitted:
            if not admitted or _client_gone(request):  # left while queued
                info["client_gone"] = True
                return web.Response(status=CLIENT_GONE)
            prompt, ids = await _prompt(state, req)
            if len(ids) >= n_ctx:
                raise _too_long(req, n_ctx, f"{len(ids)} tokens")
            default = (COMPLETION_DEFAULT_MAX_TOKENS if kind == "completion"
                       else n_ctx - len(ids) - 1)
            options = {
                "prompt_ids": ids, "max_tokens": req.max_tokens or default,
                "temperature": req.temperature, "stop": req.stop,
                "seed": req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1),
            }
            info["prompt_tokens"] = len(ids)
            if req.stream:
                return await _stream(request, state, req, rid, created, prompt, options, halt,
                                     timer)
            try:
                report = await dev.complete(
                    prompt, halt=halt,
                    on_piece=lambda p: timer.piece(len(p.tokens), time.monotonic()), **options)
            except Exception as exc:
                err = _device_error(exc)
                if err is None:
                    raise
                raise err from exc
    finally:
        watcher.cancel()
    _log_report(state, info, report, timer)
    return web.json_response(
        dumps=jsonout.dumps,
        data=response_body(kind, rid, created, state.model_name, report))


def _log_report(state: ServeState, info: dict[str, Any], report: Any,
                timer: RequestTimer) -> None:
    """Log and count one finished generation."""
    timer.finish(time.monotonic())
    state.metrics.observe_report(report)
    state.served += 1
    info.update(
        completion_tokens=usage(report)["completion_tokens"], tok_s=f"{report.tokens_per_s:.1f}",
        stop=report.stop_reason, edge=report.edge or "-", degraded=report.degraded,
        energy_j="-" if report.energy_j is None else f"{report.energy_j:.3f}",
        energy_source=report.energy_source,
        acceptance="-" if report.acceptance is None else f"{report.acceptance:.3f}",
    )


async def _stream(request: web.Request, state: ServeState, req: Request, rid: str,
                  created: int, prompt: str, options: dict[str, Any], halt: asyncio.Event,
                  timer: RequestTimer) -> web.StreamResponse:
    """Server-sent events, prepared on the first piece so that an error before any output
    still gets its proper status; an error after it is sent as an ``error`` event."""
    kind, name, dev = req.kind, state.model_name, state.device
    info = request[LOG_INFO]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def send(data: dict[str, Any] | str) -> None:
        if not resp.prepared:
            await resp.prepare(request)
            if kind == "chat":
                await resp.write(sse(chunk_body(kind, rid, created, name, role=True, text="")))
        await resp.write(sse(data))

    before = dev.last_report  # the previous request's
    try:
        try:
            async with contextlib.aclosing(dev.stream(prompt, halt=halt, **options)) as pieces:
                async for piece in pieces:
                    timer.piece(len(piece.tokens), time.monotonic())
                    if piece.text:
                        await send(chunk_body(kind, rid, created, name, text=piece.text))
        except ConnectionResetError:  # the client's socket, not the device's
            raise
        except Exception as exc:
            err = _device_error(exc)
            if err is None:
                raise
            if not resp.prepared:
                raise err from exc
            info["error"] = err.code or err.type
            await resp.write(sse(err.body()))
            await resp.write_eof()
            return resp
        report = dev.last_report
        assert report is not None
        _log_report(state, info, report, timer)
        final = chunk_body(kind, rid, created, name, finish=finish_reason(report))
        final["coinfer"] = coinfer_fields(report)
        await send(final)
        if req.include_usage:
            await send({"id": rid, "object": final["object"], "created": created,
                        "model": name, "choices": [], "usage": usage(report)})
        await send("[DONE]")
        await resp.write_eof()
    except ConnectionResetError:  # the client left mid-stream: the generation has been stopped
        info["client_gone"] = True
        if "completion_tokens" not in info and dev.last_report not in (None, before):
            _log_report(state, info, dev.last_report, timer)
    return resp
