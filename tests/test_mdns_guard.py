"""The network-rule guard of tests/conftest.py reads the kernel's real membership tables."""

from __future__ import annotations

import socket
import struct
import time

from _mdns_guard import MdnsWatch, mdns_memberships

IGMP_SAMPLE = """Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter
1\tlo        :     2      V3
\t\t\t\tFB0000E0     1 0:00000000\t\t0
\t\t\t\t010000E0     1 0:00000000\t\t0
4\teth0      :     2      V3
\t\t\t\tFB0000E0     2 0:00000000\t\t0
\t\t\t\t010000E0     1 0:00000000\t\t0
"""
IGMP6_SAMPLE = (
    "1    lo              ff020000000000000000000000000001     1 0000000C 0\n"
    "2    eth0            ff0200000000000000000000000000fb     1 00000004 0\n"
)


def test_parses_both_tables() -> None:
    assert mdns_memberships(IGMP_SAMPLE, IGMP6_SAMPLE) == {"lo": 1, "eth0": 3}
    assert mdns_memberships("", "") == {}


def test_sees_a_real_join_on_loopback_and_lets_it_pass() -> None:
    """Join 224.0.0.251 on lo with a real socket: the table shows it, the guard allows it."""
    before = mdns_memberships().get("lo", 0)
    watch = MdnsWatch().start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        mreq = struct.pack("4s4s", socket.inet_aton("224.0.0.251"), socket.inet_aton("127.0.0.1"))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        deadline = time.monotonic() + 5
        while mdns_memberships().get("lo", 0) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mdns_memberships().get("lo", 0) == before + 1
    finally:
        sock.close()
    assert watch.stop() == {}
