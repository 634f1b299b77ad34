"""``ondevice bench fleet``: arguments and the run (the benchmark is ``ondevice.bench.fleet``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ondevice.common import jsonout
from ondevice.common.argtypes import positive_float, positive_int

DEFAULT_OUT = Path("bench-out")


def _csv(kind: type) -> object:
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values
    return parse


def add_fleet_parser(bsub: argparse._SubParsersAction) -> None:
    from ondevice.bench.fleet import FLEET_POLICIES

    p = bsub.add_parser(
        "fleet", help="many devices, one edge: batched vs serial edge scheduling",
        description="N devices share one edge. Real mode: one real edge-server on loopback "
        "(Gemma 3 270M), devices replay the real draft's trace at a device profile's speed "
        "(the edge does all its real work). Sim mode: the same devices against a modelled "
        "batching GPU edge. Prints a table and ratios, writes fleet.json and fleet.png.")
    p.add_argument("--devices", type=_csv(int), default=(1, 2, 4, 8),
                   help="device counts (default 1,2,4,8)")
    p.add_argument("--policies", type=_csv(str), default=FLEET_POLICIES,
                   help=f"policies (default {','.join(FLEET_POLICIES)})")
    p.add_argument("--mode", choices=("real", "sim"), default="real")
    p.add_argument("--scheduler", type=_csv(str), default=("batched", "serial"),
                   help="edge schedulers to compare (default batched,serial)")
    p.add_argument("--device-profile", default="rpi5", help="device speed and power (rpi5)")
    p.add_argument("--edge-profile", type=_csv(str), default=("edge-gpu", "edge-gpu-32k"),
                   help="sim mode: edge profiles (default edge-gpu,edge-gpu-32k)")
    p.add_argument("--max-tokens", type=positive_int, default=48, help="tokens per device")
    p.add_argument("--power-budget", type=positive_float, metavar="W",
                   help="gelato's device power budget (modelled)")
    p.add_argument("--join-every", type=positive_float, metavar="S",
                   help="real mode: also a run where gelato devices join one every S seconds")
    p.add_argument("--join-tokens", type=positive_int, default=400,
                   help="tokens per device in the joining run (default 400)")
    p.add_argument("--edge-threads", type=positive_int, default=2, help="edge threads (2)")
    p.add_argument("--target", type=Path, help="target GGUF (default Gemma 3 270M)")
    p.add_argument("--draft", type=Path, help="draft GGUF (default its q2_k requantization)")
    p.add_argument("--n-prompts", type=positive_int, default=8, help="prompts in the trace")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    p.add_argument("--json", action="store_true", help="end with the results as one JSON line")


def _traces(target: Path, draft: Path, n_prompts: int, max_tokens: int) -> tuple[list, str]:
    """The pair's trace along the target's greedy path, with prompt ids (cached), and the
    vocabulary hash."""
    import hashlib
    import os

    from ondevice.bench.fleet import prompt_traces
    from ondevice.bench.trace import DEFAULT_PROMPTS, Trace, record_trace
    from ondevice.common.llama_runtime import LlamaModel

    prompts = list(DEFAULT_PROMPTS[:n_prompts])
    key = hashlib.sha256(f"{target.resolve()}|{draft.resolve()}|{prompts}|{max_tokens}"
                         .encode()).hexdigest()[:12]
    cache = Path(os.environ.get("COINFER_CACHE") or Path.home() / ".cache" / "coinfer")
    path = cache / f"fleet-trace-{key}.json"
    with LlamaModel(target) as m:
        ids = [m.tokenize(p) for p in prompts]
        vocab = m.vocab_hash()
    if path.is_file():
        trace = Trace.load(path)
    else:
        print(f"recording the draft's trace ({len(prompts)} prompts x {max_tokens} tokens, "
              "once)", file=sys.stderr, flush=True)
        trace = record_trace(target, draft, prompts, max_tokens=max_tokens + 2)
        cache.mkdir(parents=True, exist_ok=True)
        trace.save(path)
    return prompt_traces(trace, ids), vocab


def run_fleet(args: argparse.Namespace) -> int:
    from ondevice.bench import fleet
    from ondevice.llm.gemma import gemma_draft, gemma_target

    for s in args.scheduler:
        if s not in ("batched", "serial"):
            print(f"ondevice bench fleet: unknown scheduler {s!r}", file=sys.stderr)
            return 2
    cfg = fleet.FleetConfig(
        mode=args.mode, devices=tuple(args.devices), policies=tuple(args.policies),
        schedulers=tuple(args.scheduler), device_profile=args.device_profile,
        edge_profiles=tuple(args.edge_profile), max_tokens=args.max_tokens,
        power_budget_w=args.power_budget, edge_threads=args.edge_threads,
        join_every_s=args.join_every or 0.0, join_tokens=args.join_tokens)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    target = args.target or gemma_target()
    draft = args.draft or gemma_draft(target)
    longest = max(args.max_tokens, args.join_tokens if args.join_every else 0)
    traces, vocab = _traces(Path(target), Path(draft), args.n_prompts, longest)
    def table_row(row: fleet.FleetRow) -> None:  # the table, printed once, as it is measured
        print(fleet.format_row(row), flush=True)

    print(fleet.HEADER, flush=True)
    join: dict = {}
    if cfg.mode == "real":
        rows, join = asyncio.run(fleet.run_fleet_real(cfg, Path(target), traces, vocab, say,
                                                      table_row))
    else:
        rows = fleet.run_fleet_sim(cfg, traces, table_row)
    print("\nratios (side by side in this run):")
    for line in fleet.ratios(rows):
        print(f"  {line}")
    if join:
        print("\njoining run (gelato, modelled power against the budget):")
        for d in join["devices"]:
            ratio = d["budget_ratio"]
            drafted = "-" if d["mean_drafted"] is None else f"{d['mean_drafted']:.2f}"
            batch = "-" if d["mean_batch"] is None else f"{d['mean_batch']:.1f}"
            print(f"  device {d['device']} joined at {d['joined_s']:.1f} s: "
                  f"{d['tokens_per_s']:.1f} tok/s, mean drafted {drafted}, batch {batch}"
                  + (f", power {ratio:.1%} of the budget" if ratio is not None else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    data = {"config": {k: v for k, v in vars(args).items() if k not in ("handler",)},
            "rows": [r.to_dict() for r in rows], "joining": join,
            "energy_source": "modelled (device profile)",
            "devices_real": 0, "devices_replayed": "all (recorded draft trace)"}
    (args.out / "fleet.json").write_text(jsonout.dumps(data, indent=1, default=str))
    fleet.write_png(rows, args.out / "fleet.png")
    print(f"\nwrote {args.out / 'fleet.json'} and {args.out / 'fleet.png'}")
    if args.json:
        print(jsonout.dumps(data, default=str))
    return 0
