"""``ondevice bench ahead``: what drafting ahead gains against a distant edge, side by side.

Two hosts (``_netns.two_hosts``: a device and an edge namespace joined by a veth pair; loopback
when namespaces are not available, and the report says so): a real ``edge-server`` in the edge
namespace holds every reply ``delay_ms`` (``--emulate-delay-ms``: a far edge), and the device
namespace runs ``ondevice generate`` once per (prompt, policy), the policies interleaved per
prompt so that the machine's drift falls on all of them alike. Policies: fixed gamma with and
without drafting ahead, gelato with drafting ahead off and on (its own choice). Tokens/s are
measured; J/token is modelled by the ``sim`` meter (labelled so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ondevice.bench._netns import Host, NetnsUnavailable, two_hosts
from ondevice.common import jsonout
from ondevice.edge.local import edge_child


@dataclass(frozen=True, slots=True)
class AheadPolicy:
    """One column of the comparison: ``ondevice generate`` flags and a label."""

    label: str
    args: tuple[str, ...]


def default_policies(gamma: int = 4, ahead: int = 8) -> list[AheadPolicy]:
    return [
        AheadPolicy(f"fixed-{gamma}", ("--policy", "fixed", "--gamma", str(gamma),
                                       "--draft-ahead", "0")),
        AheadPolicy(f"fixed-{gamma} +{ahead} ahead", ("--policy", "fixed", "--gamma",
                                                      str(gamma), "--draft-ahead", str(ahead))),
        AheadPolicy("gelato, no drafting ahead", ("--policy", "gelato", "--draft-ahead", "0")),
        AheadPolicy("gelato", ("--policy", "gelato")),
    ]


@dataclass(slots=True)
class AheadRow:
    """Totals of one policy over every prompt."""

    label: str
    tokens: int = 0
    time_s: float = 0.0
    energy_j: float = 0.0
    rounds: int = 0
    ahead_drafted: int = 0
    ahead_hits: int = 0
    degraded: int = 0
    runs: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.time_s if self.time_s > 0 else 0.0

    @property
    def j_per_token(self) -> float:
        return self.energy_j / self.tokens if self.tokens else float("nan")


@dataclass(slots=True)
class AheadBench:
    rows: list[AheadRow]
    rig: str  # "netns" or "loopback"
    rig_note: str
    delay_ms: float
    meta: dict[str, Any] = field(default_factory=dict)

    def ratio(self, a: str, b: str) -> float | None:
        ra = next((r for r in self.rows if r.label == a), None)
        rb = next((r for r in self.rows if r.label == b), None)
        if ra is None or rb is None or not rb.tokens_per_s:
            return None
        return ra.tokens_per_s / rb.tokens_per_s


@contextlib.contextmanager
def _rig(use_netns: bool) -> Iterator[tuple[Host | None, Host | None, str]]:
    """(device host, edge host, note); Nones mean loopback."""
    if use_netns:
        try:
            with two_hosts(subnet="10.231.78") as (dev, edge):
                yield dev, edge, f"two network namespaces, veth {dev.ip} <-> {edge.ip}"
                return
        except NetnsUnavailable as exc:
            note = f"loopback: no namespaces here ({exc})"
    else:
        note = "loopback (asked)"
    yield None, None, note


def _generate(dev: Host | None, draft: Path, url: str, prompt: str, max_tokens: int,
              threads: int, n_ctx: int, policy: AheadPolicy) -> dict[str, Any]:
    prefix = list(dev.prefix) if dev is not None else []
    cmd = [*prefix, sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(draft),
           "--edge", url, "--no-discover", "--prompt", prompt, "--max-tokens",
           str(max_tokens), "--temperature", "0", "--meter", "sim", "--threads", str(threads),
           "--n-ctx", str(n_ctx), "--json", *policy.args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{policy.label}: ondevice generate failed ({done.returncode}): "
                           f"{done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_ahead_bench(
    target: Path, draft: Path, prompts: Sequence[str], *, max_tokens: int = 64,
    delay_ms: float = 20.0, use_netns: bool = True, policies: Sequence[AheadPolicy] = (),
    threads: int = 1, edge_threads: int = 1, n_ctx: int = 1024,
    progress: Callable[[int], None] = lambda n: None,
) -> AheadBench:
    """Every policy on every prompt against one delayed edge (see the module docstring)."""
    pols = list(policies) or default_policies()
    rows = {p.label: AheadRow(p.label) for p in pols}

    async def bench(dev: Host | None, edge: Host | None) -> None:
        args = ["--model", str(target), "--host", edge.ip if edge else "127.0.0.1", "--port",
                "0", "--no-advertise", "--emulate-delay-ms", f"{delay_ms:g}", "--threads",
                str(edge_threads), "--n-ctx", str(n_ctx)]
        async with edge_child(args, quiet=True, prefix=edge.prefix if edge else ()) as url:
            for prompt in prompts:
                for p in pols:
                    rep = await asyncio.to_thread(_generate, dev, draft, url, prompt,
                                                  max_tokens, threads, n_ctx, p)
                    _add(rows[p.label], rep)
                    progress(1)

    with _rig(use_netns) as (dev, edge, note):
        asyncio.run(bench(dev, edge))
    return AheadBench(list(rows.values()), "netns" if dev is not None else "loopback", note,
                      delay_ms, meta={"target": target.name, "draft": draft.name,
                                      "prompts": list(prompts), "max_tokens": max_tokens,
                                      "threads": threads, "edge_threads": edge_threads})


def _add(r: AheadRow, rep: dict[str, Any]) -> None:
    """Fold one ``ondevice generate --json`` report into a policy's totals."""
    r.tokens += int(rep["n_tokens"])
    r.time_s += float(rep["elapsed_s"])
    r.energy_j += float(rep["energy_j"] or 0.0)
    r.rounds += int(rep["rounds"])
    r.ahead_drafted += int(rep.get("ahead_drafted") or 0)
    r.ahead_hits += int(rep.get("ahead_hits") or 0)
    r.degraded += int(bool(rep["degraded"]))
    r.runs += 1


