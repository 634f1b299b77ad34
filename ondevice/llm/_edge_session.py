"""A generation's sessions with edges: which edge, opening a session on it, losing it, and
carrying on without it until another one turns up.

``EdgePlan`` says which edges a generation may use: an explicit URL first, or those zeroconf
discovery finds, best first. ``EdgeSessions.run`` drives the generation to its end: through
the rounds (``_round``) on a session of one edge, and between edges on the draft alone.

Losing the edge (refused, reset, timed out) never loses output: tokens already verified stay
committed, the unverified draft of the failed round is dropped (a failed round commits
nothing), and the draft model carries on alone with ``degraded`` set. With discovery it looks
for edges again meanwhile, and resumes on the first one found with a new session opened on
the committed sequence. Refusals that mean the user's configuration is wrong
(``FATAL_EDGE_ERRORS``) end the generation when the edge was named explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ondevice.common import wire
from ondevice.edge.client import EdgeClient, EdgePool, EdgeUnavailable
from ondevice.edge.discovery import EdgeBrowser, rank_edges
from ondevice.llm._output import Output
from ondevice.llm._round import Rounds

if TYPE_CHECKING:
    from ondevice.llm.generate import GenerateRequest

log = logging.getLogger(__name__)

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
_LOST = (EdgeUnavailable, wire.EdgeError, wire.WireError)  # what losing an edge raises


class EdgeRequired(RuntimeError):
    """The edge could not be used and the caller asked not to fall back to the draft alone."""


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


class EdgeSessions:
    """Where one generation's tokens come from, edge by edge, and the record of it for the
    report: ``edges_used`` (in order), ``segments`` (who produced tokens [from, to): an edge
    URL or "draft"), edges that ``failed`` or that discovery ``rejected`` and why, ``errors``,
    and whether (from which token, and why) the draft finished alone (``degraded``).

    ``pool`` holds the edge sockets (None: the generation uses no edge); ``browser`` is
    zeroconf's view (None: no discovery, so no rediscovery either).
    """

    def __init__(self, plan: EdgePlan, out: Output, rounds: Rounds, request: GenerateRequest,
                 *, pool: EdgePool | None, browser: EdgeBrowser | None) -> None:
        self.plan, self.out, self.rounds, self.request = plan, out, rounds, request
        self.pool, self.browser = pool, browser
        self.edges_used: list[str] = []
        self.failed: list[str] = []
        self.rejected: list[dict[str, str]] = []
        self.segments: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.degraded = False
        self.degraded_at: int | None = None
        self.degraded_reason: str | None = None
        self._vocab_hash: str | None = None

    # -- the record ---------------------------------------------------------------------------

    def note_degraded(self, at: int, reason: str) -> None:
        """Record that the draft carries on alone from token ``at``, or raise EdgeRequired."""
        if self.plan.require_edge:
            raise EdgeRequired(reason)
        if not self.degraded:
            self.degraded, self.degraded_at, self.degraded_reason = True, at, reason
        self.errors.append(reason)
        log.warning("%s; continuing on the draft alone from token %d (--require-edge makes "
                    "this an error)", reason, at)

    def _degrade(self, url: str, exc: BaseException) -> None:
        self.failed.append(url)
        reason = f"edge {url}: {exc}"
        fix = _FIXES.get(exc.code) if isinstance(exc, wire.EdgeError) else None
        self.note_degraded(self.out.n, f"{reason}; fix: {fix}" if fix else reason)

    def _segment(self, source: str, start: int) -> None:
        end = self.out.n
        if end > start:
            self.segments.append({"source": source, "from_token": start, "to_token": end})

    # -- finding edges ------------------------------------------------------------------------

    async def first_targets(self) -> list[_Target]:
        """The edges to try first: the plan's URL, else those discovery finds (giving a fresh
        browser time to hear them); none found is noted as degraded from the start."""
        plan = self.plan
        self._vocab_hash = await asyncio.to_thread(self.out.model.vocab_hash)
        if plan.url:
            return [_Target(plan.url, plan.fingerprint)]
        assert self.browser is not None
        if not self.browser.names:  # a fresh browser: let the edges answer
            await asyncio.sleep(plan.browse_s)
        if not self.browser.names:  # a loaded host answers late: one more window
            await self.browser.async_wait_change(plan.browse_s)
        targets = await self._discover()
        if not targets:
            self.note_degraded(0, "no compatible edge found by discovery")
        return targets

    async def _discover(self) -> list[_Target]:
        """Compatible edges known now, best first, excluding those that failed in this run."""
        assert self.browser is not None
        records = await self.browser.async_records()
        usable, rejected = rank_edges(records, vocab_hash=self._vocab_hash, exclude=self.failed)
        for r in rejected:
            entry = {"url": r.record.url, "name": r.record.name, "reason": r.reason}
            if entry not in self.rejected:
                self.rejected.append(entry)
                log.warning("not using edge %s: %s", r.record.url, r.reason)
        return [_Target(r.url, r.fingerprint or None) for r in usable]

    async def _find_edges(self) -> list[_Target]:
        """Edges to resume on: look now, then after every change (or ``browse_s``) until one
        turns up. Runs as a task beside the draft; cancelled when generation ends."""
        assert self.browser is not None
        while True:
            try:
                targets = await self._discover()
            except OSError as exc:  # e.g. the interface went down: try again later
                log.info("rediscovery failed: %s", exc)
                targets = []
            if targets:
                return targets
            await self.browser.async_wait_change(self.plan.browse_s)

    # -- the generation, edge by edge -----------------------------------------------------------

    async def run(self, targets: list[_Target]) -> None:
        """Generate to the end: on each target in turn until one is lost, then on the draft
        alone, resuming on the edges rediscovery finds."""
        out = self.out
        done = out.budget <= 0 or out.stopping()
        while not done:
            while targets and not done:
                target = targets.pop(0)
                done = await self._with_edge(target)
                if not done:
                    targets = []  # lost mid-run: rediscover while the draft carries on
            if not done:
                done, targets = await self._alone(rediscover=self.browser is not None)
            done = done or out.stopping()

    async def _open(self, target: _Target) -> EdgeClient:
        """A session on ``target`` for the committed sequence, on a kept socket when the pool
        has one. A kept socket that fails before the session opens (the edge closed it while
        idle, or left an ``idle`` error frame on it) is dropped and the session is opened once
        more on a fresh socket, where a failure counts."""
        req, pool, stream = self.request, self.pool, self.out.stream
        assert pool is not None
        while True:
            edge, kept = await pool.acquire(target.url, target.fingerprint)
            try:
                info = edge.info if kept and edge.info is not None else await edge.async_info()
                self.rounds.max_draft = info.get("limits", {}).get("max_draft_tokens")
                await edge.async_open(
                    stream.seq,
                    vocab_hash=self._vocab_hash or "",
                    draft_model=self.out.model.model_id,
                    temperature=req.temperature,
                    seed=req.seed + len(stream.out),  # a resumed stream draws fresh numbers
                    top_k=req.top_k,
                )
                return edge
            except _LOST as exc:
                await pool.discard(edge)
                if not kept:
                    raise
                log.info("kept socket to %s failed (%s); connecting afresh", target.url, exc)
            except BaseException:
                await pool.discard(edge)
                raise

    async def _with_edge(self, target: _Target) -> bool:
        """Generate through one edge until done or the edge is lost; True when done."""
        start = self.out.n
        edge: EdgeClient | None = None
        try:
            edge = await self._open(target)
            self.edges_used.append(target.url)
            if self.rounds.policy.mode == "edge-only":
                done = await self.rounds.edge_only(edge)
            else:
                done = await self.rounds.speculate(edge)
            assert self.pool is not None
            edge, kept = None, edge
            await self.pool.release(kept)  # ends the session; keeps a clean socket
            return done
        except _LOST as exc:
            if isinstance(exc, wire.EdgeError) and exc.code in FATAL_EDGE_ERRORS and not (
                self.plan.discover and self.plan.url is None
            ):
                raise
            self._degrade(target.url, exc)
            return False
        finally:
            if edge is not None and self.pool is not None:
                await self.pool.discard(edge)
            self._segment(target.url, start)

    async def _alone(self, *, rediscover: bool) -> tuple[bool, list[_Target]]:
        """Generate on the draft alone until done, or until rediscovery finds an edge."""
        out = self.out
        finder = asyncio.create_task(self._find_edges()) if rediscover else None
        start = out.n
        try:
            while out.left() > 0 and not out.stopping():
                if finder is not None and finder.done():
                    return False, finder.result()
                token = await out.busy(out.stream.generate_alone)
                if out.model.is_eog(token):
                    out.stream.out.pop()
                    out.stop_reason = "eos"
                    return True, []
                out.emit([token])
            return True, []
        finally:
            self._segment("draft", start)
            if finder is not None and not finder.done():
                finder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await finder


__all__ = ["FATAL_EDGE_ERRORS", "EdgePlan", "EdgeRequired", "EdgeSessions"]
