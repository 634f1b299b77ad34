"""Whether the fleet would go faster if the edge's sessions let it stream. Pure math, no I/O.

Each device's controller weighs drafting against streaming for itself, given what the others
do. On an edge where a verified position costs about what a generated one does (a CPU, where
every position's logits row of a large vocabulary costs a matmul of its own), drafting saves
the edge no work, and once the edge is the bottleneck the fleet's throughput is one over the
edge time each token costs it. Then every device streaming is the fleet's best, yet none
gets there alone: while the others draft, a device's streamed token rides in a step full of
their rounds. So the edge, which sees all of it, says so in its replies (``advise`` in
``verdict`` and ``tokens``), and GELATO streams while it is told.

The edge's compute per produced token, from its own measurements. Streaming, priced from the
line ``c0 + c1 x`` fitted to its steps' compute time against their ``x`` tokens (steps that
verify rounds, every token with logits), with ``S`` sessions active (a job in the last
``ACTIVE_S``)::

    stream   c0 / S + c1

since streaming sessions ask their next token at once and a step carries all of them.
Verifying, as measured: each step's compute time is shared among its jobs as the line says
(``c0 / J`` each of its ``J`` jobs, ``c1`` each token) and a round's share is divided by the
tokens it produced (accepted + 1); both are summed over steps with exponential forgetting::

    verify   sum of the rounds' shares / sum of the tokens they produced

The fleet produces ``busy_v / verify`` tokens per ms while its sessions draft (the edge idles
between rounds for the rest of the time: ``busy_v``, its utilization over the steps that
verify rounds, an EWMA kept while everyone streams) and
about ``1 / stream`` while they all stream (a streaming session's next token is always
waiting). The advice is to stream while the edge is busy at least ``BUSY`` of the time (over
all steps: it is the bottleneck) and ``verify / busy_v > stream``. On a GPU edge a step's
fixed part dominates (``c1`` is a fraction of a millisecond against several), so
verification wins and the advice stays off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ondevice.common.estimators import Ewma, LinearFit

BUSY = 0.8  # utilization above which the edge is the fleet's bottleneck
MIN_ROUNDS = 8  # verification rounds seen before the advice may turn on
ACTIVE_S = 2.0  # a session with a job this recently is active


@dataclass(slots=True)
class StreamAdvisor:
    """Online estimates of the edge's costs and load; ``advise_stream`` is the advice."""

    step_ms: LinearFit = field(default_factory=lambda: LinearFit(0.0, 0.0, decay=0.98))
    busy: Ewma = field(default_factory=lambda: Ewma(0.0, alpha=0.1, prior_weight=0.0))
    busy_v: Ewma = field(default_factory=lambda: Ewma(1.0, alpha=0.1, prior_weight=0.0))
    active: Ewma = field(default_factory=lambda: Ewma(1.0, alpha=0.1, prior_weight=0.0))
    decay: float = 0.98  # of the verification sums, per step that verifies rounds
    verify_ms: float = 0.0  # rounds' shares of their steps' compute, forgetting
    verify_tokens: float = 0.0  # the tokens those rounds produced, forgetting alike
    rounds: int = 0
    steps: int = 0

    def observe_step(self, *, compute_s: float, idle_s: float, tokens: int, jobs: int,
                     active: int, rounds: list[tuple[int, int]], fit: bool) -> None:
        """One step: its compute time, the compute thread's idle time before it, its tokens
        and jobs, the sessions active now, and each verification round in it as
        ``(decoded, produced)``. ``fit``: every token of the step asked its logits; only such
        steps with rounds in them enter the cost line (prefill chunks ask no logits and cost
        less per token; steps of generation alone all carry the same tokens once every
        session streams, and would leave the line no slope to learn from)."""
        self.steps += 1
        span = compute_s + max(idle_s, 0.0)
        utilization = compute_s / span if span > 0 else 1.0
        self.busy.update(utilization)
        self.active.update(float(max(active, 1)))
        if not rounds or tokens <= 0:
            return
        self.busy_v.update(utilization)
        compute_ms = compute_s * 1e3
        if fit:
            self.step_ms.update(float(tokens), compute_ms)
        c0, c1 = self._line()
        whole = c0 + c1 * tokens
        if whole > 0:  # the rounds' part of the line, scaled to the step's measured time
            share = sum(c0 / max(jobs, 1) + c1 * d for d, _ in rounds) / whole
        else:  # no line yet: an equal share per job
            share = len(rounds) / max(jobs, 1)
        self.rounds += len(rounds)
        self.verify_ms = self.decay * self.verify_ms + share * compute_ms
        self.verify_tokens = self.decay * self.verify_tokens + sum(p for _, p in rounds)

    def _line(self) -> tuple[float, float]:
        """(c0, c1) of the step-time line, ms, as plain floats (``LinearFit`` keeps both >= 0)."""
        c0, c1 = self.step_ms.coef()
        return float(c0), float(c1)

    def costs_ms(self) -> tuple[float, float]:
        """(stream, verify): the edge's compute per produced token, ms (verify 0 before any
        round)."""
        c0, c1 = self._line()
        stream = c0 / max(self.active.value, 1.0) + c1
        verify = self.verify_ms / self.verify_tokens if self.verify_tokens > 0 else 0.0
        return stream, verify

    @property
    def advise_stream(self) -> bool:
        if self.rounds < MIN_ROUNDS or self.busy.value < BUSY:
            return False
        stream, verify = self.costs_ms()
        return bool(verify / max(self.busy_v.value, 1e-9) > stream)

    def describe(self) -> dict[str, float | bool | int]:
        """For ``/v1/info``."""
        stream, verify = self.costs_ms()
        c0, c1 = self._line()
        return {"advise_stream": self.advise_stream, "busy": round(self.busy.value, 3),
                "step_ms_fixed": round(c0, 3), "step_ms_per_token": round(c1, 3),
                "stream_ms_per_token": round(stream, 3),
                "verify_ms_per_token": round(verify, 3),
                "verify_wall_ms_per_token": round(verify / max(self.busy_v.value, 1e-9), 3),
                "rounds_seen": self.rounds,
                "active_sessions": round(self.active.value, 2)}
