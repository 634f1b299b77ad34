"""``ondevice selftest``: one line that says how llama.cpp was built here and that it runs.

It prints the coinfer version, llama.cpp's backend (CPU, or CUDA with GPU offload) and the CPU
features llama.cpp was compiled with (``NEON``, ``DOTPROD``, ``AVX2``, ...). With ``--model``
it also loads that GGUF (e.g. the draft, or ``model-export fixtures``' tiny ``draft.gguf``),
decodes the BOS token once and reports the load and decode times. Exit 0 when all of that
worked, 1 when llama.cpp could not load or run the model. ``--json``: one JSON object instead.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

from ondevice.common import jsonout
from ondevice.common.version import coinfer_version

HELP = ("print llama.cpp's backend and CPU features; with --model, load it and decode one "
        "token")


def features(system_info: str) -> list[str]:
    """The feature names that llama.cpp's system info line marks ``= 1``, in its order."""
    out = []
    for part in system_info.replace("|", " | ").split("|"):
        key, _, value = part.strip().partition("=")
        name = key.strip().split(":")[-1].strip()
        if value.strip() == "1" and name and name not in out:
            out.append(name)
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selftest", help=HELP)
    p.add_argument("--model", type=Path, metavar="X.gguf", help="a GGUF to load and run once")
    p.add_argument("--json", action="store_true", help="one JSON object")


def run(args: argparse.Namespace) -> int:
    from ondevice.common.llama_runtime import (
        LlamaConfig,
        LlamaError,
        LlamaModel,
        LlamaRunner,
        gpu_offload_supported,
        system_info,
    )

    info = system_info()
    gpu = gpu_offload_supported()
    report: dict[str, Any] = {
        "coinfer": coinfer_version(), "machine": platform.machine(),
        "backend": "CPU+GPU offload" if gpu else "CPU", "features": features(info),
    }
    ok = True
    if args.model is not None:
        try:
            t0 = time.perf_counter()
            model = LlamaModel(args.model, n_gpu_layers=1_000_000 if gpu else 0)
            t1 = time.perf_counter()
            runner = LlamaRunner(model, LlamaConfig(n_ctx=64, n_batch=8))
            runner.eval([model.bos], n_logits=1)
            t2 = time.perf_counter()
            runner.close()
            model.close()
            report.update(model=args.model.name, load_ms=round((t1 - t0) * 1e3, 1),
                          decode_ms=round((t2 - t1) * 1e3, 1))
        except (LlamaError, OSError, ValueError) as exc:
            report["error"] = str(exc)
            ok = False
    if args.json:
        print(jsonout.dumps(report, sort_keys=True))
    else:
        model = (f"; loaded {report['model']} in {report['load_ms']} ms, one decode "
                 f"{report['decode_ms']} ms" if "model" in report else "")
        err = f"; ERROR {report['error']}" if "error" in report else ""
        print(f"coinfer {report['coinfer']} on {report['machine']}: llama.cpp backend "
              f"{report['backend']}, features {' '.join(report['features']) or 'none'}"
              f"{model}{err}")
    return 0 if ok else 1
