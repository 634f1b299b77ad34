"""The edge's serving engine: every LLM session a sequence of one shared llama.cpp context, and a
scheduler that batches the pending work of all sessions into one decode per step.

Work items (``Job``): a prefill chunk of a new session's prompt, a verification round, one
edge-only generation step. Sessions submit one job at a time and await it. The scheduler loop:

1. wait until a job is pending (then, if ``batch_window_ms`` > 0, that long for more); after a
   step, first let the sessions it answered submit their next job (a few turns of the event
   loop, no sleep: an edge-only stream asks its next token at once, so the next step carries
   every stream instead of whichever woke first);
2. take pending jobs oldest first, at most one per session, while their tokens fit the step
   (``LlamaPool.max_step_tokens``); a prefill chunk carries at most ``prefill_chunk`` tokens,
   so a long prompt never holds the others back for more than one chunk;
3. run the step in the compute thread: one ``LlamaPool.step`` and, while its logits are valid,
   each job's own math (the rejection sampler, sampling a token);
4. answer each job's future; each job learns the time it waited (``queue_ms``), the tokens
   of the decode it ran in (``batch``) and whether the edge advises its sessions to stream
   (``ondevice.common.stream_advice.StreamAdvisor``, fed every step's compute, idle time and
   rounds).

Oldest-first with at most one job per session per step means no session starves: a job waits
at most for the steps of the jobs queued before it. ``serial`` scheduling (one job per step,
the engine before batching) is kept for benchmarks that compare the two.

KV: sessions draw cells from one pool of ``kv_tokens``; a session is admitted only while its
prompt and ``RESERVE_TOKENS`` fit the free cells, and a step that would overflow the pool fails
that session's job with ``kv-full``, never the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_server._llama_pool import LlamaPool, Part, PoolFull
from edge_server._metrics import EdgeMetrics
from ondevice.common import wire
from ondevice.common.speculative import GREEDY_EPS, near_ties, sample_full, session_rng, verify
from ondevice.common.stream_advice import ACTIVE_S, StreamAdvisor

log = logging.getLogger(__name__)

RESERVE_TOKENS = 64  # free KV cells a new session needs beyond its prompt
SCHEDULERS = ("batched", "serial")
REGATHER_QUIET_TURNS = 3  # event-loop turns without a new job that end the regathering
REGATHER_MAX_TURNS = 32


@dataclass(slots=True)
class StepInfo:
    """What a job's step was like: waited ``queue_ms`` for it, ``batch`` tokens decoded in it,
    ``compute_ms`` for the decode and every job's math."""

    queue_ms: float
    batch: int
    compute_ms: float
    advise_stream: bool = False  # the edge's advice at the time (``stream_advice.StreamAdvisor``)
    # At temperature 0: the tokens this job committed that were near-ties for the target
    # (``speculative.near_ties``); None otherwise.
    ties: int | None = None


@dataclass(slots=True, eq=False)
class Job:
    """One session's part of a step. ``finish(logits)`` runs in the compute thread right after
    the decode (``logits`` is ``[n_logits, n_vocab]``, valid only then) and returns the result."""

    seq: EngineSession
    tokens: list[int]
    n_logits: int
    finish: Callable[[np.ndarray], Any]
    future: asyncio.Future[tuple[Any, StepInfo]]
    t_enqueue: float = field(default_factory=time.perf_counter)
    verify: bool = False  # a verification round (the advisor's cost line is fitted on these)


