"""``ondevice discover``: list the edges advertised on the local network, with their RTT."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ondevice.cli._edge_access import add_site, interface_error, read_token
from ondevice.cli._interrupt import EXIT_INTERRUPTED
from ondevice.common import argtypes, jsonout

HELP = "list the edges advertised on the local network"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "discover",
        help=HELP,
        description="Browse zeroconf for _coinfer._tcp.local. and measure each edge's RTT.",
    )
    p.add_argument("--timeout", type=argtypes.positive_float, default=2.0, metavar="S",
                   help="seconds to listen (default 2)")
    p.add_argument("--interface", action="append", default=[], metavar="IP",
                   help="browse on the interface with this IPv4 address (repeatable)")
    add_site(p)
    p.add_argument("--token-file", type=Path, help="bearer token for the RTT probe")
    p.add_argument("--json", action="store_true", help='end with one JSON object {"edges": [...]}')


def run(args: argparse.Namespace) -> int:
    from ondevice.edge.discovery import async_discover

    try:
        token = read_token(args.token_file)
        problem = interface_error(args.interface)
        if problem:
            raise ValueError(problem)
    except ValueError as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 2
    try:
        edges = asyncio.run(
            async_discover(timeout_s=args.timeout, interfaces=args.interface, token=token,
                           site=args.site)
        )
    except KeyboardInterrupt:
        print("ondevice: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"ondevice: cannot browse zeroconf: {exc}", file=sys.stderr)
        return 1
    edges.sort(key=lambda e: (e.load, e.rtt_ms if e.rtt_ms is not None else 1e9))
    if not edges:
        print(f"no coinfer edge answered within {args.timeout:g} s", file=sys.stderr)
    for e in edges:
        rtt = f"{e.rtt_ms:.1f} ms" if e.rtt_ms is not None else e.extra.get("error", "?")
        out = sys.stderr if args.json else sys.stdout
        print(f"{e.name}\n  url {e.url}  rtt {rtt}  load {e.sessions}/{e.capacity}"
              f"  caps {','.join(e.caps) or '-'}  auth {'yes' if e.auth else 'no'}"
              f"  tls {e.fingerprint or 'no'}\n  models {', '.join(e.models) or '-'}"
              f"  vocab {e.vocab_hash or '-'}", file=out)
    if args.json:
        print(jsonout.dumps({"edges": [e.to_dict() for e in edges]}))
    return 0
