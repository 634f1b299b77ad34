"""``ondevice``: the device's command line. Parses arguments and calls one module per command
(``ondevice.cli.<command>``: ``add_parser(sub)`` and ``run(args) -> exit status``).

``ondevice`` without a command prints its help to stderr and exits 2 (a usage error);
``ondevice --version`` prints the installed coinfer version.

Every command starts with the extras installed that it needs (``NEEDS``): without
llama-cpp-python (a ``[dnn]``-only install) ``classify``, ``meter`` and ``discover`` work, and
``generate`` says in one line which extra to install (exit 1); an optional package found
missing later, while a command runs, gives the same one line instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys

from ondevice.cli import (
    bench,
    classify,
    demo,
    discover,
    flash_meter,
    generate,
    meter,
    selftest,
    serve,
)
from ondevice.common.extras import install_hint, missing_extra
from ondevice.common.version import coinfer_version

COMMANDS = {  # command -> (module, its add-parser function, its run function)
    "generate": (generate, generate.add_parser, generate.run),
    "serve": (serve, serve.add_parser, serve.run),
    "discover": (discover, discover.add_parser, discover.run),
    "meter": (meter, meter.add_parser, meter.run),
    "demo": (demo, demo.add_parser, demo.run),
    "classify": (classify, classify.add_classify_parser, classify.run_classify_cmd),
    "bench": (bench, bench.add_bench_parser, bench.run_bench),
    "flash-meter": (flash_meter, flash_meter.add_parser, flash_meter.run),
    "selftest": (selftest, selftest.add_parser, selftest.run),
}
# command -> the optional top-level module it cannot even build its flags without
NEEDS = {"generate": "llama_cpp", "serve": "llama_cpp", "demo": "llama_cpp",
         "bench": "llama_cpp", "classify": "onnxruntime", "selftest": "llama_cpp"}


def unavailable() -> dict[str, str]:
    """Command -> install hint, for each command whose optional package is not installed
    (looked up with ``find_spec``: nothing is imported)."""
    return {cmd: install_hint(mod) for cmd, mod in NEEDS.items()
            if importlib.util.find_spec(mod) is None}


def _command_of(argv: list[str]) -> str | None:
    """The first argument that names a command, if any (options come before it)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ondevice`` parser. Only ``command``'s own flags are built (None: none): every
    other command is listed with its one-line ``HELP``, so that ``ondevice --help`` and
    ``--version`` import no command's dependencies (the flags of some list the policies,
    datasets or profiles that live beside numpy)."""
    parser = argparse.ArgumentParser(
        prog="ondevice",
        description="coinfer device client: speculative decoding (GELATO) and split DNN "
        "inference (ENACHI) with an edge, on measured energy.",
    )
    parser.add_argument("--version", action="version",
                        version=f"ondevice (coinfer) {coinfer_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    missing = unavailable()
    for name, (module, add_parser, _) in COMMANDS.items():
        if name in missing:
            sub.add_parser(name, help=f"(unavailable: {missing[name]})")
        elif name == command:
            add_parser(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_of(argv)
    hint = unavailable().get(command or "")
    if hint is not None:
        print(f"ondevice {command}: {hint}", file=sys.stderr)
        return 1
    parser = build_parser(command)
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
        return COMMANDS[args.command][2](args)
    except ImportError as exc:
        hint = missing_extra(exc)
        if hint is None:
            raise
        print(f"ondevice {args.command}: {hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
