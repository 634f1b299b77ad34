"""Fixtures of the device tests: a running edge-server on the fixture target."""

from __future__ import annotations

from pathlib import Path

import pytest
from _edge import EdgeProc, edge_server


@pytest.fixture(scope="module")
def edge(fixture_models: tuple[Path, Path]) -> EdgeProc:
    """A real ``edge-server`` process serving the fixture target on 127.0.0.1."""
    with edge_server(fixture_models[0], "--n-ctx", "1024") as e:
        yield e
