"""The ENACHI benchmark: ENACHI against its baselines, per deadline and per user count.

Everything runs for real over loopback: an ``edge-server --dnn DIR`` subprocess serves the
tails (onnxruntime), each device is `ondevice.dnn.run.run_classify` (the code behind
``ondevice classify``: INT8 heads on onnxruntime, the progressive packet loop, the controller)
with its own ``sim`` meter and its own emulated channel, seeded identically across policies.
Data: digits-cnn on load_digits' held-out rows (real labels); efficientnet-lite0 on the
export's evaluation crops (top-1 agreement with the unsplit fp32 model).

Three parts per model, side by side in one run:

1. policies x deadlines, one device: accuracy (right and on time), deadline misses, J/task;
   fixed-split runs at every split point, one row each (the targets compare with the best);
2. the energy budget binding: enachi with a power budget below its unconstrained draw, long
   run; mean power against the budget;
3. users 1..N against one edge (concurrent devices, enachi under the same budget): energy per
   device per task as the edge divides the band.

A scenario is the channel, the device's speed (``--device-slowdown``, emulated: see
`ondevice.dnn.head`), its compute power (the sim meter's ``core_w``) and the deadlines;
each model has a default scenario (`SCENARIOS`) stated in docs/enachi.md. Not a timed test.
The command line (``ondevice bench enachi``) is ``ondevice.cli._bench_enachi``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ondevice.bench._enachi_report import Row
from ondevice.dnn.run import ClassifyReport, ClassifyRequest, run_classify
from ondevice.edge.local import edge_child

EDGE_STARTUP_S = 60.0
LOOPBACK = "127.0.0.1"
BASELINES = ("enachi", "no-progressive", "constant-power", "edge-only", "device-only")


@dataclass(frozen=True, slots=True)
class Scenario:
    """One model's benchmark setting. ms, W."""

    channel: str  # emulated channel SPEC without seed (the bench adds seed=...)
    device_slowdown: float
    core_w: float  # sim meter W per busy core
    deadlines_ms: tuple[float, ...]
    tasks: int
    budget_fraction: float  # budget: this far from the least mean power to enachi's
    budget_deadline_ms: float | None  # deadline of the budget and user runs (None: tightest
    # deadline where device-only misses, else the loosest)
    budget_tasks: int
    users: tuple[int, ...]
    user_tasks: int
    users_deadline_ms: float | None = None  # None: the loosest benchmarked deadline, where
    # a shared band still carries features (one device's share shrinks as 1/N)


# LyDROO's link [C1] (2 MHz, 100 mW, -174 dBm/Hz) at 10 dB mean SNR, Rayleigh blocks of 50 ms
# (hardware-profiles.md section 4); the radio draws 0.45 W beyond the radiated power while
# sending, so that at p_max it draws the 0.55 W of W4's card (1.9 uJ/B + 420 uJ/packet at its
# 2 Mbit/s). Device: a Raspberry Pi 5 core (2.175 W busy [P5], the sim meter's figure) taken as
# 8x slower than this x86 core on INT8 convolutions (an assumption: no source measures it).
_LINK = "emulated:bw=2,snr_db=10,p_max_w=0.1,circuit_w=0.45,fading=rayleigh,coherence_ms=50"
SCENARIOS: dict[str, Scenario] = {
    "efficientnet-lite0": Scenario(
        channel=_LINK, device_slowdown=8.0, core_w=2.175,
        deadlines_ms=(72.0, 80.0, 100.0, 130.0, 200.0), tasks=32, budget_fraction=0.5,
        budget_deadline_ms=None, budget_tasks=128, users=(1, 2, 4, 8), user_tasks=24),
    # digits are 64 B: a narrow-band link (50 kHz) makes their features cost airtime.
    "digits-cnn": Scenario(
        channel="emulated:bw=0.05,snr_db=10,p_max_w=0.1,fading=rayleigh,coherence_ms=50",
        device_slowdown=8.0, core_w=2.175, deadlines_ms=(20.0, 40.0, 80.0), tasks=64,
        budget_fraction=0.5, budget_deadline_ms=None, budget_tasks=200, users=(1, 2, 4, 8),
        user_tasks=40),
}
QUICK = {"deadlines_ms": (20.0, 60.0), "tasks": 8, "budget_tasks": 16, "users": (1, 2),
         "user_tasks": 6}


def dnn_edge(dnn_dir: Path, *, workers: int = 2) -> contextlib.AbstractAsyncContextManager[str]:
    """``edge-server --dnn DIR`` on 127.0.0.1 (no zeroconf); yields its URL."""
    return edge_child(
        ["--dnn", str(dnn_dir), "--host", LOOPBACK, "--port", "0", "--no-advertise",
         "--dnn-workers", str(workers), "--max-sessions", "64",
         "--max-sessions-per-client", "64"],
        quiet=True, startup_s=EDGE_STARTUP_S,
    )


