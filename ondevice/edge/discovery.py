"""Finding edges: zeroconf browsing, RTT probing, and choosing among compatible edges.

``async_discover`` browses ``_coinfer._tcp.local.`` on the given interfaces (python-zeroconf's
asyncio API), resolves each edge's record, and measures its RTT with ``GET /v1/info`` (which
also proves it reachable and the token accepted: ``placement.async_probe``). ``rank_edges`` is
pure: it drops edges the draft cannot use (another protocol, vocabulary or site, full,
draining, unreachable), saying why, and orders the rest by load, then RTT; choosing among
those by expected wait is ``placement.rank``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ondevice.common import wire
from ondevice.common.discovery_record import SERVICE_TYPE, EdgeRecord, decode_txt
from ondevice.edge.placement import async_probe

log = logging.getLogger(__name__)

BROWSE_S = 2.0  # s: how long a browse listens for answers by default
RESOLVE_MS = 1500  # ms: per-record resolution timeout


@dataclass(frozen=True, slots=True)
class Rejected:
    record: EdgeRecord
    reason: str


class EdgeBrowser:
    """A live view of the edges on ``interfaces`` (IPv4 addresses; empty = all).

    ``async with EdgeBrowser(...) as browser`` keeps a zeroconf browser running, so that after
    the first answers (about a second after start) ``async_records`` returns at once from the
    cache: a device that loses its edge mid-generation finds the next one without waiting for
    a fresh browse. With ``site``, only edges advertising that site label count (the others
    are neither listed nor probed).
    """

    def __init__(
        self,
        *,
        interfaces: Sequence[str] = (),
        token: str | None = None,
        fingerprint: str | None = None,
        site: str | None = None,
    ) -> None:
        self.interfaces = list(interfaces)
        self.site = site
        self.token = token
        self.fingerprint = fingerprint
        self.names: set[str] = set()
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> EdgeBrowser:
        self._azc = AsyncZeroconf(interfaces=self.interfaces or InterfaceChoice.All,
                                  ip_version=IPVersion.V4Only)
        self._browser = AsyncServiceBrowser(
            self._azc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change]
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.async_close()

    async def async_close(self) -> None:
        """Stop browsing. Idempotent."""
        browser, azc = self._browser, self._azc
        self._browser, self._azc = None, None
        if browser is not None:
            await browser.async_cancel()
        if azc is not None:
            await azc.async_close()

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            self.names.add(name)
        elif state_change is ServiceStateChange.Removed:
            self.names.discard(name)
        self._changed.set()

    async def async_wait_change(self, timeout_s: float) -> bool:
        """Wait until an edge appears, changes or leaves (True), or ``timeout_s`` passes."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def _resolve(self, name: str) -> EdgeRecord | None:
        assert self._azc is not None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._azc.zeroconf, RESOLVE_MS):
            log.info("edge %s did not resolve", name)
            return None
        addrs = info.parsed_addresses(IPVersion.V4Only)
        if not addrs or info.port is None:
            return None
        if self.interfaces:  # an edge on several networks: take its address on ours (/24)
            ours = [a for a in addrs
                    if any(a.rsplit(".", 1)[0] == i.rsplit(".", 1)[0] for i in self.interfaces)]
            addrs = ours or addrs
        try:
            return decode_txt(name, addrs[0], info.port, info.properties)
        except ValueError as exc:
            log.warning("%s", exc)
            return None

    async def async_records(self, *, probe: bool = True) -> list[EdgeRecord]:
        """The edges known now, resolved; with ``probe``, each with its measured ``rtt_ms``
        (or ``extra["error"]`` when it does not answer)."""
        if self._azc is None:
            raise RuntimeError("EdgeBrowser is not open")
        resolved = await asyncio.gather(*(self._resolve(n) for n in sorted(self.names)))
        records = [r for r in resolved
                   if r is not None and (self.site is None or r.site == self.site)]
        if probe and records:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

                async def probe_one(rec: EdgeRecord) -> None:
                    try:
                        load = await async_probe(
                            http, rec.url, token=self.token,
                            fingerprint=self.fingerprint or rec.fingerprint or None)
                        rec.rtt_ms = load.rtt_ms
                    except (aiohttp.ClientError, OSError, asyncio.TimeoutError,
                            ValueError) as exc:
                        rec.extra["error"] = f"{type(exc).__name__}: {exc}"

                await asyncio.gather(*(probe_one(r) for r in records))
        return records


async def async_discover(
    *,
    timeout_s: float = BROWSE_S,
    interfaces: Sequence[str] = (),
    token: str | None = None,
    fingerprint: str | None = None,
    probe: bool = True,
    site: str | None = None,
) -> list[EdgeRecord]:
    """Edges answering on ``interfaces`` (IPv4 addresses; empty = all) within ``timeout_s``
    (with ``site``: only those advertising that site label).

    Answers take about a second to arrive (multicast query and response delays), so keep
    ``timeout_s`` at 1.5 s or more.
    """
    async with EdgeBrowser(interfaces=interfaces, token=token, fingerprint=fingerprint,
                           site=site) as b:
        await asyncio.sleep(timeout_s)
        return await b.async_records(probe=probe)


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
        elif rec.state == "draining":
            rejected.append(Rejected(rec, "draining"))
        elif rec.sessions >= rec.capacity:
            rejected.append(Rejected(rec, f"full ({rec.sessions}/{rec.capacity} sessions)"))
        elif rec.rtt_ms is None and "error" in rec.extra:
            rejected.append(Rejected(rec, f"unreachable: {rec.extra['error']}"))
        else:
            usable.append(rec)
    usable.sort(key=lambda r: (round(r.load, 3), r.rtt_ms if r.rtt_ms is not None else 1e9))
    return usable, rejected
