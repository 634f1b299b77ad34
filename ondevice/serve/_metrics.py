"""``ondevice serve``'s Prometheus metrics: one ``ServeMetrics`` per app, in its own registry.

Named in the style of vLLM's and llama.cpp's exporters: a ``coinfer_device_`` prefix, base
units in the name, counters ending in ``_total`` (added by ``prometheus_client``), histograms
for latencies. The table of names is in docs/operations.md; ``/metrics`` serves them.

Where the values come from:

- latencies from the stream of pieces the server already relays (``RequestTimer``): time to
  first token from the request's arrival to its first piece carrying tokens, inter-token
  latency between successive pieces carrying tokens (one observation per piece, as vLLM
  observes one per engine step: a piece holds a round's tokens), end-to-end latency from
  arrival to the last piece;
- everything else from the generation's ``Report`` (``observe_report``): tokens by source,
  drafted tokens, energy (measured by a meter or modelled), mean power, GELATO's virtual
  energy queue and drafting budget, the power budget, edge connects and failovers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from ondevice.llm.report import Report

# Seconds: a fixture model's token is ~1 ms, a phone's draft round 10s of ms, a far edge's
# first token seconds (vLLM's buckets, from 1 ms).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
               0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
               30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0)
TOKEN_SOURCES = ("draft_accepted", "edge", "draft_alone")
ENERGY_SOURCES = ("measured", "modelled")  # ``Report.energy_source`` when there is a figure
COMMON_STATUSES = ("200", "400", "401", "429", "499", "500", "502", "503")


def tokens_by_source(report: Report) -> dict[str, int]:
    """The report's ``n_tokens`` split by who produced them (the counts sum to ``n_tokens``):
    ``draft_accepted``, drafted tokens an edge accepted; ``draft_alone``, tokens the draft
    generated without an edge (the ``draft`` segments: degraded or device-only); ``edge``,
    the rest: the target's token of each round and the tokens of edge-only stretches."""
    n = report.n_tokens
    alone = sum(s["to_token"] - s["from_token"] for s in report.segments
                if s["source"] == "draft")
    alone = min(max(alone, 0), n)
    accepted = min(max(report.accepted, 0), n - alone)
    return {"draft_accepted": accepted, "edge": n - alone - accepted, "draft_alone": alone}


def failovers(report: Report) -> int:
    """Times the generation moved off an edge it was using: to the next edge, or (degraded
    after using one) to the draft alone."""
    moves = max(len(report.edges) - 1, 0)
    return moves + (1 if report.degraded and report.edges else 0)


class RequestTimer:
    """One request's latencies, fed the monotonic seconds of its events (pure: no clock)."""

    __slots__ = ("_last_s", "_metrics", "_t0_s")

    def __init__(self, metrics: ServeMetrics, t0_s: float) -> None:
        self._metrics = metrics
        self._t0_s = t0_s  # the request's arrival
        self._last_s: float | None = None  # the last piece that carried tokens

    def piece(self, n_tokens: int, now_s: float) -> None:
        """A streamed piece with ``n_tokens`` tokens (pieces without tokens are not timed)."""
        if n_tokens <= 0:
            return
        if self._last_s is None:
            self._metrics.time_to_first_token.observe(now_s - self._t0_s)
        else:
            self._metrics.inter_token_latency.observe(now_s - self._last_s)
        self._last_s = now_s

    def finish(self, now_s: float) -> None:
        """The generation ended (its report is out)."""
        self._metrics.e2e_latency.observe(now_s - self._t0_s)


