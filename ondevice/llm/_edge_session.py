"""A generation's sessions with edges: which edge, opening a session on it, moving to another,
and carrying on without one until an edge turns up.

``EdgePlan`` says which edges a generation may use: explicit URLs (one or several) first, and
those zeroconf discovery finds. ``EdgeSessions.run`` drives the generation to its end: through
the rounds (``_round``) on a session of one edge, from edge to edge, and on the draft alone
when no edge is left.

Placement: each new session (a generation's first, and every resume) goes to the edge with the
lowest expected wait (``ondevice.edge.placement``): the explicit edges probed with
``GET /v1/info`` at that moment, and, when none of them can take it, the discovered ones (their
TXT records as they are now, filtered by ``rank_edges``, then probed). A single explicit edge
is not probed: there is nothing to choose.

Moving: when the edge in use is lost (refused, reset, timed out), answers a frame with
``move`` (it is draining) or refuses the session as ``draining``, the generation goes at once
to the best of the other edges, with a new session opened on the committed sequence. Nothing
is lost or repeated: tokens already verified stay committed, and a round that failed or was
answered by ``move`` commits nothing (its unverified draft is dropped; the draft's cache is
trimmed to the committed sequence at the next draft). Moves are recorded (``moves``); a move
off a draining edge is no failure. Only when no edge is left does the draft carry on alone,
with ``degraded`` set, while discovery (and, every ``REPROBE_S``, a probe of the explicit
edges that were lost, not refused) looks for one to resume on. Refusals that mean the user's
configuration is wrong (``FATAL_EDGE_ERRORS``) end the generation when the edge was named
explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from ondevice.common import wire
from ondevice.edge.client import EdgeClient, EdgeMoved, EdgePool, EdgeUnavailable
from ondevice.edge.discovery import EdgeBrowser, rank_edges
from ondevice.edge.placement import EdgeLoad, async_probe, rank
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
_PROBE_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError)
PROBE_TIMEOUT_S = 5.0  # s: each GET /v1/info of a placement probe
REPROBE_S = 2.0  # s: between looks for an edge to resume on, while the draft runs alone


class EdgeRequired(RuntimeError):
    """The edge could not be used and the caller asked not to fall back to the draft alone."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgePlan:
    """Which edges a generation may use.

    ``urls``: the explicit edges (``url`` alone is shorthand for one; given either, the plan
    holds both: ``url`` is ``urls[0]``). Each session goes to the one with the lowest expected
    wait. With ``discover``, zeroconf (on ``interfaces``; empty = all) finds compatible edges
    when there is no explicit one, and whenever none of the explicit ones can take a session
    (lost, draining, full), while the draft carries on alone. ``fingerprint`` pins the TLS
    certificate of a single explicit edge (several edges have several certificates: pin
    none, or run one plan per edge).
    """

    url: str | None = None
    urls: tuple[str, ...] = ()
    fingerprint: str | None = None  # pinned TLS certificate SHA-256 (hex) for ``url``
    discover: bool = False
    interfaces: tuple[str, ...] = ()
    site: str | None = None  # only edges advertising this site label (None: any)
    token: str | None = None
    browse_s: float = 2.0
    timeout_s: float = 15.0  # per edge reply
    require_edge: bool = False  # raise EdgeRequired instead of finishing on the draft alone
    allow_plaintext_token: bool = False  # send the token over http:// to another host

    def __post_init__(self) -> None:
        urls = tuple(self.urls)
        if self.url is not None and not urls:
            urls = (self.url,)
        elif self.url is not None and self.url not in urls:
            raise ValueError(f"url {self.url!r} is not one of urls {list(urls)}")
        if len(set(urls)) != len(urls):
            raise ValueError(f"an edge is given twice in {list(urls)}")
        if self.fingerprint and len(urls) > 1:
            raise ValueError("a TLS fingerprint pins one edge's certificate; with several "
                             "edges pin none (each edge has its own certificate)")
        object.__setattr__(self, "urls", urls)
        object.__setattr__(self, "url", self.url if self.url is not None else
                           (urls[0] if urls else None))


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    fingerprint: str | None
    explicit: bool  # named in the plan (its configuration errors are the user's)


