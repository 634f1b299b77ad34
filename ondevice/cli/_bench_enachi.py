"""``ondevice bench enachi``: arguments and the run (the benchmark is ``ondevice.bench.enachi``).

The scenario flags adjust the model's default ``Scenario``; the models are ``--dnn``
directories, or ``--model`` names exported once into the cache (``model-export dnn split``
as a child process: the device package never imports the export package).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ondevice.bench._enachi_report import Row, evaluate, format_table, write_json, write_png
from ondevice.bench.enachi import QUICK, SCENARIOS, Scenario, model_rows
from ondevice.common import jsonout


def add_enachi_parser(bsub: argparse._SubParsersAction) -> None:
    """``ondevice bench enachi`` arguments."""
    p = bsub.add_parser(
        "enachi", help="ENACHI against fixed split, no progressive, constant power, edge/device "
        "only; energy per device versus users",
        description="Run split inference for real over loopback (an edge-server subprocess, "
        "onnxruntime heads and tails, emulated channel) and compare policies per deadline, "
        "the power budget, and energy per device versus users. Prints a table; writes JSON "
        "and a PNG to --out.")
    p.add_argument("--dnn", action="append", default=[], type=Path, metavar="DIR",
                   help="split model directories (default: digits-cnn, exported into the "
                   "cache on first use, and efficientnet-lite0 when --model names it)")
    p.add_argument("--model", action="append", default=[],
                   choices=sorted(SCENARIOS), help="export (once, cached) and bench this model")
    p.add_argument("--deadline-ms", type=str, help="comma-separated deadlines (default: the "
                   "model's scenario)")
    p.add_argument("--users", type=int, help="largest user count (default 8: 1,2,4,8)")
    p.add_argument("--tasks", type=int, help="tasks per policy run")
    p.add_argument("--channel", help="emulated channel SPEC without seed (default: scenario)")
    p.add_argument("--device-slowdown", type=float, help="default: scenario")
    p.add_argument("--seed", type=int, default=0, help="channel seed (default 0)")
    p.add_argument("--quick", action="store_true", help="a short setting (CI)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="output directory")
    p.add_argument("--json", action="store_true", help="end with the results as one JSON line")


def _scenario(args: argparse.Namespace, name: str) -> Scenario:
    sc = SCENARIOS.get(name, SCENARIOS["digits-cnn"])
    if args.quick:
        sc = replace(sc, **QUICK)  # type: ignore[arg-type]
    if args.deadline_ms:
        sc = replace(sc, deadlines_ms=tuple(float(x) for x in args.deadline_ms.split(",")))
    if args.users:
        ns = tuple(n for n in (1, 2, 4, 8, 16, 32) if n < args.users) + (args.users,)
        sc = replace(sc, users=ns)
    if args.tasks:
        sc = replace(sc, tasks=args.tasks)
    if args.channel:
        sc = replace(sc, channel=args.channel)
    if args.device_slowdown:
        sc = replace(sc, device_slowdown=args.device_slowdown)
    return sc


def _dnn_dirs(args: argparse.Namespace, say: Callable[[str], None]) -> list[tuple[str, Path]]:
    """(model name, directory) to bench: --dnn dirs, then --model names (exported once into
    the cache), default digits-cnn plus efficientnet-lite0 if its split is in the cache."""
    from ondevice.common.dnn_profile import load_dnn

    out = [(load_dnn(d).name, Path(d)) for d in args.dnn]
    names = list(args.model)
    if not out and not names:  # digits-cnn, and EfficientNet-Lite0 when its split exists
        names = ["digits-cnn"]
        cached = cache_dir() / "bench-dnn" / "efficientnet-lite0" / "profile.json"
        if cached.is_file() and not args.quick:
            names.append("efficientnet-lite0")
    for name in names:
        d = cache_dir() / "bench-dnn" / name
        if not (d / "profile.json").is_file():
            say(f"exporting {name} into {d} (once; model-export dnn split) ...")
            export_split(name, d)
        out.append((name, d))
    return out


def export_split(name: str, out: Path) -> None:
    """Run ``model-export dnn split --model NAME --out OUT`` (the workstation's tool, torch and
    all) as a child process: the device package never imports the export package."""
    import subprocess

    cmd = [sys.executable, "-m", "export", "dnn", "split", "--model", name, "--out", str(out),
           "--splits", "auto", "--seed", "0"]
    try:
        subprocess.run(cmd, check=True, stdout=sys.stderr)  # stdout holds the table
    except subprocess.CalledProcessError as exc:
        raise SystemExit(
            f"ondevice bench enachi: exporting {name} failed (exit {exc.returncode}); the export "
            "needs pip install 'coinfer[export]', or pass --dnn DIR from model-export dnn split"
        ) from None


def cache_dir() -> Path:
    """``$COINFER_CACHE`` or ``~/.cache/coinfer``."""
    import os

    return Path(os.environ.get("COINFER_CACHE") or Path.home() / ".cache" / "coinfer")


def run_enachi(args: argparse.Namespace) -> int:
    """``ondevice bench enachi``: run, print the table and targets, write JSON and PNG."""

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        dirs = _dnn_dirs(args, say)
        rows: list[Row] = []
        scenarios: dict[str, Any] = {}
        for name, d in dirs:
            sc = _scenario(args, name)
            scenarios[name] = {**asdict(sc), "dnn_dir": str(d)}
            rows += asyncio.run(model_rows(name, d, sc, seed=args.seed, say=say))
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        print(f"ondevice bench enachi: {exc}", file=sys.stderr)
        return 1
    targets = evaluate(rows)
    print(format_table(rows, targets))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "enachi"
    write_json(stem.with_suffix(".json"), rows, targets, {"scenarios": scenarios,
                                                          "seed": args.seed,
                                                          "quick": args.quick})
    write_png(stem.with_suffix(".png"), rows)
    (args.out / "enachi.txt").write_text(format_table(rows, targets) + "\n")
    print(f"wrote {stem}.json, {stem}.png, {args.out / 'enachi.txt'}")
    if args.json:
        print(jsonout.dumps({"targets": targets, "rows": [r.to_dict() for r in rows]}))
    return 0
