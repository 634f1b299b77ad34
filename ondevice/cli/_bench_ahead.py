"""``ondevice bench ahead``: arguments and the run (the benchmark is ``ondevice.bench.ahead``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ondevice.common import jsonout
from ondevice.common.argtypes import non_negative_float, positive_int

DEFAULT_OUT = Path("bench-out")


def add_ahead_parser(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser(
        "ahead", help="drafting ahead against a distant edge: with and without, side by side",
        description="A real edge-server that holds every reply --delay-ms (a far edge) in one "
        "network namespace, the device in another (loopback when namespaces need root and "
        "this is not root: the report says which); fixed gamma and gelato each with and "
        "without drafting ahead, interleaved per prompt. Prints a table and the ratios, "
        "writes ahead.json and ahead.png. Tokens/s measured, J/token modelled.")
    p.add_argument("--delay-ms", type=non_negative_float, default=20.0,
                   help="held before every edge reply (default 20)")
    p.add_argument("--loopback", action="store_true",
                   help="run on loopback even where namespaces are available")
    p.add_argument("--gamma", type=positive_int, default=4, help="fixed gamma (default 4)")
    p.add_argument("--ahead", type=positive_int, default=8,
                   help="tokens the fixed policy drafts ahead (default 8)")
    p.add_argument("--max-tokens", type=positive_int, default=64, help="tokens per prompt (64)")
    p.add_argument("--n-prompts", type=positive_int, default=4,
                   help="first N built-in prompts (default 4)")
    p.add_argument("--target", type=Path, help="target GGUF (default Gemma 3 270M)")
    p.add_argument("--draft", type=Path, help="draft GGUF (default its q2_k requantization)")
    p.add_argument("--threads", type=positive_int, default=1, help="draft threads (1)")
    p.add_argument("--edge-threads", type=positive_int, default=1, help="edge threads (1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    p.add_argument("--json", action="store_true", help="end with the results as one JSON line")


def run_ahead(args: argparse.Namespace) -> int:
    from ondevice.bench.ahead import (
        default_policies,
        format_ahead,
        run_ahead_bench,
        write_ahead,
    )
    from ondevice.bench.trace import DEFAULT_PROMPTS

    if (args.target is None) != (args.draft is None):
        print("ondevice bench ahead: give both --target and --draft, or neither",
              file=sys.stderr)
        return 2
    if args.target is None:
        from ondevice.llm.gemma import gemma_draft, gemma_target

        target = gemma_target()
        draft = gemma_draft(target)
    else:
        target, draft = args.target, args.draft
    prompts = DEFAULT_PROMPTS[: args.n_prompts]
    pols = default_policies(args.gamma, args.ahead)
    total = len(prompts) * len(pols)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        print(f"  {done[0]}/{total} generations", file=sys.stderr, flush=True)

    try:
        bench = run_ahead_bench(target, draft, prompts, max_tokens=args.max_tokens,
                                delay_ms=args.delay_ms, use_netns=not args.loopback,
                                policies=pols, threads=args.threads,
                                edge_threads=args.edge_threads, progress=tick)
    except RuntimeError as exc:
        print(f"ondevice bench ahead: {exc}", file=sys.stderr)
        return 1
    print(format_ahead(bench))
    js, png = write_ahead(bench, args.out)
    print(f"wrote {js} and {png}")
    if args.json:
        print(jsonout.dumps(json.loads(js.read_text())))
    return 0
