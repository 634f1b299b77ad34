"""Per-task decisions of ``ondevice classify``: ENACHI's outer loop and its baselines. No I/O.

Every policy answers, once per task, with a `TaskPlan`: run the whole model on the device, or
send the raw input, or run head S and send its feature; at which reference power p_ref; with
or without progressive transmission (answers on partial features and the entropy stop); with
per-slot power tracking p_ref (ENACHI's inner loop) or a constant p_ref.

=================  ===========================================================================
policy             plan
=================  ===========================================================================
``enachi``         split and p_ref maximizing V Acc - (Q/c)(E/c) under the deadline
                   (`enachi.choose_task` over the profile's splits, device-only and the raw
                   input), progressive, per-slot tracking of p_ref
``no-progressive`` the same outer loop, all-or-nothing (the edge answers the whole feature)
``constant-power`` the same outer loop, progressive, but p_ref in every slot (no tracking)
``fixed-split``    one split for the whole run (``--split``, default the profile's split of
                   least predicted latency at p_max: Neurosurgeon-like), whole feature at p_max
``edge-only``      the raw input at p_max, the whole model on the edge
``device-only``    the whole model on the device
=================  ===========================================================================

With ``--split`` the three ENACHI policies keep their power control and transmission but
use that split only.

The virtual energy queue Q (J) grows by each task's measured energy E and shrinks by its
allowance c = P_budget * T (T the time from this task's start to the next one's); without a
budget Q stays 0 and the plan maximizes accuracy, then saves energy. Dividing Q and E by c
makes V scale-free: V = 1 trades one unit of accuracy against one allowance of energy when
one allowance is queued.

Estimates (EWMA) start at the profile's latencies times the device slowdown and the priors'
power, and follow what each task measures: head time and energy per split, the whole model's,
the edge's tail time, the round-trip time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ondevice.common.dnn_profile import RAW_SPLIT, DnnProfile
from ondevice.common.estimators import Ewma
from ondevice.dnn.enachi import (
    Link,
    SplitOption,
    choose_task,
    predict,
    queue_update,
    rayleigh_points,
)

POLICIES = ("enachi", "device-only", "edge-only", "fixed-split", "no-progressive",
            "constant-power")
DEVICE_SPLIT = -1  # the plan's split for device-only
DEFAULT_V = 2.0  # accuracy weight against queued allowances (module doc)
POWER_LEVELS = 8  # reference powers p_max / 2**(7 - i) ... p_max, geometric
FRAME_OVERHEAD_BYTES = 60  # msgpack keys + WebSocket header + TCP/IP per feature frame
DEVICE_CORE_W = 2.175  # W per busy core: the sim meter's Pi 5 figure [P5], a prior only


@dataclass(frozen=True, slots=True)
class TaskPlan:
    """One task's decision. ``split``: DEVICE_SPLIT, RAW_SPLIT (0) or a profile split."""

    policy: str
    split: int
    p_ref_w: float
    progressive: bool
    tracking: bool
    predicted_accuracy: float
    predicted_energy_j: float
    predicted_time_s: float

    @property
    def on_device(self) -> bool:
        return self.split == DEVICE_SPLIT


@dataclass(slots=True)
class TaskOutcome:
    """What a finished task measured, for the controller."""

    split: int
    energy_j: float  # device energy attributed to the task (compute above idle + radio)
    period_s: float  # from this task's start to the next one's (the allowance's T)
    head_s: float | None = None  # device compute time of the head / whole model
    head_j: float | None = None
    tail_ms: float | None = None  # the edge's tail time for this split
    rtt_s: float | None = None


def packet_bytes_for(feature_bytes: int, *, packets: int = 16, mtu_payload: int = 1400,
                     smallest: int = 64) -> int:
    """Packet size (header included) cutting a feature into about ``packets`` packets, within
    [smallest, mtu_payload] bytes: fine-grained progress without headers dominating."""
    return int(min(max(math.ceil(feature_bytes / packets) + 12, smallest), mtu_payload))