def _row(model: str, part: str, label: str, rep: ClassifyReport, **extra: Any) -> Row:
    s = rep.summary
    return Row(model=model, part=part, policy=label, deadline_ms=rep.settings["deadline_ms"],
               tasks=s["tasks"], accuracy=s["accuracy"] or 0.0,
               miss_rate=s["deadline_miss_rate"] or 0.0, j_per_task=s["j_per_task"] or 0.0,
               mean_w=s["mean_power_w"] or 0.0, compute_j=s["compute_j"], radio_j=s["radio_j"],
               mean_fraction=s["mean_fraction"] or 0.0, splits=s["splits"],
               energy_source=s["energy_source"], budget_w=s["budget_w"], **extra)


async def model_rows(model: str, dnn_dir: Path, sc: Scenario, *, seed: int,
                     say: Callable[[str], None]) -> list[Row]:
    """Every row of one model under scenario ``sc``: its own edge on loopback, the policies
    per deadline, the budget run, and the user counts (``say`` hears each row as it comes)."""
    from ondevice.common.dnn_profile import load_dnn

    prof = load_dnn(dnn_dir)
    dataset = "digits" if prof.metric == "top1-accuracy" and prof.input_shape == (1, 8, 8) \
        else "samples"
    base = ClassifyRequest(dnn_dir=dnn_dir, dataset=dataset, discover=False,
                           channel=f"{sc.channel},seed={seed}",
                           meter=f"sim:core_w={sc.core_w}", device_slowdown=sc.device_slowdown,
                           edge_timeout_s=10.0)
    rows: list[Row] = []
    async with dnn_edge(dnn_dir) as url:
        base = replace(base, edge=url)
        # 1. policies x deadlines
        for d in sc.deadlines_ms:
            for pol in BASELINES:
                rep = await run_classify(replace(base, policy=pol, deadline_ms=d,
                                                 limit=sc.tasks, device_id=f"{pol}-{d:g}"))
                rows.append(_row(model, "deadline", pol, rep))
                say(rows[-1].line())
            for split in sorted(prof.splits):
                rep = await run_classify(replace(base, policy="fixed-split", split=split,
                                                 deadline_ms=d, limit=sc.tasks,
                                                 device_id=f"fixed-{split}-{d:g}"))
                rows.append(_row(model, "deadline", f"fixed-split s{split}", rep))
                say(rows[-1].line())
        # 2. the budget, binding
        d_b = sc.budget_deadline_ms or _budget_deadline(rows, sc)
        budget = _budget(rows, d_b, sc.budget_fraction)
        rep = await _budget_run(base, d_b, budget, sc.budget_tasks)
        rows.append(_row(model, "budget", "enachi", rep,
                         budget_tail_w=_tail_power(rep)))
        say(rows[-1].line())
        # 3. users, under a budget that binds at their deadline
        d_u = sc.users_deadline_ms or max(sc.deadlines_ms)
        budget_u = _budget(rows, d_u, sc.budget_fraction)
        for n in sc.users:
            reps_n = await asyncio.gather(*(run_classify(replace(
                base, policy="enachi", deadline_ms=d_u, power_budget_w=budget_u,
                limit=sc.user_tasks, device_id=f"user{i}-of-{n}",
                channel=f"{sc.channel},seed={seed + i}")) for i in range(n)))
            for i, r in enumerate(reps_n):
                rows.append(_row(model, "users", "enachi", r, users=n, user=i,
                                 mean_share=_mean(t.share for t in r.tasks)))
            say(f"{model}: {n} users: J/task per device "
                + ", ".join(f"{r.summary['j_per_task'] * 1e3:.2f} mJ" for r in reps_n))
    return rows


async def _budget_run(base: ClassifyRequest, deadline_ms: float, budget_w: float,
                      tasks: int) -> ClassifyReport:
    """A long enachi run under the budget (the dataset repeats when it is shorter)."""
    return await run_classify(replace(base, policy="enachi", deadline_ms=deadline_ms,
                                      power_budget_w=budget_w, limit=tasks, repeat=True,
                                      device_id="budget"))


def _mean(xs: Any) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _tail_power(rep: ClassifyReport) -> float | None:
    """Mean power over the second half of the run (after the queue's transient), W."""
    tasks = rep.tasks[len(rep.tasks) // 2:]
    period = rep.settings.get("period_ms")
    if not tasks or not period:
        return None
    return sum(t.energy_j for t in tasks) / (len(tasks) * period / 1e3)


def _budget(rows: list[Row], deadline_ms: float, fraction: float) -> float:
    """A budget that binds: ``fraction`` of the way from the least mean power of any policy at
    that deadline (an option enachi can mix in) to unconstrained enachi's."""
    at = [r for r in rows if r.part == "deadline" and r.deadline_ms == deadline_ms]
    free = next(r.mean_w for r in at if r.policy == "enachi")
    least = min(r.mean_w for r in at)
    if least >= free:  # enachi already draws the least: take a fraction of it
        return max(free * fraction, 1e-6)
    return least + fraction * (free - least)


def _budget_deadline(rows: list[Row], sc: Scenario) -> float:
    """The tightest deadline where device-only misses most tasks, else the loosest."""
    missed = sorted(r.deadline_ms for r in rows if r.part == "deadline"
                    and r.policy == "device-only" and r.miss_rate > 0.5)
    return missed[0] if missed else max(sc.deadlines_ms)


__all__ = ["QUICK", "SCENARIOS", "Scenario", "dnn_edge", "model_rows"]
