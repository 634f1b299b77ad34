"""``bench gelato --mode real``: the real models end to end over loopback, policies interleaved.

One ``edge-server`` child process on 127.0.0.1 (no zeroconf advertisement) serves the target;
this process drafts through ``Generation`` exactly as ``ondevice generate`` does, with one
draft model and one meter for the whole run. On a machine with two or more cores the device
side is pinned to one core and the edge to another, and the draft uses one thread, so the
device is a one-core device whatever else the machine does.

Interleaving: for every (seed, prompt) every policy runs once, in an order rotated from one
prompt to the next, so slow spells of a shared machine hit all policies alike. Each policy is
one object for the whole run (its estimates, queue and budget are long-run), fed the same
prompts and seeds as the others. Energy is whatever ``--meter`` reports: ``sim`` is modelled
(labelled so), a real meter is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hw import Activity, open_meter
from ondevice.bench._specs import (
    BenchConfig,
    PolicySpec,
    choose_budgets,
    first_specs,
    second_specs,
)
from ondevice.bench.report import BenchRow
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner
from ondevice.edge.local import edge_child
from ondevice.llm.generate import METER_WAIT_S, EdgePlan, GenerateRequest, Generation
from ondevice.llm.policies import Policy
from ondevice.llm.round_account import RoundTally

EDGE_STARTUP_S = 120.0  # s for the edge to load its model and listen
LOOPBACK = "127.0.0.1"
CONTROL_LABEL = "edge-only (phase 2)"  # the drift control, see _bench


@dataclass(frozen=True, slots=True, kw_only=True)
class RealConfig:
    """The models, prompts and machine settings of a real run."""

    target: Path
    draft: Path
    prompts: tuple[str, ...]
    max_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 32
    meter: str = "sim"
    draft_threads: int = 1
    edge_threads: int = 1
    n_ctx: int = 1024
    pin: bool = True


@dataclass(slots=True)
class RealBench:
    rows: list[BenchRow]
    info: dict[str, Any] = field(default_factory=dict)


def pick_cores(pin: bool) -> tuple[int, int] | None:
    """(device core, edge core) when pinning is asked for and two cores are ours."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return (cores[0], cores[1]) if len(cores) >= 2 else None


def run_real_bench(rc: RealConfig, cfg: BenchConfig, *,
                   progress: Callable[[int], None] | None = None,
                   set_total: Callable[[int], None] | None = None) -> RealBench:
    """Pin (if asked and possible), run the benchmark, restore this thread's affinity.

    Pinning happens here, before the event loop and its worker threads exist, so llama.cpp's
    calls (made from those threads) inherit the device core.
    """
    cores = pick_cores(rc.pin)
    before = os.sched_getaffinity(0) if cores else None
    if cores:
        os.sched_setaffinity(0, {cores[0]})
    try:
        return asyncio.run(_bench(rc, cfg, cores, progress or (lambda n: None),
                                  set_total or (lambda n: None)))
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)


def loopback_edge(rc: RealConfig, core: int | None) -> contextlib.AbstractAsyncContextManager[str]:
    """``edge-server`` for ``rc.target`` on 127.0.0.1, pinned to ``core``; yields its URL."""
    return edge_child(
        ["--model", str(rc.target), "--host", LOOPBACK, "--port", "0", "--no-advertise",
         "--threads", str(rc.edge_threads), "--n-ctx", str(rc.n_ctx)],
        core=core, quiet=True, startup_s=EDGE_STARTUP_S,
    )


@dataclass(slots=True)
class _Acc:
    """A policy's totals over its generations."""

    spec: PolicySpec
    policy: Policy
    tally: RoundTally = field(default_factory=RoundTally)  # tokens, s, J, rounds, drafted, ...
    coverage: list[float] = field(default_factory=list)
    source: str = "modelled"
    degraded: int = 0
    outputs: dict[tuple[int, str], tuple[int, ...]] = field(default_factory=dict)
    tie_prompts: dict[tuple[int, str], int] = field(default_factory=dict)  # near-ties per run
    near_ties: int | None = None  # the edge's count over all generations (temperature 0)

    def row(self) -> BenchRow:
        s, t = self.spec, self.tally
        return BenchRow(
            policy=s.label, group=s.group, tokens=t.tokens, time_s=t.time_s,
            energy_j=t.energy_j, rounds=t.rounds, drafted=t.drafted,
            accepted=t.accepted, v=s.v if s.name == "gelato" else None,
            budget_w=s.power_budget_w, budget_j_per_token=s.energy_per_token_j,
            energy_source=self.source,
            settings={**self.policy.describe(), "degraded_generations": self.degraded,
                      "mean_meter_coverage": (sum(self.coverage) / len(self.coverage)
                                              if self.coverage else None),
                      "near_ties": self.near_ties},
        )


