"""Zeroconf advertisement of a running edge (python-zeroconf's asyncio API).

``EdgeAdvertiser`` registers ``_coinfer._tcp.local.`` once the server listens (its port is known
only then), refreshes the TXT record when the load changes (debounced), and unregisters on
exit, which ``edge-server`` reaches at the end of a drain (SIGINT, SIGTERM). A drain announces
its ``state=draining`` at once (``async_update_now``) and then unregisters (``async_close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence

import ifaddr
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from ondevice.common.discovery_record import SERVICE_TYPE

log = logging.getLogger(__name__)

UPDATE_DEBOUNCE_S = 0.5  # s: at most two TXT refreshes a second however sessions churn


def local_ipv4_addresses() -> list[str]:
    """The machine's IPv4 addresses other than loopback (what ``0.0.0.0`` serves on)."""
    addrs = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                addrs.append(ip.ip)
    return addrs


class EdgeAdvertiser:
    """``async with EdgeAdvertiser(...)`` keeps the edge registered for the block's duration.

    ``interfaces``: IPv4 addresses to advertise on (and to announce as the edge's addresses);
    empty means every interface, announcing ``addresses`` (or all local IPv4 addresses).
    ``txt`` is called for the current TXT properties at registration and on each refresh.
    """

    def __init__(
        self,
        *,
        port: int,
        txt: Callable[[], dict[str, str]],
        interfaces: Sequence[str] = (),
        addresses: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        self.port = port
        self._txt = txt
        self.interfaces = list(interfaces)
        self.addresses = list(addresses) or self.interfaces or local_ipv4_addresses()
        if not self.addresses:
            raise OSError("no IPv4 address to advertise; pass --interface or --host")
        base = name or f"coinfer-{socket.gethostname()}-{port}"
        self.name = f"{base}.{SERVICE_TYPE}"
        self._azc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._pending: asyncio.Task[None] | None = None
        self._last_txt: dict[str, str] = {}

    def _make_info(self) -> AsyncServiceInfo:
        self._last_txt = self._txt()
        return AsyncServiceInfo(
            SERVICE_TYPE,
            self.name,
            addresses=[socket.inet_aton(a) for a in self.addresses],
            port=self.port,
            properties=self._last_txt,
            server=f"{self.name.split('.')[0]}.local.",
        )

    async def __aenter__(self) -> EdgeAdvertiser:
        self._azc = AsyncZeroconf(
            interfaces=self.interfaces or InterfaceChoice.All, ip_version=IPVersion.V4Only
        )
        self._info = self._make_info()
        # The call returns once probing started; the returned task ends when the records are
        # announced, and only then can a device find us.
        await (await self._azc.async_register_service(self._info, allow_name_change=True))
        self.name = self._info.name
        log.info("advertising %s on %s", self.name, ", ".join(self.addresses))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.async_close()

    async def async_close(self) -> None:
        """Unregister and close. Idempotent."""
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending
            self._pending = None
        azc, self._azc = self._azc, None
        if azc is not None:
            with contextlib.suppress(Exception):
                await azc.async_unregister_all_services()
            await azc.async_close()

    def async_load_changed(self) -> None:
        """Schedule a TXT refresh (runs on the event loop; debounced)."""
        if self._azc is None or (self._pending is not None and not self._pending.done()):
            return
        self._pending = asyncio.get_running_loop().create_task(self._refresh())

    async def async_update_now(self) -> None:
        """Refresh the TXT record now, past the debounce, and return once it is announced."""
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending
            self._pending = None
        if self._azc is None:
            return
        self._info = self._make_info()
        await (await self._azc.async_update_service(self._info))

    async def _refresh(self) -> None:
        await asyncio.sleep(UPDATE_DEBOUNCE_S)
        if self._azc is None or self._txt() == self._last_txt:
            return
        self._info = self._make_info()
        await (await self._azc.async_update_service(self._info))
