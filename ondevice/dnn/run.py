"""One ``ondevice classify`` run: open the meter, the radio and the edge, feed the tasks, report.

Tasks arrive every ``period`` (default: the deadline; none without a deadline: back to back)
and are due ``deadline`` after they arrive. The device's idle power, subtracted from the meter
so that a task's energy is what the task added, is the ``sim`` model's own figure, or
``--idle-w``, or the mean power the meter reads over IDLE_PROBE_S before the first task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hw import Activity, open_channel, open_meter
from ondevice.common.dnn_profile import DnnProfile, DnnProfileError, load_dnn
from ondevice.dnn.classify import Classifier, TaskRecord, summarize
from ondevice.dnn.head import (
    DeviceDnn,
    load_digits_dataset,
    load_image_noted,
    load_samples_dataset,
    reference_top1,
)
from ondevice.dnn.policy import DEFAULT_V, ClassifyController
from ondevice.edge.discovery import async_discover, rank_edges

log = logging.getLogger(__name__)

METER_WAIT_S = 3.0  # s for a meter's first reading
IDLE_PROBE_S = 1.0  # s of quiet meter readings that give a real device's idle power
DATASETS = ("digits", "samples")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassifyRequest:
    """Everything ``ondevice classify`` takes (flags of the same names)."""

    dnn_dir: Path
    edge: str | None = None
    discover: bool = True  # without ``edge``: find one with zeroconf
    interfaces: tuple[str, ...] = ()
    site: str | None = None  # only edges advertising this site label (None: any)
    browse_s: float = 2.0
    token: str | None = None
    image: Path | None = None
    dataset: str | None = None
    limit: int | None = None
    repeat: bool = False  # a ``limit`` beyond the dataset cycles through it again
    policy: str = "enachi"
    deadline_ms: float | None = None
    period_ms: float | None = None
    power_budget_w: float | None = None
    v: float = DEFAULT_V
    split: int | None = None
    meter: str = "sim"
    channel: str = "none"
    idle_w: float | None = None
    device_slowdown: float = 1.0
    threads: int = 1
    stop_tolerance: float = 0.01
    edge_timeout_s: float = 5.0
    device_id: str | None = None


@dataclass(slots=True, kw_only=True)
class ClassifyReport:
    """What ``--json`` prints: settings, one record per task, the summary."""

    policy: str
    settings: dict[str, Any]
    model: str
    data: str
    edge: str | None
    channel: str
    meter: str
    tasks: list[TaskRecord]
    summary: dict[str, Any]
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_inputs(req: ClassifyRequest, profile: DnnProfile
                ) -> tuple[np.ndarray, np.ndarray | None, str, str, list[str]]:
    """(raw inputs [N, C, H, W] uint8, labels [N] or None, description, metric, notes): the
    notes say what was done to an ``--image`` to fit the model (`load_image_noted`)."""
    if (req.image is None) == (req.dataset is None):
        raise ValueError("give exactly one of --image FILE and --dataset NAME")
    if req.image is not None:
        raw, note = load_image_noted(req.image, profile)
        return raw[None], None, str(req.image), "none", [note] if note else []
    if req.dataset == "digits":
        ds = load_digits_dataset(profile)
    elif req.dataset == "samples":
        ds = load_samples_dataset(profile, reference_top1(profile) if profile.input_shape[0] == 3
                                  else None)
    else:
        raise ValueError(f"--dataset takes {' or '.join(DATASETS)}, got {req.dataset!r}")
    n = len(ds.raw) if req.limit is None else req.limit
    if not req.repeat:
        n = min(n, len(ds.raw))
    idx = np.arange(n) % len(ds.raw)
    return ds.raw[idx], ds.labels[idx], f"{ds.name}: {ds.source}", ds.metric, []


async def find_edge(req: ClassifyRequest, profile: DnnProfile) -> tuple[str | None, list[str]]:
    """``--edge``, or the best edge zeroconf finds that serves this model; and notes."""
    if req.edge or not req.discover or req.policy == "device-only":
        return req.edge, []
    records = await async_discover(timeout_s=req.browse_s, interfaces=req.interfaces,
                                   token=req.token, site=req.site)
    usable, rejected = rank_edges(records, vocab_hash=None, capability="dnn")
    notes = [f"not using {r.record.url}: {r.reason}" for r in rejected]
    for rec in usable:
        if profile.model_id in rec.models:
            return rec.url, notes
        notes.append(f"not using {rec.url}: serves {rec.models}, not {profile.model_id}")
    notes.append("no edge serving this model answered: running on the device")
    return None, notes


async def _idle_power(meter: Any, given: float | None) -> float:
    if given is not None:
        return given
    model = getattr(meter, "model", None)
    if meter.kind == "sim" and model is not None:
        return float(model.idle_w)
    t0 = time.monotonic()
    await asyncio.sleep(IDLE_PROBE_S)
    t1 = time.monotonic()
    return meter.energy_j(t0, t1) / (t1 - t0)


async def run_classify(req: ClassifyRequest, *,
                       on_task: Callable[[TaskRecord], None] | None = None,
                       stop: asyncio.Event | None = None) -> ClassifyReport:
    """Run every task of ``req`` and report. Raises DnnProfileError / ValueError / MeterError
    on bad input; a lost or missing edge only degrades tasks. Once ``stop`` is set (Ctrl-C) no
    new task starts and the report covers the tasks done (``summary["interrupted"]``)."""
    profile = await asyncio.to_thread(load_dnn, req.dnn_dir)
    raw, labels, data_desc, metric, input_notes = await asyncio.to_thread(load_inputs, req,
                                                                          profile)
    deadline_s = req.deadline_ms / 1e3 if req.deadline_ms is not None else math.inf
    if req.period_ms is not None:
        period_s: float | None = req.period_ms / 1e3 if req.period_ms > 0 else None
    else:
        period_s = deadline_s if math.isfinite(deadline_s) else None
    edge_url, notes = await find_edge(req, profile)
    activity = Activity()
    dnn = DeviceDnn(profile, activity=activity, threads=req.threads,
                    slowdown=req.device_slowdown)
    await asyncio.to_thread(dnn.load)
    ctl = ClassifyController(req.policy, profile, deadline_s=deadline_s,
                             power_budget_w=req.power_budget_w, v=req.v,
                             fixed_split=req.split, device_slowdown=req.device_slowdown,
                             has_device_model=dnn.has_full)
    records: list[TaskRecord] = []
    async with open_meter(req.meter, activity=activity) as meter, \
            open_channel(req.channel) as channel:
        await meter.async_wait_sample(METER_WAIT_S)
        idle_w = await _idle_power(meter, req.idle_w)
        clf = Classifier(profile, dnn, ctl, channel=channel, meter=meter, activity=activity,
                         idle_w=idle_w, edge_url=edge_url, token=req.token,
                         edge_timeout_s=req.edge_timeout_s, device_id=req.device_id,
                         stop_tolerance=req.stop_tolerance)
        try:
            t_first = time.monotonic()
            t_end = t_first
            for k in range(len(raw)):
                arrival = t_first + k * period_s if period_s is not None else time.monotonic()
                wait = arrival - time.monotonic()
                if wait > 0 and stop is not None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait)
                elif wait > 0:
                    await asyncio.sleep(wait)
                if stop is not None and stop.is_set():
                    break
                rec = await clf.classify(k, raw[k], None if labels is None else int(labels[k]),
                                         arrival=arrival, deadline_s=deadline_s,
                                         period_s=period_s)
                records.append(rec)
                t_end = time.monotonic()
                if on_task is not None:
                    on_task(rec)
            if period_s is not None:
                t_end = max(t_end, t_first + len(raw) * period_s)
        finally:
            with contextlib.suppress(Exception):
                await clf.async_close()
        compute_src = "measured" if meter.measured else "modelled"
        radio_src = "modelled" if channel.modelled else compute_src
        source = compute_src if compute_src == radio_src else (
            f"{compute_src} compute + {radio_src} radio")
        meter_desc = f"{meter.kind} ({meter.describe()})"
        channel_desc = channel.describe()
    summary = summarize(records, elapsed_s=t_end - t_first, energy_source=source,
                        budget_w=req.power_budget_w, metric=metric)
    summary["idle_w"] = idle_w
    summary["final_queue_j"] = ctl.q_j
    summary["interrupted"] = bool(stop is not None and stop.is_set())
    return ClassifyReport(
        policy=req.policy,
        settings={**ctl.describe(), "deadline_ms": req.deadline_ms,
                  "period_ms": None if period_s is None else period_s * 1e3,
                  "device_slowdown": req.device_slowdown, "device_id": clf.device_id,
                  "stop_tolerance": req.stop_tolerance},
        model=profile.model_id, data=data_desc, edge=edge_url, channel=channel_desc,
        meter=meter_desc, tasks=records, summary=summary,
        errors=input_notes + notes + clf.errors)


def format_task(r: TaskRecord, labels: list[str] | None = None) -> str:
    """One line per task."""
    def name(k: int | None) -> str:
        if k is None:
            return "-"
        return labels[k] if labels and 0 <= k < len(labels) else str(k)

    ok = "" if r.correct is None else (" ok" if r.correct else " WRONG")
    conf = f"{r.confidence:.2f}" if r.confidence is not None else "-"
    flag = f"  DEGRADED ({r.error})" if r.degraded else ""
    return (f"task {r.index:4d}: {name(r.prediction):>6} (p {conf}, label {name(r.label)})"
            f"{ok}  split {r.split:<6} packets {r.packets:3d} {r.bytes_sent:7d} B "
            f"{r.fraction:4.0%}  {r.latency_ms:7.1f} ms {'met' if r.deadline_met else 'MISSED'}"
            f"  {r.energy_j * 1e3:8.3f} mJ  stop {r.stop}{flag}")


def format_splits(splits: dict[str, int]) -> str:
    """Tasks per split for humans, in the order given: ``{'raw': 449, 's2': 12}`` ->
    ``'raw 449, s2 12'`` ('-' for none). Pure."""
    return ", ".join(f"{name} {n}" for name, n in splits.items()) or "-"


def _mj(j: float | None, unit: str = "mJ") -> str:
    """Joules as millijoules, as the task lines print them ('-' for None)."""
    return "-" if j is None else f"{j * 1e3:.3f} {unit}"


def format_budget(budget_w: float, mean_w: float | None, held: bool | None) -> str:
    """The summary's budget text: the mean power against the budget, whether the energy budget
    `held` (summarize's ``budget_met``: long-run mean at most 3 % over it) and how far under
    or over it the run spent, e.g. '0.5 W: mean 0.4115 W; energy budget held (spent 17.7 %
    under)'. Pure."""
    if mean_w is None or held is None:
        return f"{budget_w:g} W: no mean power (no time elapsed)"
    dev = mean_w / budget_w - 1.0
    side = "the budget" if abs(dev) < 0.0005 else (
        f"{abs(dev) * 100:.1f} % {'under' if dev < 0 else 'over'}")
    return (f"{budget_w:g} W: mean {mean_w:.4g} W; energy budget "
            f"{'held' if held else 'NOT held'} (spent {side})")


