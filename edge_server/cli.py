"""``edge-server``: parse arguments, build the app, serve until a drain ends.

The first SIGTERM or SIGINT drains the edge (``_drain``: sessions finish or move, for up to
``--drain-timeout``), as ``POST /v1/drain`` does; a second one stops at once. Either way the
exit status is 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import ssl
import sys
import time
from pathlib import Path

from aiohttp import web

from edge_server._drain import abort_connections
from edge_server._state import EdgeState
from edge_server._status import RedactingAccessLogger
from edge_server.advertise import EdgeAdvertiser
from edge_server.app import STATE, create_app
from edge_server.config import EdgeConfig
from edge_server.tls import certificate_fingerprint
from ondevice.common import argtypes, wire
from ondevice.common.discovery_record import encode_txt
from ondevice.common.extras import MissingExtra, require
from ondevice.common.http_guard import (
    GuardedSite,
    HeadGuard,
    http_logger,
    limit_accept_errors,
)
from ondevice.common.http_limits import add_guard_flags
from ondevice.common.version import coinfer_version

log = logging.getLogger("edge_server")


def build_parser() -> argparse.ArgumentParser:
    d = EdgeConfig()
    p = argparse.ArgumentParser(
        prog="edge-server",
        description="Serve a target LLM that verifies the drafts of coinfer devices "
        "(speculative decoding over one WebSocket per session) and/or the tails of a split DNN "
        "(ENACHI progressive split inference), advertised over zeroconf.",
    )
    p.add_argument("--model", type=Path, help="target model, a GGUF file")
    p.add_argument("--dnn", type=Path, metavar="DIR",
                   help="a `model-export dnn split` directory: serve its tails (onnxruntime)")
    p.add_argument("--dnn-workers", type=argtypes.positive_int, default=d.dnn_workers,
                   help=f"threads running DNN tails (default {d.dnn_workers})")
    p.add_argument("--dnn-threads", type=argtypes.positive_int, default=d.dnn_threads,
                   help=f"onnxruntime threads per DNN call (default {d.dnn_threads})")
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host})")
    p.add_argument("--port", type=argtypes.port, default=d.port,
                   help=f"TCP port; 0 picks a free one (default {d.port})")
    p.add_argument("--no-advertise", action="store_true", help="do not advertise over zeroconf")
    p.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="IP",
        help="advertise on the interface with this IPv4 address (repeatable; default: all)",
    )
    p.add_argument("--site", type=argtypes.site, metavar="LABEL",
                   help="advertise this site label: devices started with --site LABEL use only "
                   "edges that carry it (keeps fleets apart on one network; default none)")
    p.add_argument("--n-ctx", type=argtypes.positive_int, default=d.n_ctx,
                   help="most tokens one session may hold (prompt and output; default "
                   f"{d.n_ctx}, at most --kv-tokens)")
    p.add_argument("--threads", type=argtypes.positive_int, default=None,
                   help="llama.cpp threads (default: all)")
    p.add_argument("--kv-type", default=d.kv_type, choices=("f16", "f32", "q8_0"),
                   help=f"KV cache element type (default {d.kv_type})")
    e = p.add_argument_group("serving engine (one llama.cpp context for all sessions)")
    e.add_argument("--kv-tokens", type=argtypes.positive_int, default=None,
                   help="KV cache cells shared by all sessions (default: max-sessions x n-ctx"
                   " / 2, at least n-ctx, at most 65536); a full pool refuses new sessions")
    e.add_argument("--n-gpu-layers", type=argtypes.non_negative_int, default=None,
                   help="layers to offload to a GPU (default: all when llama.cpp was built "
                   "with a GPU backend, else 0)")
    e.add_argument("--scheduler", choices=("batched", "serial"), default=d.scheduler,
                   help="batched: every session's pending work in one decode per step "
                   "(default); serial: one session's work per decode (for comparison)")
    e.add_argument("--batch-window-ms", type=argtypes.non_negative_float,
                   default=d.batch_window_ms,
                   help=f"wait this long for more work before a step (default "
                   f"{d.batch_window_ms:g})")
    e.add_argument("--prefill-chunk", type=argtypes.positive_int, default=d.prefill_chunk,
                   help=f"prompt tokens per step and session (default {d.prefill_chunk})")
    e.add_argument("--n-batch", type=argtypes.positive_int, default=d.n_batch,
                   help=f"most tokens in one step (default {d.n_batch})")
    s = p.add_argument_group("security")
    s.add_argument("--token-file", type=Path, help="require this bearer token on every request")
    s.add_argument("--metrics-public", action="store_true",
                   help="serve GET /metrics (Prometheus) and the status page (/status, "
                   "/v1/status) without the --token-file token; every other route still "
                   "needs it")
    s.add_argument("--tls-cert", type=Path, help="PEM certificate: serve HTTPS/WSS")
    s.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    g = p.add_argument_group("limits")
    g.add_argument("--max-sessions", type=argtypes.positive_int, default=d.max_sessions)
    g.add_argument("--max-sessions-per-client", type=argtypes.positive_int,
                   default=d.max_sessions_per_client,
                   help="open sessions per client IP address")
    g.add_argument("--max-draft", type=argtypes.positive_int, default=d.max_draft_tokens,
                   help="tokens per round")
    g.add_argument("--max-prompt", type=argtypes.positive_int, default=d.max_prompt_tokens,
                   help="prompt tokens (at most the context less one)")
    g.add_argument("--max-frame-bytes", type=argtypes.positive_int, default=d.max_frame_bytes)
    g.add_argument("--max-packet-bytes", type=argtypes.positive_int, default=d.max_packet_bytes,
                   help="DNN feature packet or raw-input slice")
    g.add_argument("--idle-timeout", type=argtypes.positive_float, default=d.idle_timeout_s,
                   help="seconds")
    g.add_argument("--send-timeout", type=argtypes.positive_float, default=d.send_timeout_s,
                   help="seconds a device has to take a frame before its connection is closed "
                   f"and its place freed (default {d.send_timeout_s:g})")
    g.add_argument("--drain-timeout", type=argtypes.positive_float, default=d.drain_timeout_s,
                   metavar="S",
                   help="on SIGTERM/SIGINT or POST /v1/drain, refuse new sessions and let "
                   "open ones finish for up to S seconds; just before S, tell the rest to "
                   "move to another edge (they lose nothing), then exit 0 (default "
                   f"{d.drain_timeout_s:g}; a second signal stops at once; a systemd unit's "
                   "TimeoutStopSec must exceed it)")
    add_guard_flags(g)
    p.add_argument(
        "--emulate-delay-ms",
        type=argtypes.non_negative_float,
        default=0.0,
        help="hold every reply this long (emulates a distant edge on a test rig)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log each session")
    p.add_argument("--version", action="version",
                   version=f"edge-server (coinfer) {coinfer_version()}")
    return p


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace stripped); refuse an empty one."""
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def config_from_args(args: argparse.Namespace) -> EdgeConfig:
    return EdgeConfig(
        model_path=args.model,
        dnn_dir=args.dnn,
        dnn_workers=args.dnn_workers,
        dnn_threads=args.dnn_threads,
        max_packet_bytes=args.max_packet_bytes,
        host=args.host,
        port=args.port,
        advertise=not args.no_advertise,
        interfaces=tuple(args.interface),
        site=args.site or "",
        token=read_token(args.token_file) if args.token_file else None,
        metrics_public=args.metrics_public,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        emulated_delay_ms=args.emulate_delay_ms,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        kv_type=args.kv_type,
        kv_tokens=args.kv_tokens,
        n_gpu_layers=args.n_gpu_layers,
        scheduler=args.scheduler,
        batch_window_ms=args.batch_window_ms,
        prefill_chunk=args.prefill_chunk,
        n_batch=args.n_batch,
        max_sessions=args.max_sessions,
        max_sessions_per_client=args.max_sessions_per_client,
        max_draft_tokens=args.max_draft,
        max_prompt_tokens=args.max_prompt,
        max_frame_bytes=args.max_frame_bytes,
        idle_timeout_s=args.idle_timeout,
        send_timeout_s=args.send_timeout,
        drain_timeout_s=args.drain_timeout,
        header_timeout_s=args.header_timeout,
        max_pending_connections=args.max_pending_connections,
        keepalive_timeout_s=args.keepalive_timeout,
    )