class EdgeSessions:
    """Where one generation's tokens come from, edge by edge, and the record of it for the
    report: ``edges_used`` (in order), ``segments`` (who produced tokens [from, to): an edge
    URL or "draft"), ``moves`` (each time it left an edge it was placed on for another: from,
    to, at which token, why), edges that ``failed`` or that discovery ``rejected`` and why,
    ``errors``, and whether (from which token, and why) the draft finished alone
    (``degraded``).

    ``pool`` holds the edge sockets (None: the generation uses no edge); ``browser`` is
    zeroconf's view (None: no discovery); ``rng`` orders edges within a near tie.
    """

    def __init__(self, plan: EdgePlan, out: Output, rounds: Rounds, request: GenerateRequest,
                 *, pool: EdgePool | None, browser: EdgeBrowser | None,
                 rng: random.Random | None = None) -> None:
        self.plan, self.out, self.rounds, self.request = plan, out, rounds, request
        self.pool, self.browser = pool, browser
        self.edges_used: list[str] = []
        self.failed: list[str] = []
        self.rejected: list[dict[str, str]] = []
        self.segments: list[dict[str, Any]] = []
        self.moves: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.degraded = False
        self.degraded_at: int | None = None
        self.degraded_reason: str | None = None
        self._vocab_hash: str | None = None
        self._rng = rng or random.Random()
        self._left: set[str] = set()  # edges this run failed on or moved off
        self._refused: set[str] = set()  # edges that refused the session: never retried
        self._why: str | None = None  # why the last edge was left, until it is told

    # -- the record ---------------------------------------------------------------------------

    def note_degraded(self, at: int, reason: str) -> None:
        """Record that the draft carries on alone from token ``at``, or raise EdgeRequired."""
        if self.plan.require_edge:
            raise EdgeRequired(reason)
        if not self.degraded:
            self.degraded, self.degraded_at, self.degraded_reason = True, at, reason
        if not self.errors or self.errors[-1] != reason:
            self.errors.append(reason)
        if self.moves and self.moves[-1]["to"] is None:
            self.moves[-1]["to"] = "draft"
        log.warning("%s; continuing on the draft alone from token %d (--require-edge makes "
                    "this an error)", reason, at)

    def _leave(self, url: str, exc: BaseException, *, opened: bool) -> None:
        """Record leaving edge ``url`` on ``exc``: a move (it drains: no failure) or a
        failure (``failed``, ``errors``; a refusal is not retried in this run)."""
        self._left.add(url)
        at = self.out.n
        if isinstance(exc, EdgeMoved) or (
                isinstance(exc, wire.EdgeError) and exc.code == "draining"):
            reason = (f"moved: {exc.reason or 'asked by the edge'}"
                      if isinstance(exc, EdgeMoved) else "draining")
            self._why = f"edge {url} is draining and no other edge can take the session"
            log.info("edge %s: %s; moving the session at token %d", url, reason, at)
        else:
            self.failed.append(url)
            if isinstance(exc, wire.EdgeError):
                self._refused.add(url)
            fix = _FIXES.get(exc.code) if isinstance(exc, wire.EdgeError) else None
            reason = self._why = f"edge {url}: {exc}" + (f"; fix: {fix}" if fix else "")
            self.errors.append(reason)
            log.warning("%s", reason)
            if not opened:  # it never held the session: nothing moved
                return
        self.moves.append({"from": url, "to": None, "at_token": at, "reason": reason})

    def _segment(self, source: str, start: int) -> None:
        end = self.out.n
        if end > start:
            self.segments.append({"source": source, "from_token": start, "to_token": end})

    # -- placing sessions ---------------------------------------------------------------------

    async def first_targets(self) -> list[_Target]:
        """The edges to try first, best first: a single explicit edge as it is; else the
        placement (giving a fresh browser time to hear the edges); none is noted as degraded
        from the start."""
        plan = self.plan
        self._vocab_hash = await asyncio.to_thread(self.out.model.vocab_hash)
        if len(plan.urls) == 1:
            return [_Target(plan.urls[0], plan.fingerprint, True)]
        if not plan.urls:
            assert self.browser is not None
            if not self.browser.names:  # a fresh browser: let the edges answer
                await asyncio.sleep(plan.browse_s)
            if not self.browser.names:  # a loaded host answers late: one more window
                await self.browser.async_wait_change(plan.browse_s)
        targets = await self._place(first=True)
        if not targets:
            self.note_degraded(0, "no compatible edge found by discovery" if not plan.urls
                               else "none of the edges can take a session (all draining)")
        return targets

    async def _place(self, *, first: bool = False, retry: bool = False) -> list[_Target]:
        """Edges for a new session on the committed sequence, best first: the explicit ones
        that can take it (probed now), then the discovered ones. Edges left in this run are
        skipped, except, with ``retry``, explicit ones that were lost rather than refused
        (they may be back). With ``first``, explicit edges that cannot take it come last, so
        that opening one says why."""
        plan, out = self.plan, self.out
        need = len(out.stream.seq) + out.left()  # KV cells: the sequence and what is to come
        skip = self._refused if retry else self._refused | self._left
        explicit = [u for u in plan.urls if u not in skip]
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as http:
            probed = await asyncio.gather(*(self._probe(http, u, plan.fingerprint)
                                            for u in explicit))
            loads = [x for x in probed if isinstance(x, EdgeLoad)]
            targets = [_Target(x.url, plan.fingerprint, True)
                       for x in rank(loads, need_kv_cells=need, rng=self._rng)]
            if self.browser is not None:
                placed = set(plan.urls)
                targets += [t for t in await self._discover(http, need) if t.url not in placed]
        if first:
            placed = {t.url for t in targets}
            draining = {x.url for x in loads if x.draining}
            targets += [_Target(u, plan.fingerprint, True) for u in explicit
                        if u not in placed and u not in draining]
        return targets

    async def _probe(self, http: aiohttp.ClientSession, url: str, fingerprint: str | None
                     ) -> EdgeLoad | str:
        """The edge's load now, or why it did not answer."""
        try:
            return await async_probe(http, url, token=self.plan.token, fingerprint=fingerprint)
        except _PROBE_ERRORS as exc:
            log.info("edge %s did not answer a probe: %s", url, exc)
            return f"{type(exc).__name__}: {exc}"

    async def _discover(self, http: aiohttp.ClientSession, need: int) -> list[_Target]:
        """Compatible discovered edges, best first, except those left in this run."""
        assert self.browser is not None
        try:
            records = await self.browser.async_records(probe=False)
        except OSError as exc:  # e.g. the interface went down: none now, look again later
            log.info("discovery failed: %s", exc)
            return []
        usable, rejected = rank_edges(records, vocab_hash=self._vocab_hash,
                                      exclude=sorted(self._left | self._refused))
        fingerprints = {r.url: r.fingerprint or None for r in usable}
        probed = await asyncio.gather(*(self._probe(http, r.url, fingerprints[r.url])
                                        for r in usable))
        reasons = [(r.record.url, r.record.name, r.reason) for r in rejected] + [
            (r.url, r.name, f"unreachable: {x}") for r, x in zip(usable, probed, strict=True)
            if isinstance(x, str)]
        for url, name, reason in reasons:
            entry = {"url": url, "name": name, "reason": reason}
            if entry not in self.rejected:
                self.rejected.append(entry)
                log.warning("not using edge %s: %s", url, reason)
        loads = [x for x in probed if isinstance(x, EdgeLoad)]
        return [_Target(x.url, fingerprints[x.url], False)
                for x in rank(loads, need_kv_cells=need, rng=self._rng)]

    async def _find_edges(self) -> list[_Target]:
        """Edges to resume on: look now, then after every change (or ``REPROBE_S``) until one
        turns up. Runs as a task beside the draft; cancelled when generation ends."""
        while True:
            targets = await self._place(retry=True)
            if targets:
                return targets
            if self.browser is not None:
                await self.browser.async_wait_change(REPROBE_S)
            else:
                await asyncio.sleep(REPROBE_S)

    # -- the generation, edge by edge -----------------------------------------------------------

    async def run(self, targets: list[_Target]) -> None:
        """Generate to the end: on the placed edges, moving to the next one (placed afresh
        once tokens were committed since the last placement) when one is left; on the draft
        alone when none is, resuming on the edges a later look finds."""
        out = self.out
        done = out.budget <= 0 or out.stopping()
        placed_at = out.n
        while not done:
            while targets and not done:
                done = await self._with_edge(targets.pop(0)) or out.stopping()
                if not done and (not targets or out.n != placed_at):
                    targets = await self._place()
                    placed_at = out.n
            if done:
                break
            if self._why is not None:  # lost the edge (else: none found at the start)
                why, self._why = self._why, None
                self.note_degraded(out.n, why)
            done, targets = await self._alone(rediscover=self._can_resume())
            placed_at = out.n
            done = done or out.stopping()

    def _can_resume(self) -> bool:
        """Whether an edge may still turn up: discovery, or explicit edges not refused."""
        return self.pool is not None and (
            self.browser is not None or any(u not in self._refused for u in self.plan.urls))

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
        """Generate through one edge until done or the edge is left; True when done."""
        start = self.out.n
        edge: EdgeClient | None = None
        opened = False
        try:
            edge = await self._open(target)
            opened = True
            self.edges_used.append(target.url)
            if self.moves and self.moves[-1]["to"] is None:
                self.moves[-1]["to"] = target.url
            if self.rounds.policy.mode == "edge-only":
                done = await self.rounds.edge_only(edge)
            else:
                done = await self.rounds.speculate(edge)
            assert self.pool is not None
            edge, kept = None, edge
            await self.pool.release(kept)  # ends the session; keeps a clean socket
            return done
        except _LOST as exc:
            if (isinstance(exc, wire.EdgeError) and exc.code in FATAL_EDGE_ERRORS
                    and target.explicit):
                raise
            self._leave(target.url, exc, opened=opened)
            return False
        finally:
            if edge is not None and self.pool is not None:
                await self.pool.discard(edge)
            self._segment(target.url, start)

    async def _alone(self, *, rediscover: bool) -> tuple[bool, list[_Target]]:
        """Generate on the draft alone until done, or until a look for edges finds one."""
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
