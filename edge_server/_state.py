"""What every handler of the edge shares: ``EdgeState``, one per app, under the ``STATE`` key.

The models are opened into it by the app's ``cleanup_ctx`` (``app._model_ctx``); the open
sessions of both kinds are registered in ``sessions`` by the connection that owns them
(``_connection.Connection``), which is the only place that adds or removes one; each
connection registers itself in ``connections`` while its socket is served. ``drain`` is the
edge's drain (``_drain``), started by ``start_drain``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from edge_server._drain import Drain, async_drain
from edge_server._limits import SessionSlots
from edge_server._metrics import EdgeMetrics
from edge_server.config import EdgeConfig

if TYPE_CHECKING:  # llama.cpp is loaded only by an edge with --model (a [dnn]-only install)
    from edge_server._connection import Connection
    from edge_server._dnn import DnnService
    from edge_server._engine import Engine
    from edge_server._session import Session
    from ondevice.common.llama_runtime import LlamaConfig, LlamaModel


@dataclass(slots=True)
class EdgeState:
    """What every handler shares; one per app."""

    config: EdgeConfig
    model: LlamaModel | None = None
    vocab_hash: str = ""
    n_ctx: int = 0  # the context llama.cpp gives each session (set when the model loads)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="edge-compute")
    )
    sessions: dict[str, Session] = field(default_factory=dict)  # open sessions of both kinds
    connections: set[Connection] = field(default_factory=set)  # sockets being served
    engine: Engine | None = None
    dnn: DnnService | None = None
    slots: SessionSlots = field(init=False)  # the session limits, held from before a build
    on_load_change: Callable[[], None] | None = None  # set by the advertiser
    metrics: EdgeMetrics = field(default_factory=EdgeMetrics)  # served on /metrics
    drain: Drain = field(init=False)
    # set by the advertiser: announce ``state=draining``, then unregister (``_drain``)
    on_drain: Callable[[], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        cfg = self.config
        self.drain = Drain(timeout_s=cfg.drain_timeout_s)
        self.slots = SessionSlots(cfg.max_sessions, cfg.max_sessions_per_client)
        self.n_ctx = cfg.n_ctx  # until the model is loaded and llama.cpp is asked
        self.metrics.bind(sessions=self.sessions_of, kv_used=self._kv_used,
                          kv_capacity=self._kv_capacity)

    def sessions_of(self, kind: str) -> int:
        """Open sessions of ``kind`` (``Session.kind``: "llm" or "dnn")."""
        return sum(1 for s in self.sessions.values() if s.kind == kind)

    def _kv_used(self) -> int:
        return self.engine.kv_used if self.engine is not None else 0

    def _kv_capacity(self) -> int:
        return self.engine.pool.kv_tokens if self.engine is not None else 0

    def load_changed(self) -> None:
        """A session opened or ended."""
        self.drain.changed.set()
        if self.on_load_change is not None:
            self.on_load_change()

    def start_drain(self) -> bool:
        """Start draining the edge (``_drain``): False when it drains already. Runs on the
        event loop."""
        drain = self.drain
        if drain.active:
            return False
        drain.started_s = time.monotonic()
        drain.begun.set()
        drain.task = asyncio.get_running_loop().create_task(async_drain(self))
        return True

    async def run(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run a llama.cpp call in the compute thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @property
    def llama_config(self) -> LlamaConfig:
        from ondevice.common.llama_runtime import LlamaConfig

        cfg = self.config
        return LlamaConfig(n_ctx=cfg.kv_pool_tokens, n_batch=cfg.n_batch,
                           n_threads=cfg.n_threads, kv_type=cfg.kv_type,
                           n_gpu_layers=self.gpu_layers)

    @property
    def gpu_layers(self) -> int:
        """Layers to offload: the flag, else all of them when llama.cpp has a GPU backend."""
        if self.config.n_gpu_layers is not None:
            return self.config.n_gpu_layers
        from ondevice.common.llama_runtime import gpu_offload_supported

        return 1_000_000 if gpu_offload_supported() else 0

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt an ``open`` may carry: the limit, within the real context."""
        return min(self.config.max_prompt_tokens, self.n_ctx - 1)

    @property
    def open_sessions(self) -> int:
        """LLM sessions and DNN tasks open now."""
        return len(self.sessions)

    @property
    def load(self) -> float:
        return self.open_sessions / self.config.max_sessions

    @property
    def capabilities(self) -> list[str]:
        return (["llm"] if self.model is not None else []) + (
            ["dnn"] if self.dnn is not None else [])

    @property
    def model_ids(self) -> list[str]:
        return ([self.model.model_id] if self.model is not None else []) + (
            [self.dnn.model_id] if self.dnn is not None else [])


STATE = web.AppKey("coinfer_edge_state", EdgeState)
