"""The LLM frames of a connection: ``open``, ``round``, ``generate`` and ``stop``.

An ``LlmSession`` is one sequence on the engine (``_engine.EngineSession``) and, while one
streams, its ``generate`` stretch: a task beside the frame reader that sends a ``tokens``
frame per decode step until ``max_tokens``, an end-of-generation token or a ``stop`` frame.
Each handler validates its frame against this edge's limits before anything changes
(``check_open``, ``check_round``); a refusal is a ``wire.WireError``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_server._session import FrameHandler, Session, quote
from edge_server._status import SessionStats
from edge_server.config import EdgeConfig
from ondevice.common import wire
from ondevice.common.seed import WIRE_MAX_SEED, seed_problem

if TYPE_CHECKING:  # llama.cpp is loaded only by an edge with --model (a [dnn]-only install)
    from edge_server._connection import Connection
    from edge_server._engine import EngineSession
    from edge_server._state import EdgeState
    from ondevice.common.llama_runtime import LlamaModel


class LlmSession(Session):
    """One LLM session of a connection: its engine sequence and its ``generate`` stretch."""

    kind = "llm"

    def __init__(self, conn: Connection, engine_session: EngineSession, draft_model: str
                 ) -> None:
        self.sid = secrets.token_hex(8)
        self.conn = conn
        self.peer = conn.peer
        self.engine_session = engine_session
        self.draft_model = draft_model  # as the device named it (client data)
        self.stats = SessionStats()
        self._stretch: asyncio.Task[None] | None = None
        self._stop = False  # set by ``stop``: the stretch ends after its step

    @property
    def streaming(self) -> bool:
        return self._stretch is not None and not self._stretch.done()

    def request_stop(self) -> None:
        if self.streaming:
            self._stop = True

    async def async_end_stream(self) -> None:
        stretch = self._stretch
        if stretch is None or stretch is asyncio.current_task():  # ended from inside itself
            return
        self._stop = True
        await asyncio.wait([stretch])
        self._stretch = None

    async def async_close(self) -> None:
        await self.async_end_stream()
        s = self.engine_session
        await s.engine.async_close(s)

    def describe_status(self, now_s: float) -> dict[str, Any]:
        return {"sid": self.sid, "kind": self.kind, "peer": self.peer, "device": None,
                "draft_model": self.draft_model, "policy": None,
                "context_tokens": len(self.engine_session.committed),
                **self.stats.describe(now_s)}

    def start_stretch(self, max_tokens: int) -> None:
        """Stream up to ``max_tokens`` tokens the target generates alone, beside the reader."""
        self._stop = False
        self._stretch = asyncio.create_task(self._run_stretch(max_tokens))

    async def _run_stretch(self, max_tokens: int) -> None:
        """When the connection is over (the device left or stopped reading) the socket is
        aborted, which ends the frame reader."""
        if not await self.conn.answer(self._generate(max_tokens)):
            self.conn.abort()

    async def _generate(self, max_tokens: int) -> None:
        """Edge-only: the target generates alone and streams each token as it comes; the
        engine batches these steps with every other session's work. A ``stop`` ends it after
        the step in flight: that step's frame is the last (``done``)."""
        model = self.conn.state.model
        assert model is not None
        generated = self.conn.state.metrics.generated_tokens
        for i in range(max_tokens):
            if self._stop:
                break
            token, step = await self.engine_session.async_generate_one()
            generated.inc()
            self.stats.observe_stream(1, step.queue_ms)
            done = model.is_eog(token) or i == max_tokens - 1 or self._stop
            await self.conn.send(wire.Tokens(np.array([token], dtype=np.int32), done,
                                             step.compute_ms, step.queue_ms, step.batch,
                                             step.advise_stream, step.ties))
            if done:
                return
        await self.conn.send(wire.Tokens(np.zeros(0, dtype=np.int32), True, 0.0))


# -- validation -----------------------------------------------------------------------------

def check_ids(ids: np.ndarray, n_vocab: int, what: str) -> None:
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n_vocab):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise wire.WireError(
            "token-out-of-range", f"{what} holds token id {bad}, outside 0..{n_vocab - 1}"
        )


def check_round(msg: wire.Round, cfg: EdgeConfig, n_vocab: int) -> None:
    k = msg.q_ids.shape[1] if msg.q_ids.ndim == 2 else 0
    if msg.draft.shape[0] > cfg.max_draft_tokens:
        raise wire.WireError(
            "draft-too-long",
            f"{msg.draft.shape[0]} drafted tokens; this edge verifies at most"
            f" {cfg.max_draft_tokens} per round",
        )
    if k > cfg.max_top_k:
        raise wire.WireError("bad-frame", f"top-k of {k} exceeds this edge's limit {cfg.max_top_k}")
    check_ids(msg.draft, n_vocab, "draft")
    check_ids(msg.q_ids, n_vocab, "q_ids")
    q = msg.q_probs
    if q.size and (not np.all(np.isfinite(q)) or q.min() < 0.0 or np.any(q.sum(axis=1) > 1.001)):
        raise wire.WireError("bad-frame", "q_probs must be finite, >= 0, and sum to <= 1 per row")


