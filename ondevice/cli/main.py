"""``ondevice``: the device's command line. Parses arguments and calls one module per command
(``ondevice.cli.<command>``: ``add_parser(sub)`` and ``run(args) -> exit status``).

``ondevice`` without a command prints its help to stderr and exits 2 (a usage error);
``ondevice --version`` prints the installed coinfer version.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ondevice.cli import bench, classify, demo, discover, generate, meter, serve
from ondevice.common.version import coinfer_version

COMMANDS = {
    "generate": (generate.add_parser, generate.run),
    "serve": (serve.add_parser, serve.run),
    "discover": (discover.add_parser, discover.run),
    "meter": (meter.add_parser, meter.run),
    "demo": (demo.add_parser, demo.run),
    "classify": (classify.add_classify_parser, classify.run_classify_cmd),
    "bench": (bench.add_bench_parser, bench.run_bench),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ondevice",
        description="coinfer device client: speculative decoding (GELATO) and split DNN "
        "inference (ENACHI) with an edge, on measured energy.",
    )
    parser.add_argument("--version", action="version",
                        version=f"ondevice (coinfer) {coinfer_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        return COMMANDS[args.command][1](args)
    except KeyboardInterrupt:  # before a command's own handling began (e.g. while importing)
        print("\nondevice: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