def format_summary(rep: ClassifyReport) -> str:
    """The run's summary, a few lines; energy in mJ like the task lines, splits as
    `format_splits` writes them."""
    s = rep.summary

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    accuracy = (f"{s['metric']} {s['accuracy']:.4f}" if s["accuracy"] is not None
                else "no labels (no accuracy)")
    budget = ""
    if s["budget_w"] is not None:
        text = format_budget(s["budget_w"], s["mean_power_w"], s["budget_met"])
        budget = f"\nbudget     {text}"
    return (f"policy     {rep.policy}  model {rep.model}  edge {rep.edge or '-'}\n"
            f"channel    {rep.channel}\nmeter      {rep.meter}\n"
            f"tasks      {s['tasks']}  {accuracy}  deadline "
            f"misses {f(s['deadline_miss_rate'], '.1%')}  splits {format_splits(s['splits'])}\n"
            f"energy     {_mj(s['j_per_task'], 'mJ/task')} ({s['energy_source']}; compute "
            f"{_mj(s['compute_j'])}, radio {_mj(s['radio_j'])} in all), mean "
            f"{f(s['mean_power_w'], '.4g')} W above idle {s['idle_w']:.3g} W{budget}")


__all__ = ["DATASETS", "ClassifyReport", "ClassifyRequest", "DnnProfileError", "format_budget",
           "format_splits", "format_summary", "format_task", "run_classify"]