def _ssl_context(config: EdgeConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    return ctx


class StartupError(Exception):
    """The edge cannot start; the message is the one line to print."""


def _bind_error(config: EdgeConfig, exc: OSError) -> str:
    where = f"port {config.port} on {config.host}"
    if exc.errno == errno.EADDRINUSE:
        return (f"{where} is in use ({os.strerror(exc.errno)}); choose another --port or stop "
                "the other server")
    if exc.errno == errno.EACCES:
        return (f"{where} may not be bound by this user ({os.strerror(exc.errno)}); choose a "
                "--port above 1023")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {config.host}: not an address of this host; check --host"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def _sessions(n: int) -> str:
    return f"{n} session{'' if n == 1 else 's'}"


async def _until_drained(state: EdgeState, stop_now: asyncio.Event) -> None:
    """Return once a drain has ended, or at once on ``stop_now`` (its sockets dropped)."""
    drain = state.drain
    now = asyncio.ensure_future(stop_now.wait())
    begun = asyncio.ensure_future(drain.begun.wait())
    finished = asyncio.ensure_future(drain.finished.wait())
    try:
        await asyncio.wait((begun, now), return_when=asyncio.FIRST_COMPLETED)
        if not stop_now.is_set():
            print(f"edge-server draining: {_sessions(state.open_sessions)} open; up to "
                  f"{state.config.drain_timeout_s:g} s (signal again to stop now)", flush=True)
            await asyncio.wait((finished, now), return_when=asyncio.FIRST_COMPLETED)
            if drain.finished.is_set() and drain.started_s is not None:
                print(f"edge-server drained in {time.monotonic() - drain.started_s:.1f} s: "
                      f"{_sessions(drain.moved)} moved to other edges", flush=True)
        if stop_now.is_set():
            if drain.task is not None:
                drain.task.cancel()
            print(f"edge-server stopping now: {_sessions(state.open_sessions)} dropped",
                  flush=True)
            abort_connections(state)
    finally:
        for waiter in (now, begun, finished):
            waiter.cancel()


async def serve(config: EdgeConfig) -> None:
    """Serve until a drain ends (the first SIGINT/SIGTERM or ``POST /v1/drain`` starts one; a
    second signal stops at once); print the bound URL once listening and advertised."""
    app = create_app(config)
    state = app[STATE]
    # Handlers before serving: a supervisor may signal as soon as it reads "listening".
    stop_now = asyncio.Event()
    signals = 0

    def on_signal() -> None:  # the first drains (or joins a drain begun by POST /v1/drain)
        nonlocal signals
        signals += 1
        if signals == 1:
            state.start_drain()
        else:
            stop_now.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    limit_accept_errors(loop)
    runner = web.AppRunner(app, handle_signals=False, logger=http_logger("edge_server.http"),
                           keepalive_timeout=config.keepalive_timeout_s,
                           access_log_class=RedactingAccessLogger)  # /status?token=
    await runner.setup()
    try:
        ssl_ctx = _ssl_context(config)
        fingerprint = certificate_fingerprint(config.tls_cert) if config.tls_cert else ""
        guard = HeadGuard(timeout_s=config.header_timeout_s,
                          max_pending=config.max_pending_connections)
        site = GuardedSite(runner, config.host, config.port, guard=guard, ssl_context=ssl_ctx)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(_bind_error(config, exc)) from None
        port = site.port
        host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
        scheme = "https" if ssl_ctx else "http"

        def txt() -> dict[str, str]:
            return encode_txt(
                version=wire.PROTOCOL_VERSION,
                caps=state.capabilities,
                models=state.model_ids,
                vocab_hash=state.vocab_hash,
                sessions=state.open_sessions,
                capacity=config.max_sessions,
                auth=config.token is not None,
                fingerprint=fingerprint,
                site=config.site,
                state="draining" if state.drain.active else "",
            )

        async with contextlib.AsyncExitStack() as stack:
            if config.advertise:
                addresses = [] if config.host in ("0.0.0.0", "") else [config.host]
                adv = await stack.enter_async_context(
                    EdgeAdvertiser(
                        port=port, txt=txt, interfaces=config.interfaces, addresses=addresses
                    )
                )
                state.on_load_change = adv.async_load_changed

                async def announce_drain(adv: EdgeAdvertiser = adv) -> None:
                    await adv.async_update_now()  # state=draining, at once
                    await adv.async_close()  # then goodbye

                state.on_drain = announce_drain
                print(f"edge-server advertised as {adv.name}", flush=True)
            if fingerprint:
                print(f"edge-server TLS certificate sha256 {fingerprint}", flush=True)
            print(f"edge-server listening on {scheme}://{host}:{port}", flush=True)
            await _until_drained(state, stop_now)
            print("edge-server shutting down", flush=True)
            state.on_load_change = state.on_drain = None
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.model is None and args.dnn is None:
        print("edge-server: give --model TARGET.gguf, --dnn DIR, or both", file=sys.stderr)
        return 2
    if args.model is not None and args.model.is_dir():
        found = sorted(f.name for f in args.model.glob("*.gguf"))
        hint = f" (it holds {', '.join(found[:3])}{', ...' if len(found) > 3 else ''})" \
            if found else ""
        print(f"edge-server: --model {args.model} is a directory; give the target's GGUF "
              f"file{hint}", file=sys.stderr)
        return 2
    if args.model is not None and not args.model.is_file():
        print(f"edge-server: model file not found: {args.model}", file=sys.stderr)
        return 2
    try:  # the extras the flags need, before anything starts: one line naming the extra
        if args.model is not None:
            require("ondevice.common.llama_runtime")
        if args.dnn is not None:
            require("onnxruntime")
    except MissingExtra as exc:
        flag = "--model" if args.model is not None and "llama" in str(exc) else "--dnn"
        print(f"edge-server: {flag}: {exc}", file=sys.stderr)
        return 1
    if args.model is not None:
        from ondevice.common.gguf_file import GgufFileError, check_gguf_file

        try:  # the magic bytes, before any model loads
            check_gguf_file(args.model)
        except (OSError, GgufFileError) as exc:
            print(f"edge-server: --model: {exc}", file=sys.stderr)
            return 2
    if args.dnn is not None:
        from ondevice.common.dnn_profile import DnnProfileError, load_dnn

        try:
            load_dnn(args.dnn)
        except DnnProfileError as exc:
            print(f"edge-server: {exc}", file=sys.stderr)
            return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("edge-server: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, ImportError, ssl.SSLError)
    if args.model is not None:
        from ondevice.common.llama_runtime import LlamaError

        errors = (*errors, LlamaError)
    try:
        config = config_from_args(args)
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 0  # a second Ctrl-C during shutdown
    except StartupError as exc:
        print(f"edge-server: {exc}", file=sys.stderr)
        return 1
    except errors as exc:
        print(f"edge-server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
