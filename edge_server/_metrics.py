"""The edge's Prometheus metrics: one ``EdgeMetrics`` per app, in its own registry.

Named in the style of vLLM's and llama.cpp's exporters: a ``coinfer_edge_`` prefix, base units
in the name (``_seconds``, ``_tokens``, ``_cells``), counters ending in ``_total`` (added by
``prometheus_client``), histograms for latencies and sizes. The table of names is in
docs/operations.md; ``/metrics`` serves them (``app.py``).

Counters are incremented where the event happens (the engine's loop, the frame handlers);
gauges of state the app already keeps (sessions, KV cells) are read when scraped
(``bind``), so nothing is counted twice and nothing can drift from ``/v1/info``.

Each app has its own ``CollectorRegistry`` (not the process-global one): several edges in one
process (tests) never share or collide on a series.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Decode-step sizes, tokens: 1 (one stream's token) up to llama.cpp's largest batch.
STEP_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# Step compute and queue waits, seconds: a tiny model's step is ~1 ms, a big one's 100s of ms.
STEP_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 2.5, 5.0)
QUEUE_SECONDS_BUCKETS = (0.0001, 0.00025, *STEP_SECONDS_BUCKETS)
SESSION_KINDS = ("llm", "dnn")
CAPACITY_REFUSALS = ("too-many-sessions", "kv-full")  # the refusals that mean "add an edge"


class EdgeMetrics:
    """Every metric of one edge, registered in ``registry``.

    Not thread-safe beyond what ``prometheus_client`` guarantees (each value has its own
    lock); the edge increments from the event loop only.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.sessions_running = Gauge(
            "coinfer_edge_sessions_running", "Sessions open now, by kind (llm, dnn)",
            ["kind"], registry=r)
        self.sessions_opened = Counter(
            "coinfer_edge_sessions_opened", "Sessions opened, by kind (llm, dnn)",
            ["kind"], registry=r)
        self.sessions_refused = Counter(
            "coinfer_edge_sessions_refused",
            "Session opens refused, by reason (the error frame's code: too-many-sessions, "
            "kv-full, vocab-mismatch, prompt-too-long, protocol, ...)", ["reason"], registry=r)
        self.kv_cells_used = Gauge(
            "coinfer_edge_kv_cells_used", "KV cells of the shared pool holding tokens",
            registry=r)
        self.kv_cells_capacity = Gauge(
            "coinfer_edge_kv_cells_capacity", "KV cells in the shared pool", registry=r)
        self.decode_steps = Counter(
            "coinfer_edge_decode_steps", "Batched decode steps the engine ran", registry=r)
        self.step_tokens = Histogram(
            "coinfer_edge_step_tokens", "Tokens decoded per engine step (all sessions' jobs)",
            buckets=STEP_TOKEN_BUCKETS, registry=r)
        self.step_seconds = Histogram(
            "coinfer_edge_step_seconds",
            "Compute time per engine step: the decode and every job's math",
            buckets=STEP_SECONDS_BUCKETS, registry=r)
        self.queue_seconds = Histogram(
            "coinfer_edge_queue_seconds", "Time a job waited for its engine step",
            buckets=QUEUE_SECONDS_BUCKETS, registry=r)
        self.prompt_tokens = Counter(
            "coinfer_edge_prompt_tokens", "Prompt tokens of opened LLM sessions", registry=r)
        self.verify_rounds = Counter(
            "coinfer_edge_verify_rounds", "Speculative rounds verified", registry=r)
        self.positions_verified = Counter(
            "coinfer_edge_positions_verified",
            "Positions the target scored in verification (drafted tokens + 1 per round)",
            registry=r)
        self.draft_tokens_received = Counter(
            "coinfer_edge_draft_tokens_received", "Drafted tokens received for verification",
            registry=r)
        self.draft_tokens_accepted = Counter(
            "coinfer_edge_draft_tokens_accepted", "Drafted tokens the target accepted",
            registry=r)
        self.draft_tokens_accepted_per_pos = Counter(
            "coinfer_edge_draft_tokens_accepted_per_pos",
            "Drafted tokens accepted, by their position in the round (0 = first)",
            ["position"], registry=r)
        # its children by position, made as a round first reaches one (a round's accepted
        # positions are 0..accepted-1): no label lookup or string per accepted token
        self._accepted_at: list[Any] = []
        self.round_tokens = Counter(
            "coinfer_edge_round_tokens",
            "Tokens committed by verification: accepted drafts plus the target's one",
            registry=r)
        self.generated_tokens = Counter(
            "coinfer_edge_generated_tokens",
            "Tokens the target generated alone and streamed (edge-only stretches)",
            registry=r)
        self.dnn_tasks = Counter(
            "coinfer_edge_dnn_tasks", "Split-DNN tasks opened", registry=r)
        self.dnn_tails = Counter(
            "coinfer_edge_dnn_tails", "Split-DNN tail evaluations run", registry=r)
        self.dnn_tail_seconds = Histogram(
            "coinfer_edge_dnn_tail_seconds", "Compute time per split-DNN tail evaluation",
            buckets=STEP_SECONDS_BUCKETS, registry=r)

        # Series a dashboard or an alert reads exist from the start, at 0 (an absent series
        # has no rate).
        for kind in SESSION_KINDS:
            self.sessions_opened.labels(kind=kind)
        for reason in CAPACITY_REFUSALS:
            self.sessions_refused.labels(reason=reason)

    def bind(self, *, sessions: Callable[[str], int], kv_used: Callable[[], int],
             kv_capacity: Callable[[], int]) -> None:
        """Read the gauges of state the app keeps when scraped: ``sessions(kind)`` open
        sessions of a kind, ``kv_used()`` and ``kv_capacity()`` cells (0 without a model)."""
        for kind in SESSION_KINDS:
            self.sessions_running.labels(kind=kind).set_function(
                lambda kind=kind: sessions(kind))
        self.kv_cells_used.set_function(kv_used)
        self.kv_cells_capacity.set_function(kv_capacity)

    def observe_step(self, *, tokens: int, compute_s: float) -> None:
        """One engine step: ``tokens`` decoded in ``compute_s`` seconds (each job's wait goes
        to ``queue_seconds``, observed by the engine as it walks the step's jobs)."""
        self.decode_steps.inc()
        self.step_tokens.observe(tokens)
        self.step_seconds.observe(compute_s)

    def observe_round(self, drafted: int, accepted: int) -> None:
        """One verified round: ``drafted`` tokens received, the first ``accepted`` of them
        accepted, and the target's own token committed after them."""
        self.verify_rounds.inc()
        self.positions_verified.inc(drafted + 1)
        self.draft_tokens_received.inc(drafted)
        self.draft_tokens_accepted.inc(accepted)
        self.round_tokens.inc(accepted + 1)
        at = self._accepted_at
        while len(at) < accepted:
            at.append(self.draft_tokens_accepted_per_pos.labels(position=str(len(at))))
        for child in at[:accepted]:
            child.inc()


__all__ = ["EdgeMetrics"]