def format_ahead(bench: AheadBench) -> str:
    lines = [f"rig: {bench.rig_note}; every edge reply held {bench.delay_ms:g} ms; "
             "J/token modelled (sim meter)",
             f"{'policy':<28} {'tok/s':>7} {'J/tok':>8} {'rounds':>6} {'ahead':>6} {'hits':>5}"
             f" {'degraded':>8}",
             "-" * 74]
    for r in bench.rows:
        lines.append(f"{r.label:<28} {r.tokens_per_s:>7.2f} {r.j_per_token:>8.4f} "
                     f"{r.rounds:>6} {r.ahead_drafted:>6} {r.ahead_hits:>5} {r.degraded:>8}")
    labels = [r.label for r in bench.rows]
    pairs = [(labels[i + 1], labels[i]) for i in range(0, len(labels) - 1, 2)]
    for a, b in pairs:
        ratio = bench.ratio(a, b)
        if ratio is not None:
            lines.append(f"{a} / {b}: {ratio:.3f}x tokens/s (same run)")
    return "\n".join(lines)


def write_ahead(bench: AheadBench, out: Path) -> tuple[Path, Path]:
    """``ahead.json`` and ``ahead.png`` (tokens/s and J/token per policy) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    data = {"rig": bench.rig, "rig_note": bench.rig_note, "delay_ms": bench.delay_ms,
            "energy_source": "modelled", "meta": bench.meta,
            "rows": [{**asdict(r), "tokens_per_s": r.tokens_per_s,
                      "j_per_token": r.j_per_token} for r in bench.rows]}
    js = out / "ahead.json"
    js.write_text(jsonout.dumps(data, indent=2))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r.label for r in bench.rows]
    a1.barh(names, [r.tokens_per_s for r in bench.rows], color="tab:blue")
    a1.set_xlabel("tokens/s (measured)")
    a2.barh(names, [r.j_per_token for r in bench.rows], color="tab:orange")
    a2.set_xlabel("J/token (modelled)")
    a2.set_yticks([])
    fig.suptitle(f"drafting ahead, edge replies held {bench.delay_ms:g} ms ({bench.rig})")
    fig.tight_layout()
    png = out / "ahead.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return js, png
