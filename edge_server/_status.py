"""The edge's live status: ``GET /v1/status`` (strict JSON) and ``GET /status`` (one
self-contained HTML page that polls it every second).

Each session keeps a ``SessionStats``: a few counters bumped once per round or streamed token
by its frame handlers (``_llm_session``), nothing per decode step. The engine's figures are
its own counters and the Prometheus histograms it already feeds (``_metrics.EdgeMetrics``),
read when the status is asked for, so nothing is counted twice. Figures are cumulative
(since the session opened, since the edge started) so that a reader can take the difference of
two polls for a recent rate, as Prometheus' ``rate()`` does; the page does so for its
tokens/s sparklines and the engine's recent step time.

The policy a device runs is not on the wire (``wire.Open`` carries the draft model's name,
not the policy), so the status shows what the edge sees instead: ``mode``, whether the
session's last work was a verified round (``draft``) or a streamed token (``stream``).

Access follows ``/metrics``: the edge's bearer token unless ``--metrics-public``. A browser
cannot add an ``Authorization`` header to a page it navigates to, so these two routes also
take the token as ``?token=`` (compared in constant time, ``app.auth_middleware``). The page
takes it out of its address bar at once and sends it to ``/v1/status`` as a bearer header;
it sends no ``Referer``; the access log writes the query's token as ``REDACTED``
(``RedactingAccessLogger``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from prometheus_client import Counter, Histogram

from edge_server._state import STATE, EdgeState
from ondevice.common import jsonout

STATUS_PATH = "/status"  # the HTML page
STATUS_JSON_PATH = "/v1/status"  # what it polls
STATUS_PATHS = frozenset({STATUS_PATH, STATUS_JSON_PATH})  # the routes that take ?token=
PAGE_RESOURCE = "static/status.html"  # in the edge_server package (pyproject package-data)


@dataclass(slots=True)
class SessionStats:
    """One LLM session's running figures; times are ``time.perf_counter()`` seconds.

    ``observe_round`` and ``observe_stream`` are called from the event loop, once per
    verified round and per streamed token: a few additions each.
    """

    t_open_s: float = field(default_factory=time.perf_counter)
    rounds: int = 0
    drafted: int = 0  # drafted tokens received
    accepted: int = 0  # of them accepted
    streamed: int = 0  # tokens the target generated alone and streamed
    jobs: int = 0  # engine jobs answered (rounds and streamed tokens)
    queue_ms: float = 0.0  # their total wait for a step, ms
    mode: str = "open"  # "draft" or "stream": the last work done (the policy is not on the wire)

    @property
    def tokens(self) -> int:
        """Tokens the session committed: accepted drafts, the target's one per round, and
        the streamed ones."""
        return self.accepted + self.rounds + self.streamed

    def observe_round(self, drafted: int, accepted: int, queue_ms: float | None) -> None:
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        self._job(queue_ms)
        self.mode = "draft"

    def observe_stream(self, tokens: int, queue_ms: float | None) -> None:
        self.streamed += tokens
        self._job(queue_ms)
        self.mode = "stream"

    def _job(self, queue_ms: float | None) -> None:
        self.jobs += 1
        self.queue_ms += queue_ms or 0.0

    def describe(self, now_s: float) -> dict[str, Any]:
        """The session's figures at ``now_s`` (perf_counter s); a ratio with nothing under it
        is None."""
        age_s = max(now_s - self.t_open_s, 0.0)
        return {
            "mode": self.mode,
            "age_s": round(age_s, 3),
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / age_s if age_s > 0 else None,
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "streamed": self.streamed,
            "acceptance": self.accepted / self.drafted if self.drafted else None,
            "mean_draft": self.drafted / self.rounds if self.rounds else None,
            "mean_queue_ms": self.queue_ms / self.jobs if self.jobs else None,
        }


def _sum_count(histogram: Histogram) -> tuple[float, float]:
    """(sum, count) of an unlabelled histogram, as its exposition says."""
    total = count = 0.0
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return total, count


def _total(counter: Counter) -> float:
    """An unlabelled counter's value, as its exposition says."""
    return sum(s.value for f in counter.collect() for s in f.samples
               if s.name.endswith("_total"))


