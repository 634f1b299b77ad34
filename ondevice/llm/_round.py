"""The rounds of a generation on one edge session: draft, send, accept; and the stretches the
edge generates alone (the policy's stream action, or the edge-only policy).

A round: the policy sets the budget and stops the drafting token by token (``DraftStream.draft``
in a worker thread); the round goes to the edge, and while it is in flight the draft drafts
ahead as far as the policy asks (``Rounds._send``); the verdict's accepted tokens and the
edge's own are committed (``Output.accept``), the tokens drafted ahead kept when they continue
the committed sequence (``DraftStream.adopt_ahead``). The round is then counted as every loop
counts one (``round_account.RoundTally``: the simulators count theirs the same way) and told
to the policy. A stretch: the edge generates up to n tokens, committed as they come.

A lost edge raises out of here (``EdgeUnavailable``, ``wire.EdgeError``, ``wire.WireError``)
before the failed round commits anything; ``_edge_session`` decides what happens next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from hw import PowerMeter
from ondevice.common import wire
from ondevice.edge.client import EdgeClient, EdgeUnavailable
from ondevice.llm._output import Output
from ondevice.llm.draft import Ahead, Drafted
from ondevice.llm.policies import Policy, RoundStats
from ondevice.llm.round_account import RoundTally

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Stretch:
    """What one stretch streamed by the edge did. Seconds, joules (device)."""

    done: bool  # the generation is over (end of generation, the budget, or a stop)
    advice: bool | None  # the edge's last advice to stream (None: it gave none)
    verify_s: float  # the edge's compute for it, as it reports
    time_s: float
    energy_j: float


class Rounds:
    """The rounds and stretches of one generation, over whichever edge sessions it gets.

    What they add up to is in ``tally`` (``round_account``), beside what only a real loop
    has: ``overhead_s``, the rounds' time that is neither drafting nor the edge's verify, and
    ``near_ties``, the edge's count of committed greedy tokens decided by a near tie (None
    until an edge gives one). ``max_draft`` is the edge's per-round limit, set by each
    session from the edge's ``/v1/info``.
    """

    def __init__(self, out: Output, policy: Policy, meter: PowerMeter) -> None:
        self.out, self.policy, self.meter = out, policy, meter
        self.tally = RoundTally()
        self.overhead_s = 0.0
        self.near_ties: int | None = None
        self.max_draft: int | None = None
        self._clamped = False  # the edge's limit cut a budget the policy asked for

    @property
    def draft_limit(self) -> int | None:
        """The edge's per-round limit, when it bounded a round the policy asked for."""
        return self.max_draft if self._clamped else None

    def _add_ties(self, ties: int | None) -> None:
        if ties is not None:
            self.near_ties = (self.near_ties or 0) + ties

    async def calibrate(self) -> None:
        """Time the draft on the prompt's first two tokens, one evaluation each (the first
        may pay for warming up; the second is what a drafted token costs here) and tell the
        policy, so that it knows drafting's price before its first round. The cache keeps
        them: they are the prompt's own prefix."""
        runner, ids = self.out.stream.runner, self.out.stream.prompt[:2]

        def job() -> tuple[float, float]:
            runner.truncate(0)
            runner.eval(ids[:1], 1)
            t0 = time.monotonic()
            runner.eval(ids[1:] or ids[:1], 1)
            return t0, time.monotonic()

        t0, t1 = await self.out.busy(job)
        self.policy.calibrate(t1 - t0, self.meter.energy_j(t0, t1))

    async def speculate(self, edge: EdgeClient) -> bool:
        """Rounds, or the stretches the policy asks for, through ``edge`` until the budget
        is reached, the generation ends or the caller stops. Returns True (done); a lost
        edge raises."""
        out, policy = self.out, self.policy
        while out.left() > 0:
            if out.stopping():
                return True
            left = out.left()
            d0 = time.monotonic()  # the policy's decisions count as the round's overhead
            n_stream = min(policy.stream_tokens(left), left)
            if n_stream > 0:  # the stream action: the edge generates the stretch alone
                before = out.n
                s = await self.stretch(edge, n_stream)
                policy.observe_stream(out.n - before, s.time_s, s.energy_j,
                                      edge_advice=s.advice, verify_s=s.verify_s)
                if s.done or out.n == before:  # end of generation, or an empty stretch
                    return True
                continue
            if await self._round(edge, left, d0):
                return True
        return True

    async def edge_only(self, edge: EdgeClient) -> bool:
        """The edge generates the rest alone; True when the generation is over."""
        s = await self.stretch(edge, self.out.left())
        return s.done or self.out.left() <= 0

    async def _round(self, edge: EdgeClient, left: int, d0: float) -> bool:
        """One round with ``left`` tokens to go, its decisions begun at ``d0``: draft, send,
        commit, count, tell the policy. True when the generation is over."""
        out, policy, meter = self.out, self.policy, self.meter
        r0 = time.monotonic()
        drafted = await out.busy(
            out.stream.draft,
            self._draft_budget(left),
            policy.keep_drafting,
            want_entropy=policy.needs_entropy,
            is_eog=out.model.is_eog,
            want_features=policy.needs_features,
        )
        s0 = time.monotonic()
        n = int(drafted.ids.shape[0])
        verdict, ahead = await self._send(edge, drafted, n)
        r1 = time.monotonic()
        if not 0 <= verdict.accepted <= n:
            raise wire.EdgeError("bad-frame", f"edge accepted {verdict.accepted} of {n}")
        before = out.n
        done = out.accept(drafted.ids[: verdict.accepted].tolist() + [verdict.token])
        hit = not done and ahead is not None and out.stream.adopt_ahead(ahead)
        ahead_s = ahead.draft_s if ahead is not None else 0.0
        verify_s = verdict.verify_ms / 1e3
        self._add_ties(verdict.ties)
        policy.observe(self.tally.add_round(RoundStats(
            drafted=n,
            accepted=verdict.accepted,
            produced=out.n - before,
            draft_s=drafted.draft_s,
            rtt_s=r1 - s0,
            verify_s=verify_s,
            round_s=r1 - r0,
            energy_j=meter.energy_j(r0, r1),
            draft_energy_j=meter.energy_j(r0, s0),
            entropies=drafted.entropies,
            features=drafted.features,
            catchup_tokens=drafted.catchup_tokens,
            sync_s=drafted.sync_s,
            queue_s=None if verdict.queue_ms is None else verdict.queue_ms / 1e3,
            batch_tokens=verdict.batch,
            edge_advice=verdict.advise,
            predrafted=drafted.predrafted,
            ahead=len(ahead.ids) if ahead is not None else 0,
            ahead_hit=hit,
            ahead_s=ahead_s,
            ahead_energy_j=meter.energy_j(s0, s0 + ahead_s) if ahead_s else 0.0,
        )))
        # Everything of the round that is not drafting or the edge's verify: the policy's
        # decisions before it and its learning after it, framing, the socket, commits.
        self.overhead_s += (time.monotonic() - d0) - drafted.draft_s - verify_s
        return done

    def _draft_budget(self, left: int) -> int:
        """The policy's budget for this round, less one for the edge's own token, within the
        edge's limit (a warning, once, when that limit cuts it)."""
        wanted = self.policy.round_budget()
        n_max = max(0, min(wanted, left - 1))
        if self.max_draft is not None and n_max > self.max_draft:
            n_max = self.max_draft
            if not self._clamped:
                self._clamped = True
                log.warning("drafting at most %d tokens per round: the edge's limit "
                            "(policy asked for %d)", self.max_draft, wanted)
        return n_max

    async def _send(self, edge: EdgeClient, drafted: Drafted, n: int
                    ) -> tuple[wire.Verdict, Ahead | None]:
        """Send the round; meanwhile draft ahead as far as the policy asks (in the worker
        thread, stopped when the verdict comes). The draft is never used by two threads:
        whatever happens to the round, the drafting ahead is stopped and awaited first."""
        out = self.out
        k = self.policy.ahead_tokens(n) if n else 0
        if k > 0 and self.max_draft is not None:
            k = min(k, self.max_draft)
        if k <= 0:
            return await edge.async_round(drafted.ids, drafted.q_ids, drafted.q_probs), None
        stop = threading.Event()
        task = asyncio.ensure_future(out.busy(
            out.stream.draft_ahead, drafted, k, stop,
            want_entropy=self.policy.needs_entropy or self.policy.needs_features,
            is_eog=out.model.is_eog))
        try:
            verdict = await edge.async_round(drafted.ids, drafted.q_ids, drafted.q_probs)
        except BaseException:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
            raise
        stop.set()
        return verdict, await asyncio.shield(task)

    async def stretch(self, edge: EdgeClient, n: int) -> Stretch:
        """The target generates up to ``n`` tokens alone, committed as they come, counted in
        the tally. A stop (Ctrl-C, SIGTERM, a stop string, a client gone) asks the edge to
        end the stretch after its decode step; the tokens still on their way are read, not
        committed."""
        out = self.out
        done, advice, edge_s, before = False, None, 0.0, out.n
        watcher = asyncio.create_task(self._stop_stretch(edge)) if out.stoppable else None
        t0 = time.monotonic()
        try:
            async for chunk in edge.async_generate(n):  # read to its last frame
                edge_s += chunk.verify_ms / 1e3
                advice = chunk.advise if chunk.advise is not None else advice
                if not done:
                    self._add_ties(chunk.ties)
                    done = out.stopping() or out.accept(chunk.ids.tolist())
        finally:
            if watcher is not None:
                watcher.cancel()
        t1 = time.monotonic()
        energy = self.meter.energy_j(t0, t1)
        self.tally.add_stream(out.n - before, t1 - t0, energy, edge_s)
        return Stretch(done, advice, edge_s, t1 - t0, energy)

    async def _stop_stretch(self, edge: EdgeClient) -> None:
        """Beside a stretch: the moment the caller asks to stop, tell the edge."""
        await self.out.wait_stop()
        with contextlib.suppress(EdgeUnavailable):  # the stretch's reader reports a lost edge
            await edge.async_stop()


__all__ = ["Rounds", "Stretch"]