class EngineSession:
    """One session's state on the engine: its sequence id, the committed tokens, its sampler.

    The pool holds every committed token except the newest not yet evaluated (normally the
    one token the last verdict produced): a round evaluates those and the drafted ones in one
    job with logits for the last n + 1 positions, then rolls back to the accepted prefix.
    """

    def __init__(self, engine: Engine, seq: int, prompt: list[int], *, temperature: float,
                 seed: int, n_ctx: int) -> None:
        self.engine = engine
        self.seq = seq
        self.committed = list(prompt)
        self.temperature = temperature
        self.rng = session_rng(seed, "target")
        self.n_ctx = n_ctx
        self.prefill_ms = 0.0
        self.closed = False
        self.t_last_job = time.perf_counter()  # end of its last step (the advisor's "active")

    @property
    def cached(self) -> int:
        return self.engine.pool.lengths[self.seq]

    def _room(self, n_new: int) -> None:
        if len(self.committed) + n_new > self.n_ctx:
            raise wire.WireError(
                "context-full", f"{len(self.committed)} tokens in context + {n_new} more exceed "
                f"n_ctx {self.n_ctx}")

    def _ties(self, logits: np.ndarray) -> int | None:
        """Near-ties among greedy choices made from ``logits`` (None when sampling)."""
        return near_ties(logits) if self.temperature <= GREEDY_EPS else None

    async def async_prefill(self) -> None:
        """Evaluate the prompt but its last token, in chunks the scheduler interleaves."""
        t0 = time.perf_counter()
        todo = self.committed[:-1]
        chunk = self.engine.prefill_chunk
        for start in range(0, len(todo), chunk):
            await self.engine.submit(self, todo[start : start + chunk], 0, lambda logits: None)
        self.prefill_ms = (time.perf_counter() - t0) * 1e3

    async def async_verify(self, msg: wire.Round) -> tuple[int, int, StepInfo]:
        """``(accepted, next_token, step)`` for one drafted round."""
        n = int(msg.draft.shape[0])
        self._room(n + 1)
        base = len(self.committed)
        pending = self.committed[self.cached :]

        def finish(logits: np.ndarray) -> tuple[int, int, int | None]:  # [n + 1, vocab]
            accepted, token = verify(msg.draft, msg.q_ids, msg.q_probs, logits,
                                     self.temperature, self.rng)
            self.engine.pool.truncate(self.seq, base + accepted)  # the new token stays pending
            return accepted, token, self._ties(logits[: accepted + 1])

        (accepted, token, ties), step = await self.engine.submit(
            self, pending + msg.draft.tolist(), n + 1, finish, verify=True)
        step.ties = ties
        self.committed.extend(msg.draft[:accepted].tolist())
        self.committed.append(token)
        return accepted, token, step

    async def async_generate_one(self) -> tuple[int, StepInfo]:
        """The target alone produces one token."""
        self._room(1)

        def finish(logits: np.ndarray) -> tuple[int, int | None]:
            return sample_full(logits[0], self.temperature, self.rng), self._ties(logits[:1])

        (token, ties), step = await self.engine.submit(self, self.committed[self.cached :], 1,
                                                       finish)
        step.ties = ties
        self.committed.append(token)
        return token, step


