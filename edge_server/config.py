"""Edge server configuration: every limit is a field here and a flag of ``edge-server``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    advertise: bool = True  # zeroconf _coinfer._tcp.local.
    interfaces: tuple[str, ...] = ()  # IPv4 addresses to advertise on; () = all interfaces
    token: str | None = None  # required bearer token (from --token-file), None = open
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
    header_timeout_s: float = 10.0  # a new connection must send its request head within this
    max_pending_connections: int = 64  # connections still sending their first request head
    keepalive_timeout_s: float = 75.0  # idle HTTP connection (and its next request head)
    heartbeat_s: float = 30.0  # WebSocket ping interval
