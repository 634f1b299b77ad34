"""``ondevice bench fleet``: arguments and the run (the benchmark is ``ondevice.bench.fleet``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
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
        "batching GPU edge. Prints a table and ratios, writes fleet.json and fleet.png. "
        "With --edges: sim mode compares 1, 2, 4 ... edges (fleet-edges.png); real mode runs "
        "N edges (each in its own network namespace when root) through a steady phase, a "
        "drain and a kill of one edge (fleet-edges.png: tokens/s over time).")
    p.add_argument("--devices", type=_csv(int), default=None,
                   help="device counts (default 1,2,4,8; real mode with --edges: 8)")
    p.add_argument("--policies", type=_csv(str), default=None,
                   help=f"policies (default {','.join(FLEET_POLICIES)}; real mode with "
                   "--edges: one, gelato)")
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
    p.add_argument("--edge-threads", type=positive_int, default=2,
                   help="edge threads (2; real mode with --edges N: split among the N)")
    p.add_argument("--target", type=Path, help="target GGUF (default Gemma 3 270M)")
    p.add_argument("--draft", type=Path, help="draft GGUF (default its q2_k requantization)")
    p.add_argument("--n-prompts", type=positive_int, default=8, help="prompts in the trace")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    p.add_argument("--json", action="store_true", help="end with the results as one JSON line")
    g = p.add_argument_group("a fleet across edges")
    g.add_argument("--edges", type=_csv(int), default=(1,),
                   help="sim mode: edge counts to compare (e.g. 1,2,4); real mode: N >= 2 "
                   "edges, each in its own network namespace when root (else loopback), "
                   "through the steady, drain and kill phases (default 1: one edge)")
    g.add_argument("--drain-timeout", type=positive_float, default=4.0, metavar="S",
                   help="real mode with --edges: the edges' --drain-timeout (default 4)")
    g.add_argument("--phase-seconds", type=positive_float, default=15.0, metavar="S",
                   help="real mode with --edges: length of each phase (default 15)")
    g.add_argument("--loopback", action="store_true",
                   help="real mode with --edges: all edges on 127.0.0.1 even when root")


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
    across = args.mode == "real" and args.edges != (1,)
    if across and (len(args.edges) != 1 or args.edges[0] < 2):
        print("ondevice bench fleet: real mode takes one --edges N >= 2", file=sys.stderr)
        return 2
    if args.devices is None:
        args.devices = (8,) if across else (1, 2, 4, 8)
    if args.policies is None:
        args.policies = ("gelato",) if across else fleet.FLEET_POLICIES
    if across and (len(args.devices) != 1 or len(args.policies) != 1):
        print("ondevice bench fleet: real mode with --edges takes one --devices count and one "
              "--policies name", file=sys.stderr)
        return 2
    cfg = fleet.FleetConfig(
        mode=args.mode, devices=tuple(args.devices), policies=tuple(args.policies),
        schedulers=tuple(args.scheduler), device_profile=args.device_profile,
        edge_profiles=tuple(args.edge_profile), max_tokens=args.max_tokens,
        power_budget_w=args.power_budget, edge_threads=args.edge_threads,
        join_every_s=args.join_every or 0.0, join_tokens=args.join_tokens,
        edges=tuple(args.edges))

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    target = args.target or gemma_target()
    draft = args.draft or gemma_draft(target)
    longest = max(args.max_tokens, args.join_tokens if args.join_every else 0)
    traces, vocab = _traces(Path(target), Path(draft), args.n_prompts, longest)
    if across:
        return _run_across_edges(args, Path(target), traces, vocab, say)

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
    wrote = [args.out / "fleet.json", args.out / "fleet.png"]
    if cfg.edges != (1,):
        cells = fleet.scaling(rows)
        print("\nthe fleet across edges (sim): aggregate tok/s, x one edge's, sessions per edge")
        for line in fleet.format_scaling(cells):
            print(f"  {line}")
        data["edges_scaling"] = cells
        fleet.build_scaling_figure(cells).savefig(args.out / "fleet-edges.png")
        wrote.append(args.out / "fleet-edges.png")
    (args.out / "fleet.json").write_text(jsonout.dumps(data, indent=1, default=str))
    fleet.write_png(rows, args.out / "fleet.png")
    print(f"\nwrote {', '.join(str(w) for w in wrote[:-1])} and {wrote[-1]}")
    if args.json:
        print(jsonout.dumps(data, default=str))
    return 0


def _run_across_edges(args: argparse.Namespace, target: Path, traces: list, vocab: str,
                      say: Callable[[str], None]) -> int:
    """Real mode with ``--edges N``: the phases of ``ondevice.bench._fleet_edges``, their
    table, fleet.json and fleet-edges.png."""
    from ondevice.bench import fleet
    from ondevice.bench._hardware import CostModel, load_profile

    n_edges = args.edges[0]
    cfg = fleet.EdgesConfig(
        edges=n_edges, devices=args.devices[0], policy=args.policies[0],
        phase_s=args.phase_seconds, drain_timeout_s=args.drain_timeout,
        edge_threads=max(1, args.edge_threads // n_edges), use_netns=not args.loopback,
        power_budget_w=args.power_budget)
    cost = CostModel(load_profile(args.device_profile, "device"),  # type: ignore[arg-type]
                     load_profile("edge-gpu", "edge"))  # type: ignore[arg-type]
    phases, where = asyncio.run(fleet.run_fleet_edges_real(cfg, cost, target, traces, vocab,
                                                           say))
    rows = fleet.phase_rows(phases, n_edges, cfg.policy)
    series = fleet.phase_series(phases)
    print(f"the fleet across edges (real): {n_edges} edges on {where}, {cfg.devices} "
          f"{cfg.policy} devices, {cfg.phase_s:g} s a phase, drain timeout "
          f"{cfg.drain_timeout_s:g} s, {cfg.edge_threads} thread(s) an edge")
    print(fleet.PHASE_HEADER)
    for r in rows:
        print(fleet.format_phase(r))
    print("balance: mean devices per edge (where each one's latest session is) before the "
          "event; opened: sessions placed on each edge; dip: of the steady rate, the worst 1 s "
          "window after the event; recover s: from the event until a 1 s window is back within "
          "10 % of the rate before it; post tok/s: the rate the fleet settled at after it; "
          "settle s: from the event until a 1 s window is within 10 % of that; "
          "moved: sessions resumed on another edge; lost: tokens a "
          "resume lost or repeated, the committed tokens checked against the trace (must be "
          "0); diverged: legs where the edge took its own path (a near-tie); event: the edge "
          "and its exit status (-9: SIGKILL)")
    args.out.mkdir(parents=True, exist_ok=True)
    data = {"config": {k: v for k, v in vars(args).items() if k not in ("handler",)},
            "rig": where, "phases": [r.to_dict() for r in rows], "series": series,
            "energy_source": "modelled (device profile)",
            "devices_real": 0, "devices_replayed": "all (recorded draft trace)"}
    (args.out / "fleet.json").write_text(jsonout.dumps(data, indent=1, default=str))
    fleet.build_timeline_figure(series, rows, cfg.drain_timeout_s).savefig(
        args.out / "fleet-edges.png")
    print(f"\nwrote {args.out / 'fleet.json'} and {args.out / 'fleet-edges.png'}")
    if args.json:
        print(jsonout.dumps(data, default=str))
    return 0 if all(r.lost == 0 for r in rows) else 1
