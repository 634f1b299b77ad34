"""``ondevice classify``: split DNN inference with progressive transmission, task by task.

Per task (arriving every ``period``, due ``deadline`` after arrival) the policy
(`ondevice.dnn.policy`) plans: the whole model here, the raw input to the edge, or head S here
and its feature to the edge. For a split, the device opens the task on the edge while its INT8
head runs (the open frame reports the energy queue and the link; the answer carries the
bandwidth share), cuts the 8-bit feature into packets in importance order (`feature_codec`),
and for each packet first lets the radio carry it (``hw.Channel.async_send``: per-slot power
from ENACHI's `PowerTracker`, pacing on the emulated channel), then writes it to the socket.
Results come back while it sends; it stops at the profile's entropy threshold
(`dnn_profile.stop_rule`), when the deadline leaves only time for the last answer, or when all
is sent.

Energy of a task: what the meter measured over the task above the device's idle power (the
compute), plus the radio's energy when the channel models it (emulated), else the meter saw the
radio too. The controller's queue is updated with it.

A lost edge never loses a task: the device answers with what the edge already said on the
packets it got, else finishes on its own (the split's tail, or the whole model), flagged
``degraded``; later tasks reconnect with backoff and run on the device meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hw import Activity, Channel, ConstantPower, PowerMeter
from ondevice.common import wire
from ondevice.common.budget import BUDGET_TOLERANCE
from ondevice.common.dnn_profile import RAW_SPLIT, DnnProfile, StopRule, stop_rule, top1_summary
from ondevice.dnn.enachi import PowerTracker, tracking_price
from ondevice.dnn.head import DeviceDnn
from ondevice.dnn.policy import (
    DEVICE_SPLIT,
    FRAME_OVERHEAD_BYTES,
    ClassifyController,
    TaskOutcome,
    TaskPlan,
    wire_bytes,
)
from ondevice.edge.client import EdgeClient, EdgeUnavailable

log = logging.getLogger(__name__)

EVAL_GROUPS = 16  # the edge evaluates when the feature passes each 1/16 of its bytes
MARGIN_S = 0.002  # s kept before the deadline beyond the tail and RTT estimates
GRACE_S = 0.25  # s an all-or-nothing answer may come late and still be reported
RETRY_S = (1.0, 10.0)  # s: reconnect backoff after a lost edge, first and longest
# Refusals that say this device and this edge do not belong together: the run stops.
FATAL_EDGE_ERRORS = frozenset({"unknown-model", "codec-mismatch", "unauthorized",
                               "tls-fingerprint", "protocol"})


@dataclass(slots=True, kw_only=True)
class TaskRecord:
    """One task, as printed and in ``--json``. ms, J, W, bytes."""

    index: int
    label: int | None
    prediction: int | None
    confidence: float | None
    entropy_nats: float | None
    correct: bool | None  # right and on time (None without a label)
    split: str  # "device", "raw" or "s<index>"
    p_ref_w: float
    share: float | None
    users: int | None
    packets: int
    bytes_sent: int
    fraction: float  # of the feature's channels the answer saw
    stop: str  # entropy | all-sent | deadline | device | no-answer
    latency_ms: float  # arrival to the answer used
    deadline_met: bool
    head_ms: float | None  # device compute (head or whole model)
    airtime_ms: float  # the radio's time sending
    energy_j: float
    compute_j: float
    radio_j: float
    predicted_accuracy: float
    queue_j: float
    degraded: bool = False
    error: str | None = None


@dataclass(slots=True)
class _Progress:
    latest: wire.Result | None = None
    latest_at: float = 0.0  # time.monotonic() when ``latest`` arrived
    want_seq: int | None = None
    got: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stopped_by_entropy: bool = False


class Classifier:
    """Runs tasks for one device: its DNN, controller, radio, meter and (maybe) an edge."""

    def __init__(self, profile: DnnProfile, dnn: DeviceDnn, controller: ClassifyController, *,
                 channel: Channel, meter: PowerMeter, activity: Activity, idle_w: float,
                 edge_url: str | None, token: str | None = None, edge_timeout_s: float = 5.0,
                 device_id: str | None = None, stop_tolerance: float = 0.01) -> None:
        self.profile = profile
        self.dnn = dnn
        self.ctl = controller
        self.channel = channel
        self.meter = meter
        self.activity = activity
        self.idle_w = idle_w
        self.edge_url = edge_url
        self.token = token
        self.edge_timeout_s = edge_timeout_s
        self.device_id = device_id or f"dev-{secrets.token_hex(4)}"
        self.rules: dict[int, StopRule] = {i: stop_rule(s.curve, stop_tolerance)
                                           for i, s in profile.splits.items()}
        self.edge: EdgeClient | None = None
        self.share = 1.0
        self.errors: list[str] = []
        self._retry_at = 0.0
        self._backoff = RETRY_S[0]
        self._last_s = 0.0  # the last task's duration (back-to-back tasks' allowance T)

    # -- the edge connection ---------------------------------------------------------------

    def _on_bytes(self, tx: int, rx: int) -> None:
        # A modelled (emulated) radio is the channel's business: its model charges transmit
        # energy p*t and leaves the edge's small answers uncharged. Otherwise the radio is
        # the meter's (the sim meter models it per byte and packet).
        if self.channel.modelled:
            return
        if tx:
            self.activity.add_tx_bytes(tx)
        if rx:
            self.activity.add_rx_bytes(rx)

    async def _connect(self) -> EdgeClient | None:
        if self.edge is not None:
            return self.edge
        if self.edge_url is None or time.monotonic() < self._retry_at:
            return None
        client = EdgeClient(self.edge_url, timeout_s=self.edge_timeout_s,
                            on_bytes=self._on_bytes, token=self.token)
        try:
            await client.async_connect()
        except EdgeUnavailable as exc:
            self._lost(str(exc))
            return None
        self.edge, self._backoff = client, RETRY_S[0]
        return client

    def _lost(self, why: str) -> None:
        self.errors.append(why)
        log.warning("edge unavailable: %s", why)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2.0, RETRY_S[1])

    async def _drop_edge(self, why: str) -> None:
        edge, self.edge = self.edge, None
        self._lost(why)
        if edge is not None:
            with contextlib.suppress(Exception):
                await edge.async_close()

    async def async_close(self) -> None:
        """Close the edge connection. Idempotent."""
        edge, self.edge = self.edge, None
        if edge is not None:
            await edge.async_close()

    # -- one task ------------------------------------------------------------------------------

    async def classify(self, index: int, raw: np.ndarray, label: int | None, *, arrival: float,
                       deadline_s: float, period_s: float | None) -> TaskRecord:
        """Classify one raw input ``[C, H, W]`` uint8 that arrived at monotonic ``arrival``,
        due ``deadline_s`` later; the next task arrives ``period_s`` after it (None: as soon
        as this one ends, so that its allowance's T is its own duration)."""
        t0 = time.monotonic()
        deadline_t = arrival + deadline_s
        self.ctl.deadline_s = max(deadline_t - t0, 0.0)
        x = self.profile.normalize(raw[None])  # [1, C, H, W]
        edge = await self._connect() if self.ctl.policy != "device-only" else None
        link = self.ctl.link(self.channel.link())
        plan = await asyncio.to_thread(  # pure, but a few ms of numpy: off the event loop
            self.ctl.plan, link, self.share,
            period_s=period_s if period_s is not None else self._last_s)
        radio0 = self.channel.energy_j
        rec: dict[str, Any] = {"share": None, "users": None, "packets": 0, "bytes_sent": 0,
                               "fraction": 1.0, "degraded": False, "error": None,
                               "answer_at": None}
        air0 = self.channel.airtime_s
        head: tuple[float, float] | None = None  # (device seconds, window start, for energy)
        tail_ms = rtt_s = None
        logits_answer: tuple[int, float, float] | None = None
        if plan.on_device or edge is None:
            if not plan.on_device:
                rec["degraded"], rec["error"] = True, "no edge: ran on the device"
                plan = TaskPlan(plan.policy, DEVICE_SPLIT, 0.0, False, False,
                                self.profile.fp32_metric, 0.0, 0.0)
            h0 = time.monotonic()
            logits, secs = await self.dnn.async_full(x)
            head = (secs, h0)
            logits_answer = top1_summary(logits)
            stop = "device"
        else:
            try:
                out = await self._edge_task(edge, plan, x, raw, t0, deadline_t, rec)
                logits_answer, stop, head, tail_ms, rtt_s = out
            except (EdgeUnavailable, wire.EdgeError, wire.WireError) as exc:
                if isinstance(exc, wire.EdgeError) and exc.code in FATAL_EDGE_ERRORS:
                    raise  # the configuration is wrong: no point in going on
                await self._drop_edge(str(exc))
                rec["degraded"], rec["error"] = True, f"edge lost: {exc}"
                logits_answer, stop = await self._fallback(plan, x, rec)
        t1 = time.monotonic()
        answer_at = rec.pop("answer_at") or t1
        compute_j = self.meter.energy_j(t0, t1) - self.idle_w * (t1 - t0)
        radio_j = self.channel.energy_j - radio0 if self.channel.modelled else 0.0
        energy = compute_j + radio_j
        head_j = None
        if head is not None:
            secs, h0 = head
            head_j = self.meter.energy_j(h0, h0 + secs) - self.idle_w * secs
        met = answer_at <= deadline_t + 1e-4 and logits_answer is not None
        if period_s is None:
            period_s = self._last_s = t1 - arrival
        self.ctl.observe(TaskOutcome(plan.split, energy, period_s,
                                     head_s=head[0] if head else None, head_j=head_j,
                                     tail_ms=tail_ms, rtt_s=rtt_s))
        pred, conf, ent = logits_answer if logits_answer is not None else (None, None, None)
        return TaskRecord(
            index=index, label=label, prediction=pred, confidence=conf, entropy_nats=ent,
            correct=None if label is None else bool(met and pred == label),
            split=_split_name(plan.split), p_ref_w=plan.p_ref_w, stop=stop,
            latency_ms=(answer_at - arrival) * 1e3, head_ms=head[0] * 1e3 if head else None,
            airtime_ms=(self.channel.airtime_s - air0) * 1e3,
            deadline_met=met, energy_j=energy, compute_j=compute_j, radio_j=radio_j,
            predicted_accuracy=plan.predicted_accuracy, queue_j=self.ctl.q_j, **rec)

    async def _fallback(self, plan: TaskPlan, x: np.ndarray, rec: dict[str, Any]
                        ) -> tuple[tuple[int, float, float] | None, str]:
        """The best answer without the edge: what it said on the packets it got, else the
        device's own (the split's tail on the whole feature, or the whole model)."""
        latest: wire.Result | None = rec.pop("_latest", None)
        feature: np.ndarray | None = rec.pop("_feature", None)
        if latest is not None:
            if plan.split > RAW_SPLIT:
                rec["fraction"] = latest.channels / self.profile.split(plan.split).codec.shape[0]
            return (latest.top1, latest.confidence, latest.entropy), "edge-lost"
        if feature is not None and self.dnn.has_tail(plan.split):
            logits, _ = await self.dnn.async_tail(plan.split, feature)
            rec["fraction"] = 1.0
            return top1_summary(logits), "device"
        if self.dnn.has_full:
            logits, _ = await self.dnn.async_full(x)
            return top1_summary(logits), "device"
        return None, "no-answer"

    async def _edge_task(self, edge: EdgeClient, plan: TaskPlan, x: np.ndarray, raw: np.ndarray,
                         t0: float, deadline_t: float, rec: dict[str, Any]) -> tuple[
                             tuple[int, float, float] | None, str, tuple[float, float] | None,
                             float | None, float | None]:
        prof, ctl = self.profile, self.ctl
        split = plan.split
        state = self.channel.link()
        nbytes = prof.raw_bytes if split == RAW_SPLIT else prof.split(split).feature_bytes
        pkt_bytes = ctl.packet_bytes[split]
        msg = wire.DnnOpen(model=prof.model_id, split=split,
                           codec="" if split == RAW_SPLIT else prof.split(split).fingerprint,
                           device=self.device_id, queue_j=ctl.q_j,
                           bits=8 * wire_bytes(nbytes, pkt_bytes),
                           spectral_eff=state.spectral_eff,
                           deadline_ms=max(deadline_t - t0, 0.0) * 1e3
                           if math.isfinite(deadline_t) else 0.0)
        r0 = time.monotonic()
        opened_at: list[float] = []
        opening = asyncio.create_task(edge.async_dnn_open(msg))
        opening.add_done_callback(lambda _f: opened_at.append(time.monotonic()))
        head = None
        feature = None
        try:
            if split != RAW_SPLIT:
                h0 = time.monotonic()
                feature, secs = await self.dnn.async_head(split, x)
                head = (secs, h0)
                rec["_feature"] = feature
            opened = await opening
        finally:
            if not opening.done():
                opening.cancel()
                with contextlib.suppress(BaseException):
                    await opening
        rtt = opened_at[0] - r0 if opened_at else None  # the loop ran while the head did
        self.share = opened.share
        rec["share"], rec["users"] = opened.share, opened.users
        ctl.est.tail_s[split].update(opened.tail_ms / 1e3)
        if plan.tracking:
            p_ref = max(plan.p_ref_w, 1e-6)
            power: Any = PowerTracker(
                p_ref_w=p_ref, share=opened.share, bandwidth_hz=state.bandwidth_hz,
                noise_w_per_hz=state.noise_w_per_hz, p_max_w=state.p_max_w,
                mean_gain=state.mean_gain,
                start_price=tracking_price(p_ref, opened.share, ctl.link(state)))
        else:
            power = ConstantPower(plan.p_ref_w)
        margin = ctl.est.tail_s[split].value + ctl.est.rtt_s.value + MARGIN_S
        until = deadline_t - margin if math.isfinite(deadline_t) else None
        until_loop = None if until is None else asyncio.get_running_loop().time() + (
            until - time.monotonic())
        prog = _Progress()
        rule = self.rules.get(split) if plan.progressive else None
        channels = prof.split(split).codec.shape[0] if split != RAW_SPLIT else 1
        collector = asyncio.create_task(self._collect(edge, prog, rule, channels))
        try:
            sent_all, seq = await self._send(edge, plan, split, feature, raw, pkt_bytes, power,
                                             until_loop, prog, rec)
            prog.want_seq = seq
            if prog.latest is not None and prog.latest.seq >= seq:
                prog.got.set()
            if seq:
                wait_until = deadline_t if plan.progressive else deadline_t + GRACE_S
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(prog.got.wait(),
                                           max(wait_until - time.monotonic(), 0.001))
            if collector.done() and collector.exception() is not None:
                raise collector.exception()  # type: ignore[misc]
        except BaseException:
            rec["_latest"] = prog.latest
            raise
        finally:
            collector.cancel()
            with contextlib.suppress(BaseException):
                await collector
        await edge.async_dnn_close()
        rec.pop("_feature", None)
        latest = prog.latest
        if latest is None:
            return None, "no-answer", head, None, rtt
        rec["fraction"] = latest.channels / channels
        rec["answer_at"] = prog.latest_at
        stop = "entropy" if prog.stopped_by_entropy else "all-sent" if sent_all else "deadline"
        return (latest.top1, latest.confidence, latest.entropy), stop, head, latest.tail_ms, rtt

    async def _collect(self, edge: EdgeClient, prog: _Progress, rule: StopRule | None,
                       channels: int) -> None:
        while True:
            r = await edge.async_result()
            if prog.stopped_by_entropy:
                continue  # the answer that stopped the task is the task's answer
            if prog.latest is None or r.seq >= prog.latest.seq:
                prog.latest, prog.latest_at = r, time.monotonic()
            if rule is not None and rule.should_stop(r.entropy, r.channels / channels):
                prog.stopped_by_entropy = True
                prog.stop.set()
                prog.got.set()
            if prog.want_seq is not None and r.seq >= prog.want_seq:
                prog.got.set()

    async def _send(self, edge: EdgeClient, plan: TaskPlan, split: int,
                    feature: np.ndarray | None, raw: np.ndarray, pkt_bytes: int, power: Any,
                    until: float | None, prog: _Progress, rec: dict[str, Any]
                    ) -> tuple[bool, int]:
        """Carry the feature (or raw input) packet by packet; (all sent, last eval seq)."""
        if split == RAW_SPLIT:
            data = np.ascontiguousarray(raw, dtype=np.uint8).tobytes()
            step = pkt_bytes - 12
            chunks = [(o, data[o:o + step]) for o in range(0, len(data), step)]
            for off, chunk in chunks:
                rep = await self.channel.async_send(len(chunk) + 12 + FRAME_OVERHEAD_BYTES,
                                                    share=self.share, power=power, until=until)
                if not rep.delivered:
                    return False, 0
                await edge.async_input(off, chunk)
                rec["packets"] += 1
                rec["bytes_sent"] += len(chunk)
            return True, len(chunks)
        assert feature is not None
        packets = self.profile.split(split).codec.encode(feature, pkt_bytes)
        n, seq, evaluated = len(packets), 0, 0
        for i, pkt in enumerate(packets):
            if prog.stop.is_set():
                break
            rep = await self.channel.async_send(len(pkt) + FRAME_OVERHEAD_BYTES,
                                                share=self.share, power=power, until=until)
            if not rep.delivered or prog.stop.is_set():
                break
            last = i == n - 1
            ev = last or (plan.progressive and (EVAL_GROUPS * (i + 1)) // n
                          > (EVAL_GROUPS * i) // n)
            await edge.async_feature(pkt, evaluate=ev)
            seq += 1
            evaluated = seq if ev else evaluated
            rec["packets"] += 1
            rec["bytes_sent"] += len(pkt) - 12
        if prog.stop.is_set():
            return False, 0
        if plan.progressive and seq and evaluated != seq:
            await edge.async_feature(b"", evaluate=True)  # answer on what is in now
            evaluated = seq
        sent_all = seq == n
        return sent_all, (evaluated if (plan.progressive or sent_all) else 0)


def _split_name(split: int) -> str:
    return "device" if split == DEVICE_SPLIT else "raw" if split == RAW_SPLIT else f"s{split}"


def summarize(records: list[TaskRecord], *, elapsed_s: float, energy_source: str,
              budget_w: float | None, metric: str) -> dict[str, Any]:
    """The run's summary: accuracy (right and on time), miss rate, J/task, mean W."""
    n = len(records)
    labelled = [r for r in records if r.correct is not None]
    energy = sum(r.energy_j for r in records)
    mean_w = energy / elapsed_s if elapsed_s > 0 else None
    splits: dict[str, int] = {}
    stops: dict[str, int] = {}
    for r in records:
        splits[r.split] = splits.get(r.split, 0) + 1
        stops[r.stop] = stops.get(r.stop, 0) + 1
    return {
        "tasks": n,
        "metric": metric,
        "accuracy": (sum(bool(r.correct) for r in labelled) / len(labelled)) if labelled else None,
        "deadline_miss_rate": (sum(not r.deadline_met for r in records) / n) if n else None,
        "j_per_task": energy / n if n else None,
        "energy_j": energy,
        "compute_j": sum(r.compute_j for r in records),
        "radio_j": sum(r.radio_j for r in records),
        "mean_power_w": mean_w,
        "energy_source": energy_source,
        "elapsed_s": elapsed_s,
        "budget_w": budget_w,
        "budget_met": (None if budget_w is None or mean_w is None
                       else mean_w <= budget_w * (1 + BUDGET_TOLERANCE)),
        "mean_latency_ms": float(np.mean([r.latency_ms for r in records])) if n else None,
        "mean_fraction": float(np.mean([r.fraction for r in records])) if n else None,
        "mean_bytes": float(np.mean([r.bytes_sent for r in records])) if n else None,
        "degraded_tasks": sum(r.degraded for r in records),
        "splits": splits,
        "stops": stops,
    }
