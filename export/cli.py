"""`model-export`: make test fixtures and prepare models for coinfer (runs on a workstation).

The CLI only parses arguments and calls the package's functions. Exit status: 0 on success,
2 for a usage error or bad input (one line on stderr that says what is wrong).

    model-export fixtures --out DIR [--seed S]
    model-export llm quantize --in X.gguf --type TYPE --out Y.gguf [--threads N] [--verbose]
    model-export dnn split --model efficientnet-lite0|digits-cnn|PATH.pt --out DIR
                           [--splits auto|all|i,j,k] [--calib N] [--seed S]  # docs/export-dnn.md
    model-export dnn train-digits [--seed S] [--out FILE.pt]
    model-export dnn quantize --in M.onnx --calib DIR_OR_NPZ --out M_int8.onnx

Command groups (`llm`, later `dnn`) are subparsers with their own subcommands, so new ones
(`llm check-pair`, `llm make-draft`, `dnn split`) plug in as one `_add_*` function each.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from export._errors import ExportError
from export.dnn._cli import add_dnn

PROG = "model-export"

Handler = Callable[[argparse.Namespace], int]


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _run_fixtures(args: argparse.Namespace) -> int:
    from export._fixtures import write_fixtures

    start = time.perf_counter()
    paths = write_fixtures(Path(args.out), seed=args.seed)
    seconds = time.perf_counter() - start
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    print(f"fixtures for seed {args.seed} in {seconds:.2f} s")
    return 0


def _run_llm_quantize(args: argparse.Namespace) -> int:
    from export._quantize import quantize_gguf

    result = quantize_gguf(
        Path(args.inp),
        Path(args.out),
        args.type,
        nthread=args.threads,
        verbose=args.verbose,
        progress=False if args.no_progress else None,
        announce=lambda line: print(line, file=sys.stderr),
    )
    print(result.summary())
    return 0


def _add_fixtures(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fixtures",
        help="write tiny deterministic target/draft GGUF models for tests",
        description=(
            "Write DIR/target.gguf (2 layers) and DIR/draft.gguf (1 layer): tiny F32 "
            "Llama-architecture models with one shared 384-token GPT-2 byte-level BPE "
            "vocabulary. The target behaves like a noisy bigram/trigram model of English; the "
            "draft is a perturbed, smaller relative with greedy acceptance around 0.6. Same "
            "seed, same bytes. See docs/fixtures.md."
        ),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--seed", type=_non_negative_int, default=0, metavar="S", help="default 0")
    p.set_defaults(handler=_run_fixtures)


def _add_llm(sub: argparse._SubParsersAction) -> None:
    from export._quantize import QUANT_TYPES

    llm = sub.add_parser(
        "llm",
        help="prepare GGUF language models (quantize, ...)",
        description="Prepare GGUF language models for the device and the edge.",
    )
    llm_sub = llm.add_subparsers(dest="llm_command", metavar="COMMAND", required=True)
    q = llm_sub.add_parser(
        "quantize",
        help="quantize or requantize a GGUF model with llama.cpp",
        description=(
            "Quantize a GGUF model with llama.cpp (llama_model_quantize). Already-quantized "
            "models are requantized, e.g. Gemma 3 270M Q4_K_M to q3_k_s for a draft. Tensors "
            "whose row size is not a multiple of the type's block (32, or 256 for k-quants) "
            "are stored in a fallback type chosen by llama.cpp. Needs llama-cpp-python."
        ),
    )
    q.add_argument("--in", dest="inp", required=True, metavar="X.gguf", help="input model")
    q.add_argument(
        "--type",
        required=True,
        metavar="TYPE",
        help=f"target type, one of: {', '.join(QUANT_TYPES)}",
    )
    q.add_argument(
        "--out", required=True, metavar="Y.gguf", help="output file (directory must exist)"
    )
    q.add_argument(
        "--threads",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="quantization threads (default 0: all cores)",
    )
    q.add_argument("--verbose", action="store_true", help="echo llama.cpp's log to stderr")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(handler=_run_llm_quantize)


def build_parser() -> argparse.ArgumentParser:
    """The full `model-export` argument parser (every leaf command sets `handler`)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Make coinfer's test fixtures and prepare models for device and edge.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_fixtures(sub)
    _add_llm(sub)
    add_dnn(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `model-export` with `argv` (default: sys.argv[1:]); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ExportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