def _engine(state: EdgeState, stats: dict[str, Any]) -> dict[str, Any]:
    """The engine's batch, step, queue and KV figures; ``stats`` is its ``stats()``."""
    engine = state.engine
    assert engine is not None
    m = state.metrics
    step_s, steps = _sum_count(m.step_seconds)
    queue_s, jobs = _sum_count(m.queue_seconds)
    return {
        "scheduler": engine.scheduler,
        "steps": engine.steps,
        "step_tokens": engine.step_tokens,  # all steps' tokens: batch size is their mean
        "step_jobs": engine.step_jobs,
        "mean_batch_tokens": engine.step_tokens / engine.steps if engine.steps else None,
        "mean_batch_jobs": engine.step_jobs / engine.steps if engine.steps else None,
        "step_seconds": step_s,  # all steps' compute
        "mean_step_ms": step_s / steps * 1e3 if steps else None,
        "mean_queue_ms": queue_s / jobs * 1e3 if jobs else None,
        "pending": stats["pending"],
        "kv_used": engine.kv_used,
        "kv_tokens": engine.pool.kv_tokens,
        "sequences": engine.pool.n_seq,
    }


def _dnn(state: EdgeState, sessions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The DNN service's splits, each with its open tasks (from the sessions' rows)."""
    svc = state.dnn
    if svc is None:
        return None
    open_by_split: dict[int, int] = {}
    for row in sessions:
        if row["kind"] == "dnn" and row["split"] is not None:
            open_by_split[row["split"]] = open_by_split.get(row["split"], 0) + 1
    splits = sorted(set(svc.tail_ms) | set(open_by_split))
    return {
        "model": svc.model_id,
        "splits": [{"split": i, "open_tasks": open_by_split.get(i, 0),
                    "tail_ms": svc.tail_ms.get(i)} for i in splits],
        "tasks_opened": _total(state.metrics.dnn_tasks),
        "tails": _total(state.metrics.dnn_tails),
    }


def snapshot(state: EdgeState, now_s: float) -> dict[str, Any]:
    """Everything ``/v1/status`` shows, at ``now_s`` (perf_counter s)."""
    sessions = [s.describe_status(now_s) for s in state.sessions.values()]
    sessions.sort(key=lambda d: (str(d.get("device") or d.get("peer")), d["sid"]))
    stats = state.engine.stats() if state.engine is not None else None  # as /v1/info's
    return {
        "t_s": now_s,  # perf_counter s: for differences between two polls
        "model": state.model.model_id if state.model is not None else None,
        "max_sessions": state.config.max_sessions,
        "state": state.drain.state,  # serving or draining (``_drain``)
        "policy_on_wire": False,  # see ``mode``
        "sessions": sessions,
        "engine": _engine(state, stats) if stats is not None else None,
        "advice": stats["advice"] if stats is not None else None,
        "dnn": _dnn(state, sessions),
    }


async def handle_status_json(request: web.Request) -> web.Response:
    return web.json_response(snapshot(request.app[STATE], time.perf_counter()),
                             dumps=jsonout.dumps, headers={"Cache-Control": "no-store"})


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access log with a ``token`` query parameter written as ``REDACTED``."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if "token" in request.query:
            request = request.clone(rel_url=request.rel_url.update_query(token="REDACTED"))
        super().log(request, response, time)


def add_status_routes(app: web.Application) -> None:
    """Serve the page at ``STATUS_PATH`` and its JSON at ``STATUS_JSON_PATH``. The page is
    read from the package once, here."""
    page = resources.files("edge_server").joinpath(PAGE_RESOURCE).read_bytes()

    async def handle_page(request: web.Request) -> web.Response:
        # The page runs no code but its own inline script and fetches only this edge.
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": ("default-src 'none'; script-src 'unsafe-inline'; "
                                        "style-src 'unsafe-inline'; connect-src 'self'; "
                                        "img-src data:"),
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        })

    app.router.add_get(STATUS_PATH, handle_page)
    app.router.add_get(STATUS_JSON_PATH, handle_status_json)


__all__ = ["STATUS_JSON_PATH", "STATUS_PATH", "STATUS_PATHS", "RedactingAccessLogger",
           "SessionStats",
           "add_status_routes", "snapshot"]
