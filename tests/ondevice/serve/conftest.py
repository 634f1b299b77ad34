"""Fixtures of the ``ondevice serve`` tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _edge import EdgeProc, edge_server

DELAY_MS = 20  # per edge frame: a 400-token stretch run to its end takes 8 s or more


@pytest.fixture(scope="module")
def slow_edge(fixture_models: tuple[Path, Path]) -> Iterator[EdgeProc]:
    """An edge on the fixture target that waits DELAY_MS before every frame it sends, so that
    a long generation lasts long enough to act during it (however fast the machine)."""
    with edge_server(fixture_models[0], "--n-ctx", "1024",
                     "--emulate-delay-ms", str(DELAY_MS)) as e:
        yield e
