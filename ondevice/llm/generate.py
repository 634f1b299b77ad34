"""The speculative generation loop over a draft model and an edge: the one loop behind
``ondevice generate``, the Python API (``ondevice.llm.device.Device``) and ``ondevice serve``.

``Generation`` wires one prompt's parts together and owns no math: the policy decides
drafting, ``DraftStream`` drafts and commits, the edge verifies, and the meter measures. The
parts, each a module of its own:

- ``_output``: the committed tokens; every commit (a verified round, a chunk of an edge-only
  stream, a token of the draft alone) is told to ``on_tokens``, the hook streaming is built
  on; llama.cpp calls run in a worker thread so the event loop stays free for the socket and
  the meter;
- ``_round``: the rounds on one edge session (draft, send, accept) and the edge's stretches,
  counted as the simulators count theirs (``round_account``);
- ``_edge_session``: which edge (placement among several), opening a session, moving to
  another edge when one dies or drains, and the draft alone when none is left. Losing an edge
  never loses output: tokens already verified stay committed, the unverified draft of the
  failed round is dropped, and the generation resumes on the next edge from the committed
  sequence (or the draft model carries on alone with ``degraded`` set);
- ``report.build_report``: the report, from what the parts recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from hw import Activity, PowerMeter, open_meter
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner
from ondevice.edge.client import EdgePool
from ondevice.edge.discovery import EdgeBrowser
from ondevice.llm._edge_session import FATAL_EDGE_ERRORS, EdgePlan, EdgeRequired, EdgeSessions
from ondevice.llm._output import Output
from ondevice.llm._round import Rounds
from ondevice.llm.draft import DraftStream
from ondevice.llm.policies import Policy
from ondevice.llm.report import Report, build_report

log = logging.getLogger(__name__)

METER_WAIT_S = 3.0  # s to wait for a meter's first reading before generating anyway


class MeterUnavailable(RuntimeError):
    """A real meter gave no reading before generation and the caller required one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateRequest:
    prompt: str
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    top_k: int = 32  # support of the truncated draft distribution sent per drafted token
    add_bos: bool = True
    # The prompt as token ids, when the caller tokenized it (e.g. a chat template's special
    # tokens); ``prompt`` is then only its text for the record.
    prompt_ids: tuple[int, ...] | None = None


class Generation:
    """One prompt's generation, from the first edge contact to the last token."""

    def __init__(
        self,
        draft_model: LlamaModel,
        request: GenerateRequest,
        policy: Policy,
        *,
        edge_url: str | None = None,
        plan: EdgePlan | None = None,
        meter: PowerMeter,
        activity: Activity,
        llama_config: LlamaConfig | None = None,
        edge_timeout_s: float = 15.0,
        browser: EdgeBrowser | None = None,
        stop: asyncio.Event | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
        edges: EdgePool | None = None,
    ) -> None:
        """``on_tokens(ids)`` is called on the event loop with every batch of newly committed
        tokens, in order, never with an end-of-generation token: their concatenation is the
        report's ``tokens``. It must not block (no llama.cpp decode runs meanwhile). ``edges``
        is a caller's long-lived pool of edge sockets; without one each run connects afresh
        and closes its sockets at the end."""
        self.model = draft_model
        self.request = request
        self.policy = policy
        self.plan = plan or EdgePlan(url=edge_url, timeout_s=edge_timeout_s)
        self.meter = meter
        self.activity = activity
        self.llama_config = llama_config or LlamaConfig()
        self._browser = browser  # a caller's long-lived browser, else one per run
        self._stop = stop  # set: finish the step in flight, then end with what is committed
        self._on_tokens = on_tokens
        self._edges = edges
        self._connects_before = edges.connects if edges is not None else 0

    def _on_bytes(self, tx: int, rx: int) -> None:
        if tx:
            self.activity.add_tx_bytes(tx)
        if rx:
            self.activity.add_rx_bytes(rx)

    async def run(self, runner: LlamaRunner) -> Report:
        """Generate on ``runner`` (a context on the draft model) and report. Raises
        ValueError for a prompt that does not fit the draft's context, EdgeRequired and
        ``wire.EdgeError`` as ``EdgeSessions`` does."""
        req, plan, policy = self.request, self.plan, self.policy
        if req.prompt_ids is not None:
            prompt_ids = list(req.prompt_ids)
        else:
            prompt_ids = self.model.tokenize(req.prompt, add_special=req.add_bos)
        room = runner.n_ctx - len(prompt_ids)
        if room <= 0:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens does not fit n_ctx {runner.n_ctx}"
            )
        stream = DraftStream(
            runner, prompt_ids, temperature=req.temperature, top_k=req.top_k, seed=req.seed
        )
        out = Output(self.model, stream, max_tokens=req.max_tokens,
                     budget=min(req.max_tokens, room - 1), activity=self.activity,
                     threads=self.llama_config.n_threads or 1, on_tokens=self._on_tokens,
                     stop=self._stop)
        use_edge = bool(policy.mode != "device-only" and (plan.url or plan.discover))
        policy_start = policy.describe()
        async with contextlib.AsyncExitStack() as stack:
            browser, pool = self._browser, self._edges
            if use_edge and plan.discover and browser is None:
                browser = await stack.enter_async_context(
                    EdgeBrowser(interfaces=plan.interfaces, token=plan.token, site=plan.site)
                )
            if use_edge and pool is None:  # this run's own sockets, closed at its end
                pool = EdgePool(timeout_s=plan.timeout_s, token=plan.token,
                                allow_plaintext_token=plan.allow_plaintext_token,
                                on_bytes=self._on_bytes)
                stack.push_async_callback(pool.async_close)
            rounds = Rounds(out, policy, self.meter)
            sessions = EdgeSessions(plan, out, rounds, req,  # no edge at all without use_edge
                                    pool=pool if use_edge else None,
                                    browser=browser if use_edge else None)
            targets = await sessions.first_targets() if use_edge else []
            log.info("generating up to %d tokens with policy %s", out.budget, policy.name)
            policy.begin_prompt()
            t0 = time.monotonic()
            if use_edge and policy.wants_draft_time():
                await rounds.calibrate()
            await sessions.run(targets)
            t1 = time.monotonic()
            return build_report(
                out=out, rounds=rounds, sessions=sessions, meter=self.meter, window=(t0, t1),
                prompt_tokens=len(prompt_ids), temperature=req.temperature, seed=req.seed,
                policy_start=policy_start,
                edge_connects=pool.connects - self._connects_before if pool is not None else 0,
            )


