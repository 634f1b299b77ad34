"""A guard for the network rule: zeroconf in tests stays on loopback or in namespaces they made.

Zeroconf joins the mDNS group (224.0.0.251, ff02::fb) on every interface it listens on, so a
join shows in the kernel's per-interface membership tables, ``/proc/net/igmp`` and
``/proc/net/igmp6``. Those tables are per network namespace: a namespace a test made has its
own, so only joins on this namespace's real interfaces show here, from the test process or
any child it started (an ``edge-server``, an ``ondevice`` command). ``MdnsWatch`` polls the
tables while a test runs and reports every non-loopback interface whose mDNS membership count
rose above the count before the test.
"""

from __future__ import annotations

import threading
from pathlib import Path

IGMP = Path("/proc/net/igmp")
IGMP6 = Path("/proc/net/igmp6")
MDNS_V4 = "FB0000E0"  # 224.0.0.251 as /proc/net/igmp prints it (little-endian hex)
MDNS_V6 = "ff0200000000000000000000000000fb"
POLL_S = 0.02  # s; a zeroconf browse lasts a second or more


def mdns_memberships(igmp: str | None = None, igmp6: str | None = None) -> dict[str, int]:
    """Users of the mDNS group per interface, IPv4 and IPv6 together, from the two tables
    (read from /proc when not given; a missing table counts as empty)."""
    if igmp is None:
        igmp = IGMP.read_text() if IGMP.exists() else ""
    if igmp6 is None:
        igmp6 = IGMP6.read_text() if IGMP6.exists() else ""
    users: dict[str, int] = {}
    device = None
    for line in igmp.splitlines()[1:]:
        if not line.startswith("\t"):  # "1\tlo        :     1      V3"
            device = line.split("\t", 1)[1].split(":", 1)[0].strip() if "\t" in line else None
            continue
        fields = line.split()  # "\t\t\t\tFB0000E0     1 0:00000000\t\t0"
        if device and len(fields) >= 2 and fields[0].upper() == MDNS_V4:
            users[device] = users.get(device, 0) + int(fields[1])
    for line in igmp6.splitlines():  # "1    lo   ff0200000000000000000000000000fb     1 ..."
        fields = line.split()
        if len(fields) >= 4 and fields[2].lower() == MDNS_V6:
            users[fields[1]] = users.get(fields[1], 0) + int(fields[3])
    return users


class MdnsWatch:
    """Polls the membership tables in a thread between ``start()`` and ``stop()``; ``stop``
    returns ``{interface: highest users seen}`` for non-loopback interfaces above baseline."""

    def __init__(self) -> None:
        self._baseline = mdns_memberships()
        self._seen: dict[str, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="mdns-guard", daemon=True)

    def _poll(self) -> None:
        while not self._done.wait(POLL_S):
            for dev, n in mdns_memberships().items():
                if dev != "lo" and n > self._baseline.get(dev, 0):
                    self._seen[dev] = max(n, self._seen.get(dev, 0))

    def start(self) -> MdnsWatch:
        self._thread.start()
        return self

    def stop(self) -> dict[str, int]:
        self._done.set()
        self._thread.join()
        return dict(self._seen)
