"""Finding edges: zeroconf browsing, RTT probing, and choosing among compatible edges.

``async_discover`` browses ``_coinfer._tcp.local.`` on the given interfaces (python-zeroconf's
asyncio API), resolves each edge's record, and measures its RTT with ``GET /v1/info`` (which
also proves it reachable and the token accepted). ``rank_edges`` is pure: it drops edges the
draft cannot use, saying why, and orders the rest by load, then RTT.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ondevice import wire
from ondevice.discovery_record import SERVICE_TYPE, EdgeRecord, decode_txt
from ondevice.edge_client import client_ssl

log = logging.getLogger(__name__)

BROWSE_S = 2.0  # s: how long a browse listens for answers by default
RESOLVE_MS = 1500  # ms: per-record resolution timeout
PROBES = 3  # GET /v1/info per edge; the RTT is the minimum


@dataclass(frozen=True, slots=True)
class Rejected:
    record: EdgeRecord
    reason: str


async def _probe_rtt(
    http: aiohttp.ClientSession, rec: EdgeRecord, token: str | None, fingerprint: str | None
) -> float:
    """Minimum RTT in ms of ``PROBES`` info requests; raises on any failure."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ssl = client_ssl(rec.url, fingerprint or rec.fingerprint or None)
    best = float("inf")
    for _ in range(PROBES):
        t0 = time.perf_counter()
        async with http.get(rec.url + wire.INFO_PATH, headers=headers, ssl=ssl) as resp:
            await resp.read()
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message=resp.reason or ""
                )
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


async def async_discover(
    *,
    timeout_s: float = BROWSE_S,
    interfaces: Sequence[str] = (),
    token: str | None = None,
    fingerprint: str | None = None,
    probe: bool = True,
) -> list[EdgeRecord]:
    """Edges answering on ``interfaces`` (IPv4 addresses; empty = all) within ``timeout_s``.

    Each record gets ``rtt_ms`` from ``GET /v1/info`` when ``probe``; an edge that does not
    answer the probe keeps ``rtt_ms = None`` and ``extra["error"]`` says why.
    """
    azc = AsyncZeroconf(interfaces=list(interfaces) or InterfaceChoice.All,
                        ip_version=IPVersion.V4Only)
    names: set[str] = set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            names.add(name)
        elif state_change is ServiceStateChange.Removed:
            names.discard(name)

    browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
    records: list[EdgeRecord] = []
    try:
        await asyncio.sleep(timeout_s)

        async def resolve(name: str) -> EdgeRecord | None:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(azc.zeroconf, RESOLVE_MS):
                log.info("edge %s did not resolve", name)
                return None
            addrs = info.parsed_addresses(IPVersion.V4Only)
            if not addrs or info.port is None:
                return None
            if interfaces:  # prefer an address on the interface we browse on
                same_net = [a for a in addrs if any(a.rsplit(".", 1)[0] == i.rsplit(".", 1)[0]
                                                    for i in interfaces)]
                addrs = same_net or addrs
            try:
                return decode_txt(name, addrs[0], info.port, info.properties)
            except ValueError as exc:
                log.warning("%s", exc)
                return None

        resolved = await asyncio.gather(*(resolve(n) for n in sorted(names)))
        records = [r for r in resolved if r is not None]
    finally:
        await browser.async_cancel()
        await azc.async_close()
    if probe and records:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def probe_one(rec: EdgeRecord) -> None:
                try:
                    rec.rtt_ms = await _probe_rtt(http, rec, token, fingerprint)
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    rec.extra["error"] = f"{type(exc).__name__}: {exc}"

            await asyncio.gather(*(probe_one(r) for r in records))
    return records


def rank_edges(
    records: Sequence[EdgeRecord],
    *,
    vocab_hash: str | None,
    capability: str = "llm",
    exclude: Sequence[str] = (),
) -> tuple[list[EdgeRecord], list[Rejected]]:
    """Usable edges best first (lowest load, then lowest RTT), and the rejected with reasons."""
    usable: list[EdgeRecord] = []
    rejected: list[Rejected] = []
    for rec in records:
        if rec.url in exclude:
            rejected.append(Rejected(rec, "failed earlier in this run"))
        elif rec.version != wire.PROTOCOL_VERSION:
            rejected.append(Rejected(rec, f"protocol {rec.version}, device speaks "
                                          f"{wire.PROTOCOL_VERSION}"))
        elif capability not in rec.caps:
            rejected.append(Rejected(rec, f"does not serve {capability} (serves {rec.caps})"))
        elif vocab_hash is not None and rec.vocab_hash != vocab_hash:
            rejected.append(Rejected(rec, f"vocabulary {rec.vocab_hash or '?'} differs from the "
                                          f"draft's {vocab_hash} (models {rec.models})"))
        elif rec.sessions >= rec.capacity:
            rejected.append(Rejected(rec, f"full ({rec.sessions}/{rec.capacity} sessions)"))
        elif rec.rtt_ms is None and "error" in rec.extra:
            rejected.append(Rejected(rec, f"unreachable: {rec.extra['error']}"))
        else:
            usable.append(rec)
    usable.sort(key=lambda r: (round(r.load, 3), r.rtt_ms if r.rtt_ms is not None else 1e9))
    return usable, rejected
