"""Two hosts on one machine: network namespaces joined by a veth pair, shaped with tc tbf.

Needs root (CI runs as root); ``two_hosts`` raises ``NetnsUnavailable`` with the reason
elsewhere, so tests can skip naming what is missing and ``ondevice bench ahead`` can fall back
to loopback saying why. The namespaces, and with them the veth pair and its qdiscs, are
deleted on exit even when the run fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


class NetnsUnavailable(RuntimeError):
    """What is missing for a two-host rig here (root, iproute2), in words."""


@dataclass(frozen=True)
class Host:
    netns: str
    ip: str
    dev: str

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.netns)

    def run(self, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *cmd], capture_output=True, text=True,
                              **kw)  # type: ignore[call-overload]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def check_available() -> None:
    if os.geteuid() != 0:
        raise NetnsUnavailable("needs root to create network namespaces")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetnsUnavailable(f"needs the `{tool}` command (iproute2)")


@contextlib.contextmanager
def two_hosts(*, rate_mbit: float | None = None, subnet: str = "10.231.77") -> Iterator[
        tuple[Host, Host]]:
    """Yield (device, edge) hosts on ``subnet``.1 and ``subnet``.2, link shaped to
    ``rate_mbit`` in both directions (tc tbf) when given."""
    check_available()
    tag = f"{os.getpid() % 100000}"
    dev = Host(f"coinfer-dev-{tag}", f"{subnet}.1", f"cfd{tag}")
    edge = Host(f"coinfer-edge-{tag}", f"{subnet}.2", f"cfe{tag}")
    made: list[str] = []
    try:
        for h in (dev, edge):
            _ip("netns", "add", h.netns)
            made.append(h.netns)
        _ip("link", "add", dev.dev, "type", "veth", "peer", "name", edge.dev)
        for h in (dev, edge):
            _ip("link", "set", h.dev, "netns", h.netns)
            _ip("-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", h.dev)
            _ip("-n", h.netns, "link", "set", h.dev, "up", "multicast", "on")
            _ip("-n", h.netns, "link", "set", "lo", "up")
            if rate_mbit:
                done = h.run("tc", "qdisc", "add", "dev", h.dev, "root", "tbf",
                             "rate", f"{rate_mbit}mbit", "burst", "32kbit", "latency", "100ms")
                if done.returncode != 0:
                    raise NetnsUnavailable(f"tc tbf failed: {done.stderr.strip()}")
        yield dev, edge
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextlib.contextmanager
def edge_hosts(n: int, *, subnet: str = "10.232") -> Iterator[list[Host]]:
    """Yield ``n`` hosts, each a network namespace joined to this (the root) namespace by a
    veth pair of its own: host ``k`` at ``subnet.k.2``, its root end ``subnet.k.1``, a /24 per
    pair, so the root namespace routes those addresses, and only those, to them (the fleet
    benchmark's edges; its devices stay in the root namespace). Everything is deleted on
    exit, even when the run fails: the namespaces (and with them the veth ends inside) and
    any root end left behind."""
    check_available()
    if not 1 <= n <= 250:
        raise ValueError(f"edge_hosts: 1..250 hosts, not {n}")
    tag = f"{os.getpid() % 100000}"
    hosts = [Host(f"coinfer-e{k}-{tag}", f"{subnet}.{k}.2", f"cfn{tag}x{k}") for k in range(n)]
    roots = [f"cfr{tag}x{k}" for k in range(n)]
    made: list[str] = []
    linked: list[str] = []
    try:
        for k, (h, root) in enumerate(zip(hosts, roots, strict=True)):
            _ip("netns", "add", h.netns)
            made.append(h.netns)
            _ip("link", "add", root, "type", "veth", "peer", "name", h.dev)
            linked.append(root)
            _ip("link", "set", h.dev, "netns", h.netns)
            _ip("addr", "add", f"{subnet}.{k}.1/24", "dev", root)
            _ip("link", "set", root, "up")
            _ip("-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", h.dev)
            _ip("-n", h.netns, "link", "set", h.dev, "up")
            _ip("-n", h.netns, "link", "set", "lo", "up")
        yield hosts
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for root in linked:  # gone with its peer's namespace, unless that step failed
            subprocess.run(["ip", "link", "del", root], capture_output=True)
