"""``ondevice serve``: an OpenAI-compatible HTTP server on the device (``ondevice.serve``).

Runs as a service: the draft loads once, the meter samples all along, the edge sockets and
the policy's state carry over between requests. One line per request on stdout (for journald
or a log file); warnings on stderr. SIGTERM or SIGINT stops it cleanly: no new requests, the
generation in flight ends after its current round and is answered, queued ones get 503, the
edge sessions are closed, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from ondevice.cli._device_flags import add_device_flags, device_from_args, runtime_errors
from ondevice.common import argtypes
from ondevice.common.http_limits import add_guard_flags

HELP = "OpenAI-compatible HTTP API on this device (completions and chat, streaming)"

SHUTDOWN_TIMEOUT_S = 30.0  # s a request in flight gets to finish after SIGTERM


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help=HELP,
        description="Serve /v1/models, /v1/completions and /v1/chat/completions (OpenAI's API, "
        "streaming with stream: true) and /health, generating with the draft here and the edge's "
        "target (the same output as ondevice generate). One generation at a time; up to "
        "--max-queue requests wait (then 429). Logs one line per request to stdout; SIGTERM "
        "stops cleanly.",
    )
    add_device_flags(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=argtypes.port, default=8080,
                   help="TCP port (default 8080; 0 picks a free one)")
    p.add_argument("--api-key-file", type=Path, metavar="F",
                   help="require 'Authorization: Bearer KEY' on /v1/* and /metrics, KEY read "
                   "from file F")
    p.add_argument("--metrics-public", action="store_true",
                   help="serve GET /metrics (Prometheus) without the --api-key-file key; "
                   "/v1/* still needs it")
    p.add_argument("--model-name", default=None,
                   help="the model id clients send (default: the draft's file name without "
                   ".gguf)")
    p.add_argument("--max-queue", type=argtypes.non_negative_int, default=8,
                   help="requests that may wait behind the one generating (default 8)")
    add_guard_flags(p.add_argument_group("connection limits"))


def _read_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"--api-key-file {path}: {exc.strerror or exc}") from None
    if not key:
        raise ValueError(f"--api-key-file {path} is empty")
    return key


def _request_logger() -> logging.Logger:
    """The per-request lines: stdout, message only (journald adds the time)."""
    access = logging.getLogger("ondevice.serve.access")
    access.setLevel(logging.INFO)
    access.propagate = False
    if not access.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
    return access


async def _serve(args: argparse.Namespace, device: object, key: str | None) -> int:
    from aiohttp import web

    from ondevice.common.http_guard import (
        GuardedSite,
        HeadGuard,
        http_logger,
        limit_accept_errors,
    )
    from ondevice.serve.app import ServeConfig, create_app

    access = _request_logger()
    config = ServeConfig(device=lambda: device, model_name=args.model_name, api_key=key,
                         metrics_public=args.metrics_public, max_queue=args.max_queue,
                         log=access.info)
    loop = asyncio.get_running_loop()
    limit_accept_errors(loop, logger=logging.getLogger("ondevice.serve"))
    runner = web.AppRunner(create_app(config), access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                           logger=http_logger("ondevice.serve.http"),
                           keepalive_timeout=args.keepalive_timeout)
    await runner.setup()  # starts the app: loads the draft, starts the meter (may raise)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        guard = HeadGuard(timeout_s=args.header_timeout,
                          max_pending=args.max_pending_connections)
        site = GuardedSite(runner, args.host, args.port, guard=guard)
        try:
            await site.start()
        except OSError as exc:
            print(f"ondevice serve: cannot listen on {args.host}:{args.port}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        port = site.port
        host = f"[{args.host}]" if ":" in args.host else args.host
        access.info("ondevice serve: model %s, listening on http://%s:%d",
                    config.model_name or getattr(device, "model_id", "?"), host, port)
        if key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
            logging.getLogger("ondevice.serve").warning(
                "serving on %s without --api-key-file: anyone who can reach it may generate",
                args.host)
        await stop.wait()
        access.info("ondevice serve: stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()  # drains, then closes the Device (edge sessions, meter, model)
    access.info("ondevice serve: stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    """0 after SIGTERM/SIGINT, 1 when it cannot start (model, meter, port), 2 usage error."""
    from ondevice.common.model_sidecar import SidecarError
    from ondevice.llm.generate import MeterUnavailable

    try:
        device = device_from_args(args)
        key = _read_key(args.api_key_file)
    except SidecarError as exc:
        print(f"ondevice serve: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"ondevice serve: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, device, key))
    except MeterUnavailable as exc:
        print(f"ondevice serve: {exc}; check the meter, or pass --meter-optional",
              file=sys.stderr)
        return 1
    except runtime_errors() as exc:
        print(f"ondevice serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