def greedy_agreement(accs: Sequence[_Acc]) -> dict[str, Any] | None:
    """At temperature 0, each lossless policy's outputs against ``edge-only``'s (the target
    alone), prompt by prompt: how many are the same tokens, and for those that differ, how
    many the edge counted no near-tie in (for either run): a difference a near-tie does not
    explain. None without an edge-only policy."""
    ref = next((a for a in accs if a.spec.name == "edge-only"), None)
    if ref is None:
        return None
    out: dict[str, Any] = {}
    for acc in accs:
        if acc is ref or acc.spec.name == "device-only":  # the draft's own text
            continue
        differ = [k for k, toks in acc.outputs.items() if ref.outputs.get(k) != toks]
        out[acc.spec.label] = {
            "compared": len(acc.outputs), "same": len(acc.outputs) - len(differ),
            "differ": len(differ),
            "differ_without_near_tie": sum(
                1 for k in differ if not (acc.tie_prompts.get(k) or ref.tie_prompts.get(k))),
        }
    return out


async def _bench(rc: RealConfig, cfg: BenchConfig, cores: tuple[int, int] | None,
                 tick: Callable[[int], None], set_total: Callable[[int], None]) -> RealBench:
    llama_cfg = LlamaConfig(n_ctx=rc.n_ctx, n_threads=rc.draft_threads)
    model = await asyncio.to_thread(LlamaModel, rc.draft)
    try:
        runner = await asyncio.to_thread(LlamaRunner, model, llama_cfg)
        try:
            activity = Activity()
            async with loopback_edge(rc, cores[1] if cores else None) as url, \
                    open_meter(rc.meter, activity=activity) as meter:
                await meter.async_wait_sample(METER_WAIT_S)

                async def phase(specs: Sequence[PolicySpec]) -> list[BenchRow]:
                    accs = [_Acc(s, s.make()) for s in specs]
                    n = 0
                    for seed in cfg.seeds:
                        for prompt in rc.prompts:
                            k = n % len(accs)
                            for acc in accs[k:] + accs[:k]:  # rotated: no policy always first
                                await _one(acc, prompt, seed, url, model, runner, meter,
                                           activity, llama_cfg, rc)
                                tick(1)
                            n += 1
                    if rc.temperature == 0.0:
                        agreement.update(greedy_agreement(accs) or {})
                    return [a.row() for a in accs]

                agreement: dict[str, Any] = {}
                first = first_specs(cfg)
                per_spec = len(cfg.seeds) * len(rc.prompts)
                set_total(len(first) * per_spec)
                rows = await phase(first)
                info = choose_budgets(rows, cfg)
                second = second_specs(cfg, sweep_power_w=info["sweep_power_w"],
                                      sweep_j_per_token=info["sweep_j_per_token"],
                                      matched_j_per_token=info["matched_j_per_token"])
                if second and "edge-only" in cfg.policies:
                    # Phase two is not interleaved with phase one: rerun the cheapest baseline
                    # beside it, so the report can show how much the machine drifted between.
                    second.append(PolicySpec(label=CONTROL_LABEL, group="control",
                                             name="edge-only"))
                set_total((len(first) + len(second)) * per_spec)
                rows += await phase(second)
                info.update(meter=meter.kind, measured=meter.measured, edge=url,
                            greedy_vs_edge_only=agreement or None,
                            cores={"device": cores[0], "edge": cores[1]} if cores else None,
                            cpu_count=os.cpu_count())
                return RealBench(rows, info)
        finally:
            await asyncio.to_thread(runner.close)
    finally:
        await asyncio.to_thread(model.close)


async def _one(acc: _Acc, prompt: str, seed: int, url: str, model: LlamaModel,
               runner: LlamaRunner, meter: Any, activity: Activity, llama_cfg: LlamaConfig,
               rc: RealConfig) -> None:
    """One generation of ``acc``'s policy, added to its totals."""
    # A cold cache for every run: no policy inherits another's prompt prefill.
    await asyncio.to_thread(runner.truncate, 0)
    request = GenerateRequest(prompt=prompt, max_tokens=rc.max_tokens,
                              temperature=rc.temperature, seed=seed, top_k=rc.top_k)
    gen = Generation(model, request, acc.policy, plan=EdgePlan(url=url, discover=False),
                     meter=meter, activity=activity, llama_config=llama_cfg)
    report = await gen.run(runner)
    acc.tally.add(RoundTally(tokens=report.n_tokens, time_s=report.elapsed_s,
                             energy_j=report.energy_j,  # type: ignore[arg-type]
                             rounds=report.rounds, drafted=report.drafted,
                             accepted=report.accepted))
    acc.coverage.append(report.meter_coverage)
    acc.source = report.energy_source
    acc.degraded += int(report.degraded)
    acc.outputs[(seed, prompt)] = tuple(report.tokens)
    if report.near_ties is not None:
        acc.near_ties = (acc.near_ties or 0) + report.near_ties
        acc.tie_prompts[(seed, prompt)] = report.near_ties


__all__ = ["RealBench", "RealConfig", "greedy_agreement", "loopback_edge", "pick_cores",
           "run_real_bench"]
