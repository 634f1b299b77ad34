"""The ``_coinfer._tcp.local.`` service record: TXT keys, defined once for both sides.

=========  =======================================================================
TXT key    value
=========  =======================================================================
``v``      wire protocol version (``ondevice.common.wire.PROTOCOL_VERSION``)
``caps``   capabilities, comma-separated: ``llm``, ``dnn``
``models`` served model ids, comma-separated (GGUF file names, DNN model ids)
``vocab``  vocabulary hash of the target LLM (``LlamaModel.vocab_hash``), or empty
``load``   ``sessions/capacity``, e.g. ``3/8``
``auth``   ``1`` when requests need ``Authorization: Bearer``, else ``0``
``tls``    ``1`` when the edge serves HTTPS/WSS, else ``0``
``fp``     SHA-256 of the TLS certificate (DER), hex, when ``tls`` is ``1``
``site``   the site label the operator gave (``edge-server --site``), absent when none
``state``  ``draining`` while the edge is being taken out of service, absent otherwise
=========  =======================================================================

A site label keeps fleets apart on one network: a device given a site (``--site``) uses only
edges that advertise that label, so a developer's own edge, or the lab next door's, never
captures its sessions. A device without one uses any edge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SERVICE_TYPE = "_coinfer._tcp.local."


@dataclass(slots=True)
class EdgeRecord:
    """What an edge advertises, as the device sees it (plus the RTT the device measured)."""

    name: str
    host: str
    port: int
    version: int
    caps: list[str]
    models: list[str]
    vocab_hash: str
    sessions: int
    capacity: int
    auth: bool
    tls: bool
    fingerprint: str = ""
    site: str = ""
    state: str = ""  # "draining", or "" while it serves
    rtt_ms: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def load(self) -> float:
        return self.sessions / self.capacity if self.capacity else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["url"] = self.url
        d["load"] = self.load
        return d


def encode_txt(
    *,
    version: int,
    caps: list[str],
    models: list[str],
    vocab_hash: str,
    sessions: int,
    capacity: int,
    auth: bool,
    fingerprint: str = "",
    site: str = "",
    state: str = "",
) -> dict[str, str]:
    """TXT properties of an edge (see the table above)."""
    txt = {
        "v": str(version),
        "caps": ",".join(caps),
        "models": ",".join(models),
        "vocab": vocab_hash,
        "load": f"{sessions}/{capacity}",
        "auth": "1" if auth else "0",
        "tls": "1" if fingerprint else "0",
    }
    if fingerprint:
        txt["fp"] = fingerprint
    if site:
        txt["site"] = site
    if state:
        txt["state"] = state
    return txt


def decode_txt(name: str, host: str, port: int, props: dict[bytes, bytes | None]) -> EdgeRecord:
    """Parse TXT properties; raise ValueError naming the bad key."""
    txt = {k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")
           for k, v in props.items()}
    try:
        version = int(txt.get("v", "0"))
        sessions_s, _, capacity_s = txt.get("load", "0/0").partition("/")
        sessions, capacity = int(sessions_s), int(capacity_s)
    except ValueError as exc:
        raise ValueError(f"edge {name}: malformed TXT record {txt}") from exc
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    known = {"v", "caps", "models", "vocab", "load", "auth", "tls", "fp", "site", "state"}
    return EdgeRecord(
        name=name,
        host=host,
        port=port,
        version=version,
        caps=split(txt.get("caps", "")),
        models=split(txt.get("models", "")),
        vocab_hash=txt.get("vocab", ""),
        sessions=sessions,
        capacity=capacity,
        auth=txt.get("auth") == "1",
        tls=txt.get("tls") == "1",
        fingerprint=txt.get("fp", ""),
        site=txt.get("site", ""),
        state=txt.get("state", ""),
        extra={k: v for k, v in txt.items() if k not in known},
    )