class Engine:
    """The scheduler over one ``LlamaPool`` (see the module docstring). ``async with`` runs
    its loop; ``executor`` is the compute thread every llama.cpp call of the edge runs in."""

    def __init__(self, pool: LlamaPool, executor: ThreadPoolExecutor, *,
                 scheduler: str = "batched", batch_window_ms: float = 0.0,
                 prefill_chunk: int = 256, metrics: EdgeMetrics | None = None) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose {', '.join(SCHEDULERS)}")
        self.pool = pool
        self.executor = executor
        self.scheduler = scheduler
        self.batch_window_s = max(batch_window_ms, 0.0) / 1e3
        self.prefill_chunk = max(1, min(prefill_chunk, pool.max_step_tokens))
        self._free = list(range(pool.n_seq))
        self._open: list[EngineSession] = []
        self._pending: list[Job] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Totals for /v1/info and the benchmarks.
        self.steps = 0
        self.step_tokens = 0
        self.step_jobs = 0
        self.advisor = StreamAdvisor()
        self.metrics = metrics  # each step observed (``EdgeMetrics.observe_step``), if given
        self._t_free = time.perf_counter()  # when the compute thread last went idle

    async def __aenter__(self) -> Engine:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="edge-engine")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(wire.WireError("internal", "the edge is shutting down"))
        self._pending.clear()

    # -- sessions ---------------------------------------------------------------------------

    def admit(self, prompt_tokens: int, n_ctx: int) -> str | None:
        """Why a session with this prompt (and at most ``n_ctx`` tokens) cannot start now, or
        None: it needs a free sequence and its prompt plus room to generate, RESERVE_TOKENS
        or what its context leaves, whichever is less, in cells open sessions do not hold."""
        if not self._free:
            return f"all {self.pool.n_seq} sequences of the engine are in use"
        reserved = sum(len(s.committed) for s in self._open)
        room = max(min(RESERVE_TOKENS, n_ctx - prompt_tokens), 1)
        if prompt_tokens + room > self.pool.kv_tokens - reserved:
            return (f"KV pool full: {reserved} of {self.pool.kv_tokens} cells held by open "
                    f"sessions, a prompt of {prompt_tokens} needs {prompt_tokens + room} "
                    "(edge-server --kv-tokens)")
        return None

    def open(self, prompt: list[int], *, temperature: float, seed: int,
             n_ctx: int) -> EngineSession:
        """A new session on a free sequence id (``admit`` first); prefill it next."""
        why = self.admit(len(prompt), n_ctx)
        if why is not None:
            raise wire.WireError("kv-full", why)
        s = EngineSession(self, self._free.pop(0), prompt, temperature=temperature, seed=seed,
                      n_ctx=n_ctx)
        self._open.append(s)
        return s

    async def async_close(self, s: EngineSession) -> None:
        """Free the session's cells and sequence id (after its job in flight, if any)."""
        if s.closed:
            return
        s.closed = True
        self._open.remove(s)
        for job in [j for j in self._pending if j.seq is s]:  # never decode for a freed id
            self._pending.remove(job)
            if not job.future.done():
                job.future.set_exception(wire.WireError("unknown-session", "session closed"))
        await asyncio.get_running_loop().run_in_executor(self.executor, self.pool.truncate,
                                                         s.seq, 0)
        self._free.append(s.seq)

    @property
    def kv_used(self) -> int:
        return self.pool.used_tokens

    # -- the scheduler ----------------------------------------------------------------------

    async def submit(self, s: EngineSession, tokens: list[int], n_logits: int,
                     finish: Callable[[np.ndarray], Any], *, verify: bool = False,
                     ) -> tuple[Any, StepInfo]:
        """Queue one job of session ``s`` and wait for its result and step."""
        if s.closed:
            raise wire.WireError("unknown-session", "the session is closed")
        if len(tokens) > self.pool.max_step_tokens:
            raise wire.WireError("bad-frame", f"{len(tokens)} tokens in one job exceed the "
                                 f"engine's step of {self.pool.max_step_tokens}")
        future: asyncio.Future[tuple[Any, StepInfo]] = (
            asyncio.get_running_loop().create_future())
        self._pending.append(Job(s, tokens, n_logits, finish, future, verify=verify))
        self._wake.set()
        return await future

    def _take(self) -> list[Job]:
        """This step's jobs: oldest first, one per session, within the step's token budget and
        the pool's free cells. A job that alone needs more cells than are free fails with
        ``kv-full`` at once (it would fail every job decoded with it)."""
        free = self.pool.free_tokens
        for job in [j for j in self._pending if len(j.tokens) > free]:
            self._pending.remove(job)
            if not job.future.done():
                job.future.set_exception(wire.WireError(
                    "kv-full", f"KV pool full: {self.pool.used_tokens} of {self.pool.kv_tokens}"
                    f" cells in use, this session's step needs {len(job.tokens)}"))
        if not self._pending:
            return []
        if self.scheduler == "serial":
            return [self._pending.pop(0)]
        budget = min(self.pool.max_step_tokens, free)
        taken: list[Job] = []
        seqs: set[int] = set()
        rest: list[Job] = []
        for job in self._pending:
            n = len(job.tokens)
            if job.seq.seq in seqs or n > budget:
                rest.append(job)
                continue
            taken.append(job)
            seqs.add(job.seq.seq)
            budget -= n
        self._pending = rest
        return taken

    def _run(self, jobs: list[Job]) -> list[tuple[bool, Any]]:
        """In the compute thread: one decode, then each job's math; (ok, result or error)."""
        parts = [Part(j.seq.seq, j.tokens, j.n_logits) for j in jobs]
        try:
            views = self.pool.step(parts)
        except PoolFull as exc:
            return [(False, wire.WireError("kv-full", str(exc))) for _ in jobs]
        except ValueError as exc:
            return [(False, wire.WireError("bad-frame", str(exc))) for _ in jobs]
        out: list[tuple[bool, Any]] = []
        for job, logits in zip(jobs, views, strict=True):
            try:
                out.append((True, job.finish(logits)))
            except Exception as exc:  # one session's failure is that session's answer
                out.append((False, exc))
        return out

    async def _regather(self) -> None:
        """Turn the event loop until ``REGATHER_QUIET_TURNS`` turns in a row bring no new job
        (at most ``REGATHER_MAX_TURNS``): microseconds, against a decode of milliseconds."""
        quiet = 0
        for _ in range(REGATHER_MAX_TURNS):
            n = len(self._pending)
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._pending) == n else 0
            if quiet >= REGATHER_QUIET_TURNS:
                return

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.scheduler == "batched":
                await self._regather()
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            if self.batch_window_s > 0 and self.scheduler == "batched":
                await asyncio.sleep(self.batch_window_s)
            jobs = [j for j in self._take() if not j.future.done()]
            if not jobs:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self._run, jobs)
            except Exception as exc:  # a bug in the step: fail its jobs, keep serving
                log.exception("engine step failed")
                results = [(False, exc)] * len(jobs)
            t1 = time.perf_counter()
            batch = sum(len(j.tokens) for j in jobs)
            self.steps += 1
            self.step_tokens += batch
            self.step_jobs += len(jobs)
            metrics = self.metrics
            if metrics is not None:
                metrics.observe_step(tokens=batch, compute_s=t1 - t0)
            for job in jobs:
                job.seq.t_last_job = t1
                if metrics is not None:
                    metrics.queue_seconds.observe(t0 - job.t_enqueue)
            self.advisor.observe_step(
                compute_s=t1 - t0, idle_s=t0 - self._t_free, tokens=batch, jobs=len(jobs),
                # serial scheduling never batches: a streamed token is a step of its own
                active=(1 if self.scheduler == "serial"
                        else sum(1 for s in self._open if t1 - s.t_last_job < ACTIVE_S)),
                # a verify job's result is (accepted, token): it produced accepted + 1
                rounds=[(len(j.tokens), r[1][0] + 1) for j, r in zip(jobs, results, strict=True)
                        if j.verify and r[0]],
                fit=all(j.n_logits == len(j.tokens) for j in jobs))
            self._t_free = t1
            advise = self.advisor.advise_stream
            for job, (ok, value) in zip(jobs, results, strict=True):
                if job.future.done():  # the session went away meanwhile
                    continue
                info = StepInfo((t0 - job.t_enqueue) * 1e3, batch, (t1 - t0) * 1e3, advise)
                if ok:
                    job.future.set_result((value, info))
                else:
                    job.future.set_exception(value)

    def stats(self) -> dict[str, Any]:
        """Scheduler and KV figures for ``/v1/info``."""
        return {
            "scheduler": self.scheduler,
            "batch_window_ms": self.batch_window_s * 1e3,
            "prefill_chunk": self.prefill_chunk,
            "max_step_tokens": self.pool.max_step_tokens,
            "kv_tokens": self.pool.kv_tokens,
            "kv_used": self.pool.used_tokens,
            "sequences": self.pool.n_seq,
            "steps": self.steps,
            "mean_batch_tokens": self.step_tokens / self.steps if self.steps else None,
            "mean_batch_jobs": self.step_jobs / self.steps if self.steps else None,
            "pending": len(self._pending),
            "advice": self.advisor.describe(),
        }