def wire_bytes(payload_bytes: int, packet_bytes: int) -> int:
    """Bytes on the air for a payload cut into packets of ``packet_bytes`` (12-byte codec
    header each) with FRAME_OVERHEAD_BYTES per frame."""
    step = packet_bytes - 12
    n = -(-payload_bytes // step)
    return payload_bytes + n * (12 + FRAME_OVERHEAD_BYTES)


@dataclass(slots=True)
class Estimates:
    """Online estimates, per split (DEVICE_SPLIT = the whole model on the device)."""

    head_s: dict[int, Ewma] = field(default_factory=dict)
    head_j: dict[int, Ewma] = field(default_factory=dict)
    tail_s: dict[int, Ewma] = field(default_factory=dict)
    rtt_s: Ewma = field(default_factory=lambda: Ewma(0.005, prior_weight=0.5))


class ClassifyController:
    """Plans tasks for one policy and keeps the device's energy queue."""

    def __init__(self, policy: str, profile: DnnProfile, *, deadline_s: float,
                 power_budget_w: float | None = None, v: float = DEFAULT_V,
                 fixed_split: int | None = None, device_slowdown: float = 1.0,
                 device_core_w: float = DEVICE_CORE_W, has_device_model: bool = True) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        if power_budget_w is not None and power_budget_w <= 0:
            raise ValueError("--power-budget must be > 0 W")
        self.policy = policy
        self.profile = profile
        self.deadline_s = deadline_s
        self.budget_w = power_budget_w
        self.v = v
        self.q_j = 0.0
        self.has_device_model = has_device_model
        self.est = Estimates()
        for i, s in profile.splits.items():
            head = s.head_ms / 1e3 * device_slowdown
            self.est.head_s[i] = Ewma(head, prior_weight=0.5)
            self.est.head_j[i] = Ewma(head * device_core_w, prior_weight=0.5)
            self.est.tail_s[i] = Ewma(s.tail_ms / 1e3, prior_weight=0.5)
        full = profile.full_ms / 1e3 * device_slowdown
        self.est.head_s[DEVICE_SPLIT] = Ewma(full, prior_weight=0.5)
        self.est.head_j[DEVICE_SPLIT] = Ewma(full * device_core_w, prior_weight=0.5)
        self.est.head_s[RAW_SPLIT] = Ewma(0.0, prior_weight=0.5)
        self.est.head_j[RAW_SPLIT] = Ewma(0.0, prior_weight=0.5)
        self.est.tail_s[RAW_SPLIT] = Ewma(profile.full_ms / 1e3, prior_weight=0.5)
        if fixed_split is not None and fixed_split not in profile.splits:
            raise ValueError(f"--split {fixed_split}: {profile.name} has splits "
                             f"{sorted(profile.splits)}")
        self.fixed_split = fixed_split
        self.packet_bytes = {i: packet_bytes_for(s.feature_bytes)
                             for i, s in profile.splits.items()}
        self.packet_bytes[RAW_SPLIT] = packet_bytes_for(profile.raw_bytes)

    # -- options --------------------------------------------------------------------------

    def option(self, split: int) -> SplitOption:
        """The controller's view of ``split`` (DEVICE_SPLIT, RAW_SPLIT or a profile split)."""
        p, est = self.profile, self.est
        if split == DEVICE_SPLIT:
            acc = p.fp32_metric
            return SplitOption("device-only", est.head_s[split].value, est.head_j[split].value,
                               0, 0.0, (0.0, 1.0), (acc, acc))
        if split == RAW_SPLIT:
            acc = p.fp32_metric
            return SplitOption("raw", 0.0, 0.0,
                               wire_bytes(p.raw_bytes, self.packet_bytes[RAW_SPLIT]),
                               est.tail_s[RAW_SPLIT].value, (0.0, 1.0), (0.0, acc),
                               progressive=False)
        s = p.split(split)
        return SplitOption(f"s{split}", est.head_s[split].value, est.head_j[split].value,
                           wire_bytes(s.feature_bytes, self.packet_bytes[split]),
                           est.tail_s[split].value, s.curve.fractions, s.curve.accuracy)

    def candidates(self) -> list[int]:
        """Splits ENACHI chooses among: every profile split, the raw input, the device; only
        ``fixed_split`` when one was given (``--split`` pins the outer loop's split)."""
        if self.fixed_split is not None:
            return [self.fixed_split]
        out = sorted(self.profile.splits)
        if self.profile.raw_bytes:
            out.append(RAW_SPLIT)
        if self.has_device_model:
            out.append(DEVICE_SPLIT)
        return out

    def neurosurgeon_split(self, link: Link, share: float) -> int:
        """The profile split of least predicted latency with the whole feature at p_max."""
        best = None
        for i in sorted(self.profile.splits):
            _, _, t = predict(self.option(i), link, share, link.p_max_w, math.inf,
                              progressive=False)
            if best is None or t < best[0]:
                best = (t, i)
        assert best is not None
        return best[1]

    def link(self, state: object) -> Link:
        """The controller's Link from a channel's ``LinkState`` and the measured RTT."""
        return Link(bandwidth_hz=state.bandwidth_hz,  # type: ignore[attr-defined]
                    noise_w_per_hz=state.noise_w_per_hz,  # type: ignore[attr-defined]
                    mean_gain=state.mean_gain,  # type: ignore[attr-defined]
                    p_max_w=state.p_max_w,  # type: ignore[attr-defined]
                    rtt_s=self.est.rtt_s.value,
                    circuit_w=getattr(state, "circuit_w", 0.0),
                    fading=rayleigh_points() if getattr(state, "fading", "none") == "rayleigh"
                    else ())

    @staticmethod
    def powers(p_max_w: float) -> list[float]:
        """The reference-power grid: POWER_LEVELS geometric levels up to p_max."""
        return [p_max_w / 2.0 ** (POWER_LEVELS - 1 - i) for i in range(POWER_LEVELS)]

    # -- the per-task decision --------------------------------------------------------------

    def allowance_j(self, period_s: float) -> float:
        return (self.budget_w or 0.0) * period_s

    def plan(self, link: Link, share: float, *, period_s: float) -> TaskPlan:
        """This task's plan at bandwidth ``share``; ``period_s`` is the expected time until the
        next task (its allowance's T)."""
        pol, dl = self.policy, self.deadline_s
        share = round(share, 3) or 1e-3  # shares move a little every task; prices are cached
        if pol == "device-only":
            return self._fixed(DEVICE_SPLIT, 0.0, link, share, progressive=False)
        if pol == "edge-only":
            return self._fixed(RAW_SPLIT, link.p_max_w, link, share, progressive=False)
        if pol == "fixed-split":
            if self.fixed_split is None:
                self.fixed_split = self.neurosurgeon_split(link, share)
            return self._fixed(self.fixed_split, link.p_max_w, link, share, progressive=False)
        c = self.allowance_j(period_s)
        progressive = pol != "no-progressive"
        q_scaled = self.q_j / (c * c) if c > 0 else 0.0
        choice = choose_task([self.option(i) for i in self.candidates()], link, share,
                             q_j=q_scaled, v=self.v, deadline_s=dl,
                             powers_w=self.powers(link.p_max_w), progressive=progressive,
                             tracking=pol != "constant-power")
        name = choice.option.name
        split = DEVICE_SPLIT if name == "device-only" else RAW_SPLIT if name == "raw" else int(
            name[1:])
        return TaskPlan(pol, split, choice.p_ref_w, progressive and split > RAW_SPLIT,
                        pol != "constant-power", choice.predicted_accuracy,
                        choice.predicted_energy_j, choice.predicted_time_s)

    def _fixed(self, split: int, p_w: float, link: Link, share: float, *,
               progressive: bool) -> TaskPlan:
        acc, e, t = predict(self.option(split), link, share, p_w, self.deadline_s,
                            progressive=progressive)
        return TaskPlan(self.policy, split, p_w, progressive, False, acc, e, t)

    # -- learning from a finished task ------------------------------------------------------

    def observe(self, out: TaskOutcome) -> None:
        """Fold a finished task into the queue and the estimates."""
        self.q_j = queue_update(self.q_j, out.energy_j, self.allowance_j(out.period_s))
        est = self.est
        if out.head_s is not None and out.split in est.head_s:
            est.head_s[out.split].update(out.head_s)
        if out.head_j is not None and out.split in est.head_j:
            est.head_j[out.split].update(max(out.head_j, 0.0))
        if out.tail_ms is not None and out.split in est.tail_s:
            est.tail_s[out.split].update(out.tail_ms / 1e3)
        if out.rtt_s is not None and np.isfinite(out.rtt_s):
            est.rtt_s.update(max(out.rtt_s, 0.0))

    def describe(self) -> dict[str, float | str | None]:
        return {"policy": self.policy, "V": self.v, "power_budget_w": self.budget_w,
                "queue_j": self.q_j, "fixed_split": self.fixed_split}