def check_open(msg: wire.Open, state: EdgeState) -> LlamaModel:
    """Raise the ``WireError`` this edge refuses ``msg`` with, if any; else return the target
    model. Changes nothing."""
    if msg.version != wire.PROTOCOL_VERSION:
        raise wire.WireError(
            "protocol", f"device speaks protocol {msg.version}, edge {wire.PROTOCOL_VERSION}"
        )
    model = state.model
    if model is None:
        raise wire.WireError("bad-frame", "this edge serves no LLM (started without --model)")
    if msg.vocab_hash != state.vocab_hash:
        raise wire.WireError(
            "vocab-mismatch",
            f"draft {msg.draft_model!r} (vocabulary {msg.vocab_hash}) cannot be verified by"
            f" target {model.model_id!r} (vocabulary {state.vocab_hash})",
        )
    n = int(msg.prompt.shape[0])
    limit = state.max_prompt_tokens
    if n == 0 or n > limit:
        raise wire.WireError(
            "prompt-too-long" if n else "bad-frame",
            f"prompt of {n} tokens; this edge accepts 1..{limit}",
        )
    check_ids(msg.prompt, model.n_vocab, "prompt")
    if not 0.0 <= msg.temperature <= 100.0 or msg.top_k < 1:
        raise wire.WireError("bad-frame", "temperature must be in [0, 100] and top_k >= 1")
    problem = seed_problem(msg.seed, WIRE_MAX_SEED)  # a resumed session's seed is above a user's
    if problem is not None:
        raise wire.WireError("bad-frame", problem)
    return model


# -- the handlers ---------------------------------------------------------------------------

def _session(conn: Connection, sid: str) -> LlmSession:
    """The connection's open LLM session named ``sid``, else ``unknown-session``."""
    session = conn.session
    if not isinstance(session, LlmSession) or session.sid != sid:
        raise wire.WireError("unknown-session", f"no open session {quote(sid)} on this connection")
    return session


async def _open(conn: Connection, msg: wire.Open, t_in: float) -> None:
    metrics = conn.state.metrics
    try:
        session, model = await _open_session(conn, msg)
    except wire.WireError as exc:
        metrics.sessions_refused.labels(reason=exc.code).inc()
        raise
    metrics.sessions_opened.labels(kind="llm").inc()
    metrics.prompt_tokens.inc(int(msg.prompt.shape[0]))
    await conn.send(wire.Opened(session.sid, model.model_id, conn.state.n_ctx,
                                session.engine_session.prefill_ms))


async def _open_session(conn: Connection, msg: wire.Open) -> tuple[LlmSession, LlamaModel]:
    """The new session ``msg`` asks for, in place of the open one, and the target; a
    refusal is a ``WireError``."""
    state = conn.state
    model = check_open(msg, state)
    engine = state.engine
    assert engine is not None
    n = int(msg.prompt.shape[0])

    async def build() -> LlmSession:
        why = engine.admit(n, state.n_ctx)
        if why is not None and isinstance(conn.session, LlmSession):
            # only the replaced session's room lets the new one in
            await conn.async_drop_session()
            why = engine.admit(n, state.n_ctx)
        if why is not None:
            raise wire.WireError("kv-full", why)
        es = engine.open(msg.prompt.tolist(), temperature=msg.temperature, seed=msg.seed,
                         n_ctx=state.n_ctx)
        try:
            await es.async_prefill()
        except BaseException:
            await engine.async_close(es)
            raise
        return LlmSession(conn, es, msg.draft_model)

    session = await conn.async_open(build)  # too-many-sessions first, then the KV pool
    return session, model


async def _round(conn: Connection, msg: wire.Round, t_in: float) -> None:
    session = _session(conn, msg.session)
    model = conn.state.model
    assert model is not None
    check_round(msg, conn.state.config, model.n_vocab)
    accepted, token, step = await session.engine_session.async_verify(msg)
    conn.state.metrics.observe_round(int(msg.draft.shape[0]), accepted)
    session.stats.observe_round(int(msg.draft.shape[0]), accepted, step.queue_ms)
    edge_ms = (time.perf_counter() - t_in) * 1e3
    await conn.send(wire.Verdict(accepted, token, step.compute_ms, edge_ms,
                                 queue_ms=step.queue_ms, batch=step.batch,
                                 advise=step.advise_stream, ties=step.ties))


async def _generate(conn: Connection, msg: wire.Generate, t_in: float) -> None:
    session = _session(conn, msg.session)
    if msg.max_tokens < 0:
        raise wire.WireError("bad-frame", "max_tokens must be >= 0")
    session.start_stretch(msg.max_tokens)


LLM_HANDLERS: dict[type, FrameHandler] = {
    wire.Open: _open,
    wire.Round: _round,
    wire.Generate: _generate,
}