async def generate(
    draft_path: str,
    request: GenerateRequest,
    policy: Policy,
    *,
    edge_url: str | None = None,
    plan: EdgePlan | None = None,
    meter_spec: str = "sim",
    llama_config: LlamaConfig | None = None,
    edge_timeout_s: float = 15.0,
    browser: EdgeBrowser | None = None,
    stop: asyncio.Event | None = None,
    require_meter: bool = True,
) -> Report:
    """Load the draft, open the meter, run one generation, and report.

    ``plan`` says which edges to use; ``edge_url`` alone is shorthand for one explicit edge
    without discovery. A long-running caller passes its own open ``browser`` so discovery
    answers are already in hand. Once ``stop`` is set the generation ends after the step in
    flight and reports what it has committed (``stop_reason`` "interrupted"). A measured meter
    that gives no reading within ``METER_WAIT_S`` raises MeterUnavailable when
    ``require_meter``; otherwise the report says ``energy_source`` "none" and why.
    """
    cfg = llama_config or LlamaConfig()
    activity = Activity()
    async with open_draft(draft_path, cfg) as (model, runner), open_ready_meter(
        meter_spec, activity, require=require_meter
    ) as meter:
        gen = Generation(
            model,
            request,
            policy,
            plan=plan or EdgePlan(url=edge_url, timeout_s=edge_timeout_s),
            meter=meter,
            activity=activity,
            llama_config=cfg,
            browser=browser,
            stop=stop,
        )
        return await gen.run(runner)


@contextlib.asynccontextmanager
async def open_draft(
    draft_path: str, config: LlamaConfig
) -> AsyncIterator[tuple[LlamaModel, LlamaRunner]]:
    """The draft model and one context on it, loaded in a worker thread, freed on exit (after
    any llama.cpp call in flight: the runtime's lock)."""
    model = await asyncio.to_thread(LlamaModel, draft_path)
    try:
        runner = await asyncio.to_thread(LlamaRunner, model, config)
        try:
            yield model, runner
        finally:
            await asyncio.to_thread(runner.close)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(model.close)


@contextlib.asynccontextmanager
async def open_ready_meter(
    spec: str, activity: Activity, *, require: bool
) -> AsyncIterator[PowerMeter]:
    """The meter ``spec``, sampling, with a first reading in hand (a serial meter takes a
    poll). A measured meter with no reading within ``METER_WAIT_S`` raises MeterUnavailable
    when ``require``; otherwise reports say ``energy_source`` "none" and why."""
    async with open_meter(spec, activity=activity) as meter:
        if not await meter.async_wait_sample(METER_WAIT_S) and meter.measured and require:
            raise MeterUnavailable(
                f"meter {spec} gave no reading in {METER_WAIT_S:g} s"
                f" ({meter.last_error or 'no samples'})"
            )
        yield meter


__all__ = [
    "FATAL_EDGE_ERRORS",
    "METER_WAIT_S",
    "EdgePlan",
    "EdgeRequired",
    "GenerateRequest",
    "Generation",
    "MeterUnavailable",
    "Report",
    "generate",
    "open_draft",
    "open_ready_meter",
]