class ServeMetrics:
    """Every metric of one ``ondevice serve`` app, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "coinfer_device_requests",
            "Completion requests answered, by HTTP status (499: the client left)",
            ["status"], registry=r)
        for status in COMMON_STATUSES:
            self.requests.labels(status=status)
        self.requests_running = Gauge(
            "coinfer_device_requests_running", "Requests generating now (0 or 1)", registry=r)
        self.requests_waiting = Gauge(
            "coinfer_device_requests_waiting", "Requests queued behind the one generating",
            registry=r)
        self.time_to_first_token = Histogram(
            "coinfer_device_time_to_first_token_seconds",
            "From a request's arrival to its first generated token", buckets=TTFT_BUCKETS,
            registry=r)
        self.inter_token_latency = Histogram(
            "coinfer_device_inter_token_latency_seconds",
            "Between successive streamed pieces carrying tokens (a round's tokens come "
            "together)", buckets=ITL_BUCKETS, registry=r)
        self.e2e_latency = Histogram(
            "coinfer_device_e2e_request_latency_seconds",
            "From a request's arrival to its generation's end", buckets=E2E_BUCKETS,
            registry=r)
        self.prompt_tokens = Counter(
            "coinfer_device_prompt_tokens", "Prompt tokens of finished generations",
            registry=r)
        self.tokens = Counter(
            "coinfer_device_tokens",
            "Generated tokens by source: draft_accepted (drafted, accepted by an edge), edge "
            "(the target's), draft_alone (the draft without an edge)", ["source"], registry=r)
        for source in TOKEN_SOURCES:
            self.tokens.labels(source=source)
        self.draft_tokens = Counter(
            "coinfer_device_draft_tokens", "Tokens drafted and sent to an edge for verification",
            registry=r)
        self.generation_seconds = Counter(
            "coinfer_device_generation_seconds",
            "Time spent generating (the energy's window)", registry=r)
        self.energy = Counter(
            "coinfer_device_energy_joules",
            "Device energy over generations, by source: measured (a power meter) or "
            "modelled (a power profile)", ["source"], registry=r)
        self.power = Gauge(
            "coinfer_device_power_watts", "Mean device power of the last generation, by source",
            ["source"], registry=r)
        for source in ENERGY_SOURCES:
            self.energy.labels(source=source)
        self.gelato_queue = Gauge(
            "coinfer_device_gelato_queue_joules",
            "GELATO's virtual energy queue after the last generation (> 0: spending above "
            "the budget)", registry=r)
        self.gelato_draft_budget = Gauge(
            "coinfer_device_gelato_draft_budget_tokens",
            "GELATO's mean planned drafting budget per round (NaN: not GELATO)", registry=r)
        self.power_budget = Gauge(
            "coinfer_device_power_budget_watts", "The policy's power budget (NaN: none)",
            registry=r)
        self.energy_per_token_budget = Gauge(
            "coinfer_device_energy_per_token_budget_joules",
            "The policy's energy-per-token budget (NaN: none)", registry=r)
        for g in (self.gelato_draft_budget, self.power_budget, self.energy_per_token_budget):
            g.set(math.nan)
        self.budget_missed = Counter(
            "coinfer_device_budget_missed",
            "Generations whose mean power (or energy per token) exceeded the budget by more "
            "than the tolerance", registry=r)
        self.edge_connects = Counter(
            "coinfer_device_edge_connects", "Edge sockets opened", registry=r)
        self.edge_failovers = Counter(
            "coinfer_device_edge_failovers",
            "Times a generation moved off an edge it used (to another edge or the draft)",
            registry=r)
        self.degraded = Counter(
            "coinfer_device_degraded_requests",
            "Generations that finished on the draft alone", registry=r)

    def bind(self, *, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        """Read the request gauges from the app's state when scraped."""
        self.requests_running.set_function(running)
        self.requests_waiting.set_function(waiting)

    def timer(self, t0_s: float) -> RequestTimer:
        """The latencies of a request that arrived at ``t0_s`` (monotonic seconds)."""
        return RequestTimer(self, t0_s)

    def observe_report(self, report: Report) -> None:
        """Count one finished generation."""
        self.prompt_tokens.inc(report.prompt_tokens)
        for source, n in tokens_by_source(report).items():
            self.tokens.labels(source=source).inc(n)
        self.draft_tokens.inc(report.drafted)
        self.generation_seconds.inc(report.elapsed_s)
        if report.energy_j is not None and report.energy_source in ENERGY_SOURCES:
            self.energy.labels(source=report.energy_source).inc(report.energy_j)
            if report.mean_power_w is not None:
                self.power.labels(source=report.energy_source).set(report.mean_power_w)
        settings = report.policy_settings
        if report.policy == "gelato":
            self.gelato_queue.set(float(settings.get("queue_j") or 0.0))
            budget = settings.get("mean_reference_budget")
            self.gelato_draft_budget.set(math.nan if budget is None else float(budget))
        self.power_budget.set(math.nan if report.budget_w is None else report.budget_w)
        self.energy_per_token_budget.set(
            math.nan if report.budget_j_per_token is None else report.budget_j_per_token)
        if report.budget_met is False:
            self.budget_missed.inc()
        self.edge_connects.inc(report.edge_connects)
        self.edge_failovers.inc(failovers(report))
        if report.degraded:
            self.degraded.inc()


__all__ = ["RequestTimer", "ServeMetrics", "failovers", "tokens_by_source"]
