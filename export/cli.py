"""`model-export`: make test fixtures and prepare models for coinfer (runs on a workstation).

The CLI only parses arguments and calls the package's functions. Exit status: 0 on success,
2 for a usage error or bad input (one line on stderr that says what is wrong).

    model-export fixtures --out DIR [--seed S]
    model-export llm quantize --in X.gguf (--type TYPE | --preset BOARD [--type TYPE]) --out Y.gguf
                             [--chat-template FILE] [--threads N] [--verbose]
    model-export llm check-pair DRAFT.gguf TARGET.gguf [--no-progress]  # exit 0/1/2: valid/not/bad
    model-export llm make-draft --from TARGET.gguf --out DRAFT.gguf [--keep-layers N] [--type T]
    model-export llm rank-drafts TARGET.gguf DRAFT.gguf... [--prompts FILE] [--rtt-ms R] [--json F]
    model-export dnn split --model efficientnet-lite0|digits-cnn|PATH.pt --out DIR
                           [--splits auto|all|i,j,k] [--calib N] [--seed S]  # docs/export-dnn.md
    model-export dnn train-digits [--seed S] [--out FILE.pt]
    model-export dnn ship-digits --out DIR     # the digits data and split inside coinfer
    model-export dnn quantize --in M.onnx --calib DIR_OR_NPZ --out M_int8.onnx
    model-export bundle --board rpi5|jetson-orin --draft D.gguf [--edge URL | --discover]
                        [--meter SPEC] [--wheelhouse DIR] [--python X.Y] --out DIR
                                                                      # docs/install.md
    model-export wheelhouse [--python X.Y] [--native] --out DIR      # aarch64 wheels

Extras: the `fixtures` and `llm` commands need `coinfer[export-llm]` (gguf, llama.cpp; no
torch), `dnn` needs `coinfer[export]`; a missing one is named in one line (exit 1).

Command groups (`llm`, later `dnn`) are subparsers with their own subcommands, so new ones
(`llm check-pair`, `llm make-draft`, `dnn split`) plug in as one `_add_*` function each.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from export._bundle import add_bundle
from export._errors import ExportError
from export._paths import check_output_file
from export._progress import say
from export._wheelhouse import add_wheelhouse
from export.dnn._cli import add_dnn
from ondevice.common.argtypes import non_negative_int as _non_negative_int
from ondevice.common.argtypes import positive_int as _positive_int
from ondevice.common.extras import missing_extra
from ondevice.common.version import coinfer_version

PROG = "model-export"

Handler = Callable[[argparse.Namespace], int]


def _run_fixtures(args: argparse.Namespace) -> int:
    from export._fixtures import write_fixtures

    start = time.perf_counter()
    paths = write_fixtures(Path(args.out), seed=args.seed)
    seconds = time.perf_counter() - start
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    print(f"fixtures for seed {args.seed} in {seconds:.2f} s")
    return 0


def _announce(line: str) -> None:
    say(line)  # on stderr, between redraws of any progress bar


def _chat_template(path: str | None) -> str | None:
    """The text of ``--chat-template FILE`` (None without the flag); ExportError if unusable."""
    if path is None:
        return None
    from ondevice.common.gguf_chat import read_template_file

    try:
        return read_template_file(Path(path))
    except ValueError as e:
        raise ExportError(str(e)) from None


def _run_llm_quantize(args: argparse.Namespace) -> int:
    from export._quantize import quantize_gguf

    template = _chat_template(args.chat_template)
    if args.preset is not None:
        from export._presets import quantize_for_board

        board = quantize_for_board(
            Path(args.inp),
            Path(args.out),
            args.preset,
            qtype=args.type,
            nthread=args.threads,
            verbose=args.verbose,
            progress=False if args.no_progress else None,
            announce=_announce,
            chat_template=template,
        )
        print(board.summary())
        return 0
    if args.type is None:
        raise ExportError("llm quantize needs --type TYPE or --preset BOARD")
    result = quantize_gguf(
        Path(args.inp),
        Path(args.out),
        args.type,
        nthread=args.threads,
        verbose=args.verbose,
        progress=False if args.no_progress else None,
        announce=_announce,
        chat_template=template,
    )
    print(result.summary())
    from ondevice.common.model_sidecar import sidecar_path

    stale = sidecar_path(result.out_path)
    if stale.exists():  # it described the file just replaced
        stale.unlink()
        print(f"removed {stale}: it described the previous {result.out_path.name}")
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
    from export._presets import PRESETS
    from export._quantize import QUANT_TYPES

    llm = sub.add_parser(
        "llm",
        help="prepare GGUF language models (quantize, check-pair, make-draft, rank-drafts)",
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
        metavar="TYPE",
        help=f"target type, one of: {', '.join(QUANT_TYPES)} (overrides --preset's)",
    )
    q.add_argument(
        "--preset",
        metavar="BOARD",
        help=f"board: {', '.join(PRESETS)}; picks the type and writes Y.gguf.json with the "
        "recommended n_threads, n_gpu_layers, n_ctx and the file's sha256 (docs/export-llm.md)",
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
    q.add_argument(
        "--chat-template",
        metavar="FILE",
        help="write this Jinja chat template (tokenizer.chat_template, for `ondevice serve`'s "
        "/v1/chat/completions) into the output; default: the input's own, else for a Gemma 3 "
        "model without one Gemma 3's, else none",
    )
    q.add_argument("--verbose", action="store_true", help="echo llama.cpp's log to stderr")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(handler=_run_llm_quantize)
    _add_llm_check_pair(llm_sub)
    _add_llm_make_draft(llm_sub)
    _add_llm_rank_drafts(llm_sub)


def _run_llm_check_pair(args: argparse.Namespace) -> int:
    from export._check_pair import check_pair

    report = check_pair(
        Path(args.draft),
        Path(args.target),
        _announce,
        progress=False if args.no_progress else None,
    )
    print(report.summary())
    return 0 if report.valid else 1


def _add_llm_check_pair(llm_sub: argparse._SubParsersAction) -> None:
    p = llm_sub.add_parser(
        "check-pair",
        help="is speculative decoding between DRAFT and TARGET valid? (exit 0 only if so)",
        description=(
            "Compare the tokenizers of two GGUF models (read with the gguf package, no weights "
            "loaded): tokenizer model and pre-tokenizer, every token's text, score and type, "
            "merges, special-token ids, add-BOS/EOS flags. Vocabularies that differ only in "
            "UNUSED padding rows are valid and reported as padded. Prints VALID or INVALID and "
            "each difference with token ids and both texts. Exit status: 0 valid, 1 invalid, "
            "2 bad input."
        ),
    )
    p.add_argument("draft", metavar="DRAFT.gguf")
    p.add_argument("target", metavar="TARGET.gguf")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_llm_check_pair)


def _run_llm_make_draft(args: argparse.Namespace) -> int:
    from export._make_draft import make_draft

    result = make_draft(
        Path(args.src),
        Path(args.out),
        keep_layers=args.keep_layers,
        qtype=args.type,
        nthread=args.threads,
        progress=False if args.no_progress else None,
        announce=_announce,
    )
    print(result.summary())
    return 0


def _add_llm_make_draft(llm_sub: argparse._SubParsersAction) -> None:
    from export._quantize import QUANT_TYPES

    p = llm_sub.add_parser(
        "make-draft",
        help="make a draft from a target: keep its first N layers and/or requantize it",
        description=(
            "Write a self-draft of TARGET: --keep-layers N keeps the first N transformer blocks "
            "(block_count and per-layer metadata arrays cut to match; a prefix keeps Gemma's "
            "sliding-window pattern), --type T quantizes to a lower-bit type; one or both. The "
            "result is loaded and run in llama.cpp and must pass check-pair against TARGET."
        ),
    )
    p.add_argument("--from", dest="src", required=True, metavar="TARGET.gguf")
    p.add_argument("--out", required=True, metavar="DRAFT.gguf")
    p.add_argument("--keep-layers", type=_positive_int, metavar="N", help="layers to keep")
    p.add_argument("--type", metavar="T", help=f"quantize to: {', '.join(QUANT_TYPES)}")
    p.add_argument(
        "--threads",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="quantization threads (default 0: all cores)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_llm_make_draft)


def _run_llm_rank_drafts(args: argparse.Namespace) -> int:
    from export._rank_drafts import DEFAULT_PROMPTS, rank_drafts, read_prompts, write_json

    if args.json:  # before minutes of measuring
        check_output_file(Path(args.json), flag="--json", example="rank.json")
    prompts = read_prompts(Path(args.prompts)) if args.prompts else list(DEFAULT_PROMPTS)
    report = rank_drafts(
        Path(args.target),
        [Path(p) for p in args.drafts],
        prompts=prompts,
        rtt_ms=args.rtt_ms,
        max_tokens=args.max_tokens,
        gamma=args.gamma,
        top_k=args.top_k,
        max_b=args.max_b,
        rank_by=0.0 if args.rank_by == "greedy" else 0.8,
        n_threads=args.threads,
        seed=args.seed,
        progress=False if args.no_progress else None,
        announce=_announce,
    )
    print(report.table())
    if args.json:
        write_json(report, Path(args.json))
        print(f"wrote {args.json}")
    return 0


def _add_llm_rank_drafts(llm_sub: argparse._SubParsersAction) -> None:
    from export._rank_drafts import DEFAULT_GAMMA, DEFAULT_MAX_B, DEFAULT_TOP_K

    p = llm_sub.add_parser(
        "rank-drafts",
        help="measure drafts against a target here and rank them by expected speedup",
        description=(
            "For each draft, measure on this machine its speed and its acceptance rate against "
            "TARGET (speculative decoding with the project's rejection sampler, greedy and at "
            "T=0.8), time the target's verification batches, and print a table with the "
            "expected speedup at the best drafting length b for the given link RTT: "
            "N(b)=(1-a^(b+1))/(1-a), T(b)=b*t_draft+t_net+t_verify(b). See docs/export-llm.md."
        ),
    )
    p.add_argument("target", metavar="TARGET.gguf")
    p.add_argument("drafts", nargs="+", metavar="DRAFT.gguf")
    p.add_argument("--prompts", metavar="FILE", help="one prompt per line (default: 8 built in)")
    p.add_argument(
        "--rtt-ms",
        type=float,
        default=5.0,
        metavar="R",
        help="device-edge round-trip time in ms (default 5)",
    )
    p.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=48,
        metavar="N",
        help="tokens generated per prompt and temperature (default 48)",
    )
    p.add_argument(
        "--gamma",
        type=_positive_int,
        default=DEFAULT_GAMMA,
        metavar="K",
        help=f"drafted tokens per measurement round (default {DEFAULT_GAMMA})",
    )
    p.add_argument(
        "--top-k",
        type=_positive_int,
        default=DEFAULT_TOP_K,
        metavar="K",
        help=f"support of the draft's proposal distribution (default {DEFAULT_TOP_K})",
    )
    p.add_argument(
        "--max-b",
        type=_positive_int,
        default=DEFAULT_MAX_B,
        metavar="B",
        help=f"longest drafting length considered (default {DEFAULT_MAX_B})",
    )
    p.add_argument(
        "--rank-by",
        choices=("greedy", "sampled"),
        default="greedy",
        help="rank by expected speedup at T=0 (default) or T=0.8",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="llama.cpp threads per model (default 1: stable timings on busy machines)",
    )
    p.add_argument("--seed", type=_non_negative_int, default=0, metavar="S", help="default 0")
    p.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_llm_rank_drafts)


def build_parser() -> argparse.ArgumentParser:
    """The full `model-export` argument parser (every leaf command sets `handler`)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Make coinfer's test fixtures and prepare models for device and edge.",
    )
    parser.add_argument("--version", action="version",
                        version=f"{PROG} (coinfer) {coinfer_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_fixtures(sub)
    _add_llm(sub)
    add_dnn(sub)
    add_bundle(sub)
    add_wheelhouse(sub)
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
    except ImportError as e:  # an extra this command needs is absent: one line, no traceback
        hint = missing_extra(e)
        if hint is None:
            raise
        print(f"{PROG}: error: {hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
