"""Device and edge on two hosts (network namespaces joined by a veth pair, shaped by tc tbf):
discovery by multicast across the link, generation over it, RTT with injected delay."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _edge import Reference, edge_server
from _netns import NetnsUnavailable, check_available, two_hosts

pytestmark = pytest.mark.root

try:
    check_available()
except NetnsUnavailable as exc:
    pytest.skip(str(exc), allow_module_level=True)

DELAY_MS = 30.0


def test_discover_and_generate_across_a_shaped_link(fixture_models: tuple[Path, Path]) -> None:
    target, draft = fixture_models
    prompt, n = "two hosts talk", 32
    with two_hosts(rate_mbit=5) as (dev, edge_host), edge_server(
        target, "--emulate-delay-ms", str(DELAY_MS), advertise=True, host=edge_host.ip,
        prefix=edge_host.prefix,
    ) as edge:
        assert edge.url == f"http://{edge_host.ip}:{edge.url.rsplit(':', 1)[1]}"
        found = dev.run(sys.executable, "-m", "ondevice.cli", "discover", "--interface", dev.ip,
                        "--timeout", "2", "--json", timeout=60)
        assert found.returncode == 0, found.stderr
        edges = json.loads(found.stdout.strip().splitlines()[-1])["edges"]
        assert [e["url"] for e in edges] == [edge.url]
        assert edges[0]["rtt_ms"] >= DELAY_MS  # the injected delay shows in the RTT
        done = dev.run(sys.executable, "-m", "ondevice.cli", "generate", "--draft", str(draft),
                       "--interface", dev.ip, "--prompt", prompt, "--max-tokens", str(n),
                       "--policy", "fixed", "--gamma", "4", "--n-ctx", "512", "--json",
                       timeout=120)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["edge"] == edge.url and not report["degraded"]
    assert report["mean_rtt_ms"] >= DELAY_MS
    ref = Reference(target)
    try:
        assert report["tokens"] == ref.greedy(prompt, n)
    finally:
        ref.close()
