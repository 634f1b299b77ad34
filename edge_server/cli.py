"""``edge-server``: parse arguments, build the app, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from edge_server.app import create_app
from edge_server.config import EdgeConfig

log = logging.getLogger("edge_server")


def build_parser() -> argparse.ArgumentParser:
    d = EdgeConfig()
    p = argparse.ArgumentParser(
        prog="edge-server",
        description="Serve a target LLM that verifies the drafts of coinfer devices "
        "(speculative decoding over one WebSocket per session).",
    )
    p.add_argument("--model", type=Path, help="target model, a GGUF file")
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host})")
    p.add_argument(
        "--port", type=int, default=d.port, help=f"TCP port; 0 picks a free one (default {d.port})"
    )
    p.add_argument(
        "--no-advertise",
        action="store_true",
        help="do not advertise this edge over zeroconf",
    )
    p.add_argument("--n-ctx", type=int, default=d.n_ctx, help="context tokens per session")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-sessions", type=int, default=d.max_sessions)
    g.add_argument("--max-draft", type=int, default=d.max_draft_tokens, help="tokens per round")
    g.add_argument("--max-prompt", type=int, default=d.max_prompt_tokens, help="prompt tokens")
    g.add_argument("--max-frame-bytes", type=int, default=d.max_frame_bytes)
    g.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, help="seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="log each session")
    return p


def config_from_args(args: argparse.Namespace) -> EdgeConfig:
    return EdgeConfig(
        model_path=args.model,
        host=args.host,
        port=args.port,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        max_sessions=args.max_sessions,
        max_draft_tokens=args.max_draft,
        max_prompt_tokens=args.max_prompt,
        max_frame_bytes=args.max_frame_bytes,
        idle_timeout_s=args.idle_timeout,
    )


async def serve(config: EdgeConfig, *, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled or signalled; print the bound URL once listening."""
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1] if sockets else config.port
        host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
        print(f"edge-server listening on http://{host}:{port}", flush=True)
        if ready is not None:
            ready.set()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("edge-server shutting down", flush=True)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.model is None:
        print("edge-server: --model TARGET.gguf is required", file=sys.stderr)
        return 2
    if not args.model.is_file():
        print(f"edge-server: model file not found: {args.model}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config_from_args(args)))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"edge-server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
