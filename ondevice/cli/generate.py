"""``ondevice generate``: speculative decoding with a draft here and the target on an edge."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ondevice.cli._edge_access import add_edge_access, edge_access_error, read_token
from ondevice.cli._interrupt import EXIT_INTERRUPTED, Aborted, run_interruptible
from ondevice.common import argtypes
from ondevice.llm.report import format_report

DEFAULT_TOP_K = 32


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ondevice.llm.policies import DEFAULT_V, POLICIES

    p = sub.add_parser(
        "generate",
        help="generate text with a draft model, verified by an edge (speculative decoding)",
        description="Draft tokens on this device and have the edge's target model verify them. "
        "The output follows the target model's distribution exactly (greedy at temperature 0). "
        "Ctrl-C stops after the current round and still prints the text and the report "
        "(exit 130); a second Ctrl-C aborts.",
    )
    p.add_argument("--draft", required=True, help="draft model, a GGUF file")
    p.add_argument(
        "--edge",
        help="edge URL, e.g. http://192.168.1.20:8470 (default: find one with zeroconf)",
    )
    add_edge_access(p)
    d = p.add_mutually_exclusive_group()
    d.add_argument("--discover", action="store_true",
                   help="with --edge: also browse zeroconf, to resume on another edge if it is "
                   "lost (without --edge, discovery is the default)")
    d.add_argument("--no-discover", action="store_true",
                   help="never browse zeroconf; without --edge, run on the draft alone")
    p.add_argument("--require-edge", action="store_true",
                   help="fail (exit 1, with the edge's reason) instead of finishing on the draft "
                   "alone when no edge can be used")
    p.add_argument("--prompt", required=True, type=argtypes.non_empty_text, help="prompt text")
    p.add_argument("--max-tokens", type=argtypes.positive_int, default=128,
                   help="tokens to generate (default 128)")
    p.add_argument("--temperature", type=argtypes.non_negative_float, default=0.0,
                   help="0 = greedy (default)")
    p.add_argument("--seed", type=argtypes.seed, default=0,
                   help="sampling seed, 0..2^63-1 (default 0)")
    p.add_argument("--policy", default="gelato", choices=POLICIES,
                   help="drafting policy (default gelato)")
    p.add_argument("--gamma", type=argtypes.positive_int, default=4,
                   help="tokens per round for --policy fixed (at most the edge's limit)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--power-budget", type=argtypes.positive_float, metavar="W",
                   help="gelato: long-term average device power budget, watts")
    b.add_argument("--energy-per-token", type=argtypes.positive_float, metavar="J",
                   help="gelato: long-term device energy budget per generated token, joules")
    p.add_argument("--V", dest="v", type=argtypes.positive_float, default=DEFAULT_V,
                   help=f"gelato: throughput-vs-energy weight, J per token (default {DEFAULT_V});"
                   " larger V favours tokens/s, smaller V tracks the budget more tightly")
    p.add_argument(
        "--top-k",
        type=argtypes.positive_int,
        default=DEFAULT_TOP_K,
        help="support of the truncated draft distribution sent per drafted token"
        f" (default {DEFAULT_TOP_K})",
    )
    p.add_argument(
        "--meter",
        default="sim",
        help="power meter SPEC, e.g. um25c:/dev/rfcomm0, ina219-serial:/dev/ttyACM0, jetson, "
        "rapl, sim (default sim: a power model, reported as modelled)",
    )
    p.add_argument("--meter-optional", action="store_true",
                   help="generate even if the meter gives no reading (energy reported as none); "
                   "by default a meter that gives none within 3 s is an error")
    p.add_argument("--threads", type=argtypes.positive_int, default=None,
                   help="draft threads (default: the model's sidecar, else all cores)")
    p.add_argument("--n-ctx", type=argtypes.positive_int, default=None,
                   help="draft context tokens (default: the model's sidecar, else 4096)")
    p.add_argument("--edge-timeout", type=argtypes.positive_float, default=15.0,
                   help="seconds per edge reply")
    p.add_argument("--json", action="store_true", help="end with one JSON object on one line")


def draft_config(path: str, *, n_ctx: int | None, n_threads: int | None) -> Any:
    """LlamaConfig for the draft: command-line flags, else the GGUF's sidecar (written by
    ``model-export llm quantize --preset``), else the defaults."""
    from ondevice.common.llama_runtime import LlamaConfig
    from ondevice.common.model_sidecar import load_sidecar

    # A missing model is reported where it is loaded, with the runtime's message.
    runtime = (load_sidecar(path) or {}).get("runtime", {}) if Path(path).is_file() else {}
    default = LlamaConfig()
    gpu = runtime.get("n_gpu_layers")
    return LlamaConfig(
        n_ctx=n_ctx or runtime.get("n_ctx") or default.n_ctx,
        n_threads=n_threads or runtime.get("n_threads") or default.n_threads,
        n_gpu_layers=default.n_gpu_layers if gpu is None else gpu,
    )


def run(args: argparse.Namespace) -> int:
    """Usage errors (bad flags, unreadable token file, unsafe edge access) exit 2, failures to
    run 1, Ctrl-C 130 (after printing what was generated)."""
    from hw import MeterSpecError
    from ondevice.common import wire
    from ondevice.common.llama_runtime import LlamaError
    from ondevice.common.model_sidecar import SidecarError
    from ondevice.llm.generate import (
        EdgePlan,
        EdgeRequired,
        GenerateRequest,
        MeterUnavailable,
        generate,
    )
    from ondevice.llm.policies import make_policy

    try:
        if (args.power_budget is not None or args.energy_per_token is not None) and (
            args.policy != "gelato"
        ):
            raise ValueError("--power-budget/--energy-per-token are for --policy gelato")
        policy = make_policy(args.policy, gamma=args.gamma, v=args.v,
                             power_budget_w=args.power_budget,
                             energy_per_token_j=args.energy_per_token)
        token = read_token(args.token_file)
        problem = edge_access_error(args, token)
        if problem:
            raise ValueError(problem)
    except ValueError as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 2
    plan = EdgePlan(
        url=args.edge,
        fingerprint=args.edge_fingerprint,
        discover=(args.discover or args.edge is None) and not args.no_discover,
        interfaces=tuple(args.interface),
        token=token,
        browse_s=args.browse,
        timeout_s=args.edge_timeout,
        require_edge=args.require_edge,
        allow_plaintext_token=args.allow_plaintext_token,
    )
    request = GenerateRequest(
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        top_k=args.top_k,
    )
    try:
        report, interrupted = run_interruptible(
            lambda stop: generate(
                args.draft,
                request,
                policy,
                plan=plan,
                meter_spec=args.meter,
                llama_config=draft_config(args.draft, n_ctx=args.n_ctx, n_threads=args.threads),
                edge_timeout_s=args.edge_timeout,
                stop=stop,
                require_meter=not args.meter_optional,
            ),
            what="stopping the generation",
        )
    except MeterUnavailable as exc:
        print(f"ondevice: {exc}; check the meter, or pass --meter-optional", file=sys.stderr)
        return 1
    except EdgeRequired as exc:
        print(f"ondevice: --require-edge: {exc}", file=sys.stderr)
        return 1
    except Aborted:
        print("ondevice: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FileNotFoundError, LlamaError, MeterSpecError, ValueError, wire.EdgeError,
            SidecarError) as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 1
    data = report.to_dict()
    print(report.text)
    print(format_report(data), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(data))
    return EXIT_INTERRUPTED if interrupted else 0
