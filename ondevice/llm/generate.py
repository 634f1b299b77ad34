"""The speculative generation loop over a draft model and an edge: the one loop behind
``ondevice generate``, the Python API (``ondevice.llm.device.Device``) and ``ondevice serve``.

The loop owns no math: the policy decides drafting, ``DraftStream`` drafts and commits, the
edge verifies, and the meter measures. llama.cpp calls run in a worker thread so the event
loop stays free for the socket and the meter. Every commit of tokens (a verified round, a
chunk of an edge-only stream, a token of the draft alone) is told to ``on_tokens``, the hook
streaming is built on.

Losing the edge (refused, reset, timed out) never loses output: tokens already verified stay
committed, the unverified draft of the failed round is dropped, and the draft model finishes
the generation alone with ``degraded`` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from hw import Activity, PowerMeter, open_meter
from ondevice.common import wire
from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner
from ondevice.edge.client import EdgeClient, EdgePool, EdgeUnavailable
from ondevice.edge.discovery import EdgeBrowser, rank_edges
from ondevice.llm.draft import Ahead, Drafted, DraftStream
from ondevice.llm.policies import Policy, RoundStats
from ondevice.llm.report import Report

log = logging.getLogger(__name__)

METER_WAIT_S = 3.0  # s to wait for a meter's first reading before generating anyway
# Refusals that mean the user's configuration is wrong: with an explicit --edge they end the
# command; an edge found by discovery that refuses is skipped instead.
FATAL_EDGE_ERRORS = frozenset(
    {"vocab-mismatch", "unauthorized", "tls-fingerprint", "protocol", "insecure"}
)
# What a user can do when an edge refuses a generation for one of these reasons.
_FIXES = {
    "prompt-too-long": "shorten the prompt, or start edge-server with a larger --max-prompt "
                       "and --n-ctx",
    "too-many-sessions": "try again later, or raise edge-server --max-sessions",
    "context-full": "ask for fewer tokens, or start edge-server with a larger --n-ctx",
}


class EdgeRequired(RuntimeError):
    """The edge could not be used and the caller asked not to fall back to the draft alone."""


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


@dataclass(slots=True)
class _Totals:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    rtt_s: float = 0.0
    round_s: float = 0.0
    overhead_s: float = 0.0
    ahead: int = 0  # tokens drafted ahead while rounds were in flight
    ahead_hits: int = 0  # rounds whose tokens drafted ahead headed the next round
    near_ties: int | None = None  # the edge's count of near-tie greedy tokens, once it gives one

    def add_ties(self, ties: int | None) -> None:
        if ties is not None:
            self.near_ties = (self.near_ties or 0) + ties


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgePlan:
    """Which edges a generation may use.

    ``url`` is tried first when given. With ``discover``, zeroconf (on ``interfaces``; empty =
    all) finds compatible edges when there is no ``url``, and again whenever the edge in use
    is lost, while the draft carries on alone.
    """

    url: str | None = None
    fingerprint: str | None = None  # pinned TLS certificate SHA-256 (hex) for ``url``
    discover: bool = False
    interfaces: tuple[str, ...] = ()
    site: str | None = None  # only edges advertising this site label (None: any)
    token: str | None = None
    browse_s: float = 2.0
    timeout_s: float = 15.0  # per edge reply
    require_edge: bool = False  # raise EdgeRequired instead of finishing on the draft alone
    allow_plaintext_token: bool = False  # send the token over http:// to another host


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    fingerprint: str | None


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
        self._on_tokens = on_tokens
        self._edges = edges
        self._connects_before = edges.connects if edges is not None else 0
        self._stop = stop  # set: finish the step in flight, then end with what is committed
        self.request = request
        self.policy = policy
        self.plan = plan or EdgePlan(url=edge_url, timeout_s=edge_timeout_s)
        self.meter = meter
        self.activity = activity
        self.llama_config = llama_config or LlamaConfig()
        self.totals = _Totals()
        self.degraded = False
        self.degraded_at: int | None = None
        self.degraded_reason: str | None = None
        self._max_draft: int | None = None  # the edge's per-round limit (from /v1/info)
        self._clamp_warned = False
        self.edges_used: list[str] = []
        self.failed: list[str] = []
        self.rejected: list[dict[str, str]] = []
        self.segments: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.stop_reason = "max_tokens"
        self._threads = self.llama_config.n_threads or 1
        self._vocab_hash: str | None = None
        self._browser = browser  # a caller's long-lived browser, else one per run

    # -- helpers ----------------------------------------------------------------------------

    def _on_bytes(self, tx: int, rx: int) -> None:
        if tx:
            self.activity.add_tx_bytes(tx)
        if rx:
            self.activity.add_rx_bytes(rx)

    async def _busy(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Run a llama.cpp call in a worker thread, telling the activity model it is busy."""

        def job():  # type: ignore[no-untyped-def]
            with self.activity.busy(self._threads):
                return fn(*args, **kwargs)

        return await asyncio.to_thread(job)

    def _stopping(self) -> bool:
        """True once the caller asked to stop (Ctrl-C); the loops check it between steps."""
        if self._stop is not None and self._stop.is_set():
            self.stop_reason = "interrupted"
            return True
        return False

    def _remaining(self, stream: DraftStream) -> int:
        return self.request.max_tokens - len(stream.out)

    def _emit(self, tokens: list[int]) -> None:
        """Tell the caller's hook of newly committed tokens (the streaming path)."""
        if tokens and self._on_tokens is not None:
            self._on_tokens(tokens)

    def _accept_tokens(self, stream: DraftStream, tokens: list[int]) -> bool:
        """Commit tokens, cutting at an end-of-generation token or the budget; True if done."""
        room = self._remaining(stream)
        for i, t in enumerate(tokens[:room]):
            if self.model.is_eog(t):
                stream.commit(tokens[:i])
                self._emit(tokens[:i])
                self.stop_reason = "eos"
                return True
        stream.commit(tokens[:room])
        self._emit(tokens[:room])
        return self._remaining(stream) <= 0

    def _note_degraded(self, at: int, reason: str) -> None:
        """Record that the draft carries on alone from token ``at``, or raise EdgeRequired."""
        if self.plan.require_edge:
            raise EdgeRequired(reason)
        if not self.degraded:
            self.degraded, self.degraded_at, self.degraded_reason = True, at, reason
        self.errors.append(reason)
        log.warning("%s; continuing on the draft alone from token %d (--require-edge makes "
                    "this an error)", reason, at)

    def _degrade(self, stream: DraftStream, url: str, exc: BaseException) -> None:
        self.failed.append(url)
        reason = f"edge {url}: {exc}"
        fix = _FIXES.get(exc.code) if isinstance(exc, wire.EdgeError) else None
        self._note_degraded(len(stream.out), f"{reason}; fix: {fix}" if fix else reason)

    async def _discover(self) -> list[_Target]:
        """Compatible edges known now, best first, excluding those that failed in this run."""

        assert self._browser is not None
        records = await self._browser.async_records()
        usable, rejected = rank_edges(records, vocab_hash=self._vocab_hash, exclude=self.failed)
        for r in rejected:
            entry = {"url": r.record.url, "name": r.record.name, "reason": r.reason}
            if entry not in self.rejected:
                self.rejected.append(entry)
                log.warning("not using edge %s: %s", r.record.url, r.reason)
        return [_Target(r.url, r.fingerprint or None) for r in usable]

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, runner: LlamaRunner) -> Report:
        req, plan = self.request, self.plan
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
        budget = min(req.max_tokens, room - 1)
        if budget < req.max_tokens:
            self.stop_reason = "context"
        use_edge = bool(self.policy.mode != "device-only" and (plan.url or plan.discover))
        self._policy_start = self.policy.describe()
        async with contextlib.AsyncExitStack() as stack:
            if use_edge and plan.discover and self._browser is None:
                self._browser = await stack.enter_async_context(
                    EdgeBrowser(interfaces=plan.interfaces, token=plan.token, site=plan.site)
                )
            if use_edge and self._edges is None:  # this run's own sockets, closed at its end
                self._edges = EdgePool(timeout_s=plan.timeout_s, token=plan.token,
                                       allow_plaintext_token=plan.allow_plaintext_token,
                                       on_bytes=self._on_bytes)
                stack.push_async_callback(self._edges.async_close)
            return await self._run(stream, budget, use_edge, len(prompt_ids))

    async def _run(self, stream: DraftStream, budget: int, use_edge: bool, n_prompt: int
                   ) -> Report:
        plan = self.plan
        targets: list[_Target] = []
        if use_edge:
            self._vocab_hash = await asyncio.to_thread(self.model.vocab_hash)
            if plan.url:
                targets = [_Target(plan.url, plan.fingerprint)]
            else:
                if not self._browser.names:  # a fresh browser: let the edges answer
                    await asyncio.sleep(plan.browse_s)
                if not self._browser.names:  # a loaded host answers late: one more window
                    await self._browser.async_wait_change(plan.browse_s)
                targets = await self._discover()
                if not targets:
                    self._degrade_start("no compatible edge found by discovery")
        log.info("generating up to %d tokens with policy %s", budget, self.policy.name)
        self.policy.begin_prompt()
        t0 = time.monotonic()
        if use_edge and self.policy.wants_draft_time():
            await self._calibrate(stream)
        done = budget <= 0 or self._stopping()
        while not done:
            while targets and not done:
                target = targets.pop(0)
                done = await self._with_edge(stream, budget, target)
                if not done:
                    targets = []  # lost mid-run: rediscover while the draft carries on
            if not done:
                done, targets = await self._alone(
                    stream, budget, rediscover=self._browser is not None
                )
            done = done or self._stopping()
        t1 = time.monotonic()
        return self._report(stream, t0, t1, n_prompt)

    async def _calibrate(self, stream: DraftStream) -> None:
        """Time the draft on the prompt's first two tokens, one evaluation each (the first
        may pay for warming up; the second is what a drafted token costs here) and tell the
        policy, so that it knows drafting's price before its first round. The cache keeps
        them: they are the prompt's own prefix."""
        runner, ids = stream.runner, stream.prompt[:2]

        def job() -> tuple[float, float]:
            runner.truncate(0)
            runner.eval(ids[:1], 1)
            t0 = time.monotonic()
            runner.eval(ids[1:] or ids[:1], 1)
            return t0, time.monotonic()

        t0, t1 = await self._busy(job)
        self.policy.calibrate(t1 - t0, self.meter.energy_j(t0, t1))

    def _segment(self, source: str, start: int, stream: DraftStream) -> None:
        end = len(stream.out)
        if end > start:
            self.segments.append({"source": source, "from_token": start, "to_token": end})

    def _degrade_start(self, why: str) -> None:
        self._note_degraded(0, why)

    async def _alone(
        self, stream: DraftStream, budget: int, *, rediscover: bool
    ) -> tuple[bool, list[_Target]]:
        """Generate on the draft alone until done, or until rediscovery finds an edge."""
        finder = asyncio.create_task(self._find_edges()) if rediscover else None
        start = len(stream.out)
        try:
            while len(stream.out) < budget and not self._stopping():
                if finder is not None and finder.done():
                    return False, finder.result()
                token = await self._busy(stream.generate_alone)
                if self.model.is_eog(token):
                    stream.out.pop()
                    self.stop_reason = "eos"
                    return True, []
                self._emit([token])
            return True, []
        finally:
            self._segment("draft", start, stream)
            if finder is not None and not finder.done():
                finder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await finder

    async def _find_edges(self) -> list[_Target]:
        """Edges to resume on: look now, then after every change (or ``browse_s``) until one
        turns up. Runs as a task beside the draft; cancelled when generation ends."""
        assert self._browser is not None
        while True:
            try:
                targets = await self._discover()
            except OSError as exc:  # e.g. the interface went down: try again later
                log.info("rediscovery failed: %s", exc)
                targets = []
            if targets:
                return targets
            await self._browser.async_wait_change(self.plan.browse_s)

    async def _open_session(self, stream: DraftStream, target: _Target) -> EdgeClient:
        """A session on ``target`` for the committed sequence, on a kept socket when the pool
        has one. A kept socket that fails before the session opens (the edge closed it while
        idle, or left an ``idle`` error frame on it) is dropped and the session is opened once
        more on a fresh socket, where a failure counts."""
        req, pool = self.request, self._edges
        assert pool is not None
        while True:
            edge, kept = await pool.acquire(target.url, target.fingerprint)
            try:
                info = edge.info if kept and edge.info is not None else await edge.async_info()
                self._max_draft = info.get("limits", {}).get("max_draft_tokens")
                await edge.async_open(
                    stream.seq,
                    vocab_hash=self._vocab_hash or "",
                    draft_model=self.model.model_id,
                    temperature=req.temperature,
                    seed=req.seed + len(stream.out),  # a resumed stream draws fresh numbers
                    top_k=req.top_k,
                )
                return edge
            except (EdgeUnavailable, wire.EdgeError, wire.WireError) as exc:
                await pool.discard(edge)
                if not kept:
                    raise
                log.info("kept socket to %s failed (%s); connecting afresh", target.url, exc)
            except BaseException:
                await pool.discard(edge)
                raise

    async def _with_edge(self, stream: DraftStream, budget: int, target: _Target) -> bool:
        """Generate through one edge until done or the edge is lost; True when done."""
        start = len(stream.out)
        edge: EdgeClient | None = None
        try:
            edge = await self._open_session(stream, target)
            self.edges_used.append(target.url)
            if self.policy.mode == "edge-only":
                done = await self._edge_only(edge, stream, budget)
            else:
                done = await self._speculate(edge, stream, budget)
            assert self._edges is not None
            edge, kept = None, edge
            await self._edges.release(kept)  # ends the session; keeps a clean socket
            return done
        except (EdgeUnavailable, wire.EdgeError, wire.WireError) as exc:
            if isinstance(exc, wire.EdgeError) and exc.code in FATAL_EDGE_ERRORS and not (
                self.plan.discover and self.plan.url is None
            ):
                raise
            self._degrade(stream, target.url, exc)
            return False
        finally:
            if edge is not None and self._edges is not None:
                await self._edges.discard(edge)
            self._segment(target.url, start, stream)

    async def _edge_only(self, edge: EdgeClient, stream: DraftStream, budget: int) -> bool:
        done, _, _ = await self._stretch(edge, stream, budget - len(stream.out))
        return done or len(stream.out) >= budget

    async def _stretch(self, edge: EdgeClient, stream: DraftStream, n: int
                       ) -> tuple[bool, bool | None, float]:
        """The target generates up to ``n`` tokens alone, committed as they come. A stop
        (Ctrl-C, SIGTERM, a stop string, a client gone) asks the edge to end the stretch
        after its decode step; the tokens still on their way are read, not committed.
        Returns (done: generation over, the edge's last advice, the edge's compute s)."""
        done, advice, edge_s = False, None, 0.0
        watcher = (asyncio.create_task(self._stop_stretch(edge)) if self._stop is not None
                   else None)
        try:
            async for chunk in edge.async_generate(n):  # read to its last frame
                edge_s += chunk.verify_ms / 1e3
                advice = chunk.advise if chunk.advise is not None else advice
                if not done:
                    self.totals.add_ties(chunk.ties)
                    done = self._stopping() or self._accept_tokens(stream, chunk.ids.tolist())
        finally:
            if watcher is not None:
                watcher.cancel()
        self.totals.verify_s += edge_s
        return done, advice, edge_s

    async def _stop_stretch(self, edge: EdgeClient) -> None:
        """Beside a stretch: the moment the caller asks to stop, tell the edge."""
        assert self._stop is not None
        await self._stop.wait()
        with contextlib.suppress(EdgeUnavailable):  # the stretch's reader reports a lost edge
            await edge.async_stop()

    async def _speculate(self, edge: EdgeClient, stream: DraftStream, budget: int) -> bool:
        policy, tot = self.policy, self.totals
        while len(stream.out) < budget:
            if self._stopping():
                return True
            left = budget - len(stream.out)
            d0 = time.monotonic()  # the policy's decisions count as the round's overhead
            n_stream = min(policy.stream_tokens(left), left)
            if n_stream > 0:  # the stream action: the edge generates the stretch alone
                r0, before = time.monotonic(), len(stream.out)
                done, advice, edge_s = await self._stretch(edge, stream, n_stream)
                r1 = time.monotonic()
                policy.observe_stream(len(stream.out) - before, r1 - r0,
                                      self.meter.energy_j(r0, r1), edge_advice=advice,
                                      verify_s=edge_s)
                if done or len(stream.out) == before:  # end of generation, or an empty stretch
                    return True
                continue
            wanted = policy.round_budget()
            n_max = max(0, min(wanted, left - 1))
            if self._max_draft is not None and n_max > self._max_draft:
                n_max = self._max_draft
                if not self._clamp_warned:
                    self._clamp_warned = True
                    log.warning("drafting at most %d tokens per round: the edge's limit "
                                "(policy asked for %d)", self._max_draft, wanted)
            r0 = time.monotonic()
            drafted = await self._busy(
                stream.draft,
                n_max,
                policy.keep_drafting,
                want_entropy=policy.needs_entropy,
                is_eog=self.model.is_eog,
                want_features=policy.needs_features,
            )
            s0 = time.monotonic()
            n = int(drafted.ids.shape[0])
            verdict, ahead = await self._round_with_ahead(edge, stream, drafted, n)
            r1 = time.monotonic()
            if not 0 <= verdict.accepted <= n:
                raise wire.EdgeError("bad-frame", f"edge accepted {verdict.accepted} of {n}")
            produced = drafted.ids[: verdict.accepted].tolist() + [verdict.token]
            before = len(stream.out)
            done = self._accept_tokens(stream, produced)
            hit = not done and ahead is not None and stream.adopt_ahead(ahead)
            ahead_n = len(ahead.ids) if ahead is not None else 0
            ahead_s = ahead.draft_s if ahead is not None else 0.0
            tot.ahead += ahead_n
            tot.ahead_hits += int(hit)
            rtt_s = r1 - s0
            tot.rounds += 1
            tot.drafted += n
            tot.accepted += verdict.accepted
            tot.draft_s += drafted.draft_s
            tot.verify_s += verdict.verify_ms / 1e3
            tot.add_ties(verdict.ties)
            tot.rtt_s += rtt_s
            tot.round_s += r1 - r0
            policy.observe(
                RoundStats(
                    drafted=n,
                    accepted=verdict.accepted,
                    produced=len(stream.out) - before,
                    draft_s=drafted.draft_s,
                    rtt_s=rtt_s,
                    verify_s=verdict.verify_ms / 1e3,
                    round_s=r1 - r0,
                    energy_j=self.meter.energy_j(r0, r1),
                    draft_energy_j=self.meter.energy_j(r0, s0),
                    entropies=drafted.entropies,
                    features=drafted.features,
                    catchup_tokens=drafted.catchup_tokens,
                    sync_s=drafted.sync_s,
                    queue_s=None if verdict.queue_ms is None else verdict.queue_ms / 1e3,
                    batch_tokens=verdict.batch,
                    edge_advice=verdict.advise,
                    predrafted=drafted.predrafted,
                    ahead=ahead_n,
                    ahead_hit=hit,
                    ahead_s=ahead_s,
                    ahead_energy_j=self.meter.energy_j(s0, s0 + ahead_s) if ahead_s else 0.0,
                )
            )
            # Everything of the round that is not drafting or the edge's verify: the policy's
            # decisions before it and its learning after it, framing, the socket, commits.
            tot.overhead_s += (time.monotonic() - d0) - drafted.draft_s - verdict.verify_ms / 1e3
            if done:
                return True
        return True

    async def _round_with_ahead(self, edge: EdgeClient, stream: DraftStream, drafted: Drafted,
                                n: int) -> tuple[wire.Verdict, Ahead | None]:
        """Send the round; meanwhile draft ahead as far as the policy asks (in the worker
        thread, stopped when the verdict comes). The draft is never used by two threads:
        whatever happens to the round, the drafting ahead is stopped and awaited first."""
        k = self.policy.ahead_tokens(n) if n else 0
        if k > 0 and self._max_draft is not None:
            k = min(k, self._max_draft)
        if k <= 0:
            return await edge.async_round(drafted.ids, drafted.q_ids, drafted.q_probs), None
        stop = threading.Event()
        task = asyncio.ensure_future(self._busy(
            stream.draft_ahead, drafted, k, stop,
            want_entropy=self.policy.needs_entropy or self.policy.needs_features,
            is_eog=self.model.is_eog))
        try:
            verdict = await edge.async_round(drafted.ids, drafted.q_ids, drafted.q_probs)
        except BaseException:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
            raise
        stop.set()
        return verdict, await asyncio.shield(task)

    def _report(self, stream: DraftStream, t0: float, t1: float, n_prompt: int) -> Report:
        tot = self.totals
        elapsed = max(t1 - t0, 1e-9)
        n_out = len(stream.out)
        coverage = self.meter.coverage(t0, t1)
        energy: float | None = self.meter.energy_j(t0, t1)
        source = "measured" if self.meter.measured else "modelled"
        note = None
        if self.meter.measured and coverage <= 0.0:
            # Zero coverage is no measurement: an extrapolated 0 J would read as a result.
            energy, source = None, "none"
            note = (f"meter {self.meter.kind} {self.meter.describe()} gave no reading during "
                    f"the generation ({self.meter.last_error or 'no samples'})")
        r = tot.rounds

        def per_round(x: float, scale: float = 1e3) -> float | None:
            return x / r * scale if r else None

        budget = getattr(self.policy, "budget", None)
        budget_w = budget.power_w if budget is not None else None
        budget_jpt = budget.j_per_token if budget is not None else None
        met = None
        if energy is not None and budget_w is not None:
            met = energy / elapsed <= budget_w * 1.03
        elif energy is not None and budget_jpt is not None and n_out:
            met = energy / n_out <= budget_jpt * 1.03

        return Report(
            text=self.model.detokenize(stream.out),
            tokens=list(stream.out),
            n_tokens=n_out,
            prompt_tokens=n_prompt,
            policy=self.policy.name,
            policy_settings=self.policy.describe(),
            edge=self.edges_used[-1] if self.edges_used else None,
            edges=list(self.edges_used),
            degraded=self.degraded,
            degraded_at_token=self.degraded_at,
            degraded_reason=self.degraded_reason,
            rejected_edges=self.rejected,
            segments=self.segments,
            stop_reason=self.stop_reason,
            elapsed_s=elapsed,
            tokens_per_s=n_out / elapsed,
            rounds=r,
            drafted=tot.drafted,
            accepted=tot.accepted,
            acceptance=tot.accepted / tot.drafted if tot.drafted else None,
            mean_drafted=tot.drafted / r if r else None,
            mean_draft_ms=per_round(tot.draft_s),
            mean_verify_ms=per_round(tot.verify_s),
            mean_rtt_ms=per_round(tot.rtt_s),
            overhead_ms_per_round=per_round(tot.overhead_s),
            energy_j=energy,
            energy_source=source,
            energy_note=note,
            j_per_token=energy / n_out if energy is not None and n_out else None,
            mean_power_w=energy / elapsed if energy is not None else None,
            budget_w=budget_w,
            budget_j_per_token=budget_jpt,
            budget_met=met,
            meter=self.meter.kind,
            meter_coverage=coverage,
            window_monotonic_s=(t0, t1),
            temperature=self.request.temperature,
            seed=self.request.seed,
            draft_limit=self._max_draft if self._clamp_warned else None,
            errors=self.errors,
            policy_settings_start=self._policy_start,
            meter_started_monotonic_s=self.meter.started_t_s,
            ahead_drafted=tot.ahead,
            ahead_hits=tot.ahead_hits,
            near_ties=tot.near_ties,
            edge_connects=(self._edges.connects - self._connects_before
                           if self._edges is not None else 0),
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
