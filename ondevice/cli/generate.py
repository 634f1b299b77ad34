"""``ondevice generate``: speculative decoding with a draft here and the target on an edge.

The text streams to stdout as tokens are committed; the report goes to stderr. With
``--json`` stdout holds only the report, one JSON object on one line (``| jq`` works).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ondevice.cli._device_flags import add_device_flags, device_from_args, runtime_errors
from ondevice.cli._interrupt import EXIT_INTERRUPTED, Aborted, run_interruptible
from ondevice.common import argtypes, jsonout

HELP = "generate text with a draft model, verified by an edge (speculative decoding)"

__all__ = ["add_parser", "read_prompt", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help=HELP,
        description="Draft tokens on this device and have the edge's target model verify them. "
        "The output follows the target model's distribution exactly (greedy at temperature 0). "
        "The text streams to stdout as it is verified; the report goes to stderr (with --json, "
        "stdout holds only the JSON report). Ctrl-C stops after the current round and still "
        "prints the report (exit 130); a second Ctrl-C aborts.",
    )
    add_device_flags(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", type=argtypes.non_empty_text,
                     help="prompt text; '-' reads it from stdin")
    src.add_argument("--prompt-file", type=Path, metavar="F",
                     help="read the prompt from file F (UTF-8)")
    p.add_argument("--special", action="store_true",
                   help="read special tokens written in the prompt (e.g. a chat template's "
                   "<start_of_turn>) as those tokens, not as their letters")
    p.add_argument("--max-tokens", type=argtypes.positive_int, default=128,
                   help="tokens to generate (default 128)")
    p.add_argument("--temperature", type=argtypes.non_negative_float, default=0.0,
                   help="0 = greedy (default)")
    p.add_argument("--seed", type=argtypes.seed, default=0,
                   help="sampling seed, 0..2^63-1 (default 0)")
    p.add_argument("--json", action="store_true",
                   help="print only the report, as one JSON object on one line, on stdout")


def _strip_one_newline(text: str) -> str:
    """A file or a pipe usually ends with one newline (echo, editors): not part of the prompt."""
    for end in ("\r\n", "\n"):
        if text.endswith(end):
            return text[: -len(end)]
    return text


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt from --prompt, --prompt - (stdin) or --prompt-file; one trailing newline of
    a file or stdin is dropped. Raises ValueError naming the flag."""
    if args.prompt_file is not None:
        try:
            text = args.prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ValueError(f"--prompt-file {args.prompt_file}: {why}") from None
        flag = f"--prompt-file {args.prompt_file}"
    elif args.prompt == "-":
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError as exc:
            raise ValueError(f"--prompt -: stdin is not UTF-8 ({exc})") from None
        flag = "--prompt - (stdin)"
    else:
        return args.prompt
    text = _strip_one_newline(text)
    if not text.strip():
        raise ValueError(f"{flag}: the prompt is empty")
    return text


async def _generate(device: Any, prompt: str, args: argparse.Namespace, stop: Any) -> Any:
    """Open the device, stream the text to stdout (unless --json), return the report."""
    out = sys.stdout
    async with device:
        async for piece in device.stream(prompt, max_tokens=args.max_tokens,
                                         temperature=args.temperature, seed=args.seed,
                                         parse_special=args.special, halt=stop):
            if piece.text and not args.json:
                out.write(piece.text)
                out.flush()
    return device.last_report


def run(args: argparse.Namespace) -> int:
    """Usage errors (bad flags, unreadable token or prompt file, unsafe edge access) exit 2,
    failures to run 1, Ctrl-C 130 (after the text so far and the report)."""
    from ondevice.common.model_sidecar import SidecarError
    from ondevice.llm.generate import EdgeRequired, MeterUnavailable

    try:
        device = device_from_args(args)
        prompt = read_prompt(args)
    except SidecarError as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 2
    try:
        report, interrupted = run_interruptible(
            lambda stop: _generate(device, prompt, args, stop), what="stopping the generation")
    except MeterUnavailable as exc:
        print(f"ondevice: {exc}; check the meter, or pass --meter-optional", file=sys.stderr)
        return 1
    except EdgeRequired as exc:
        print(f"ondevice: --require-edge: {exc}", file=sys.stderr)
        return 1
    except Aborted:
        print("ondevice: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except runtime_errors() as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 1
    data = report.to_dict()
    if args.json:
        print(jsonout.dumps(data))
    else:
        print()  # end the streamed text's line
    sys.stdout.flush()
    from ondevice.llm.report import format_report

    print(format_report(data), file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else 0
