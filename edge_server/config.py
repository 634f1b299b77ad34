"""Edge server configuration: every limit is a field here and a flag of ``edge-server``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ondevice.common import http_limits


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeConfig:
    """What the edge serves and the limits it enforces where bytes are read."""

    model_path: Path | None = None
    dnn_dir: Path | None = None  # a `model-export dnn split` directory: serve its tails
    dnn_workers: int = 1  # threads running DNN tails (each an onnxruntime call at a time)
    dnn_threads: int = 1  # onnxruntime intra-op threads per DNN call
    host: str = "0.0.0.0"  # real deployments listen on all interfaces; tests pass 127.0.0.1
    port: int = 8470
    n_ctx: int = 4096  # tokens per session context
    n_threads: int | None = None  # llama.cpp threads; None = all cores
    kv_type: str = "f16"  # KV cache type: f16, f32 (exact batch-vs-sequential logits), q8_0
    # The serving engine (issue 12): one context, one KV pool, batched steps.
    kv_tokens: int | None = None  # KV cells shared by all sessions; None: see kv_pool_tokens
    n_gpu_layers: int | None = None  # layers offloaded to a GPU; None: all with a GPU backend
    scheduler: str = "batched"  # or "serial": one session's work per decode (for comparison)
    batch_window_ms: float = 0.0  # wait this long for more work before a step
    prefill_chunk: int = 256  # prompt tokens per step and session
    n_batch: int = 512  # most tokens in one step (llama.cpp's batch)
    advertise: bool = True  # zeroconf _coinfer._tcp.local.
    interfaces: tuple[str, ...] = ()  # IPv4 addresses to advertise on; () = all interfaces
    site: str = ""  # the site label advertised (TXT ``site``); "" = none
    token: str | None = None  # required bearer token (from --token-file), None = open
    metrics_public: bool = False  # /metrics and /status without the token (--metrics-public)
    tls_cert: Path | None = None  # PEM certificate; with tls_key: serve HTTPS/WSS
    tls_key: Path | None = None
    emulated_delay_ms: float = 0.0  # added before every reply: emulates a far edge in tests
    max_sessions: int = 8
    max_sessions_per_client: int = 4  # per client IP address
    max_draft_tokens: int = 32  # drafted tokens per round
    max_top_k: int = 256  # draft distribution entries per drafted position
    max_prompt_tokens: int = 3072
    max_frame_bytes: int = 1 << 20  # 1 MiB per WebSocket frame / HTTP body
    max_packet_bytes: int = 1 << 16  # feature packet or raw-input slice; larger: bad-packet
    idle_timeout_s: float = 300.0  # a session with no frame for this long is closed
    header_timeout_s: float = http_limits.HEADER_TIMEOUT_S  # for a new connection's head
    max_pending_connections: int = http_limits.MAX_PENDING_CONNECTIONS  # still sending it
    keepalive_timeout_s: float = http_limits.KEEPALIVE_TIMEOUT_S  # idle between requests
    heartbeat_s: float = 30.0  # WebSocket ping interval
    # a frame the device does not take within this long (it stopped reading, its buffer is
    # full) ends the connection and frees its session's place
    send_timeout_s: float = 10.0
    # a drain (SIGTERM, POST /v1/drain) lets open sessions run this long, moving the rest to
    # other edges just before it ends (``_drain``); the edge has exited by then
    drain_timeout_s: float = 60.0

    @property
    def kv_pool_tokens(self) -> int:
        """``kv_tokens``, or by default room for every session at half its context (sessions
        rarely fill theirs; a full pool refuses new sessions with ``kv-full``), at least one
        whole context, at most 65536 cells."""
        if self.kv_tokens is not None:
            return self.kv_tokens
        return max(self.n_ctx, min(self.max_sessions * self.n_ctx // 2, 65536))
