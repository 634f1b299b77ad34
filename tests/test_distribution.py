"""What a wheel and a user outside this machine get: metadata, package data, extras, and no
pointer to a file outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="needs Python 3.11+ (tomllib)")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_with_its_file() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]


def test_every_package_data_pattern_matches_a_file() -> None:
    for package, patterns in PYPROJECT["tool"]["setuptools"]["package-data"].items():
        for pattern in patterns:
            assert list((REPO / package).glob(pattern)), f"{package}/{pattern} matches nothing"


def _extra(name: str) -> set[str]:
    """The distribution names an extra pulls in, self-references expanded."""
    out: set[str] = set()
    for req in PYPROJECT["project"]["optional-dependencies"][name]:
        m = re.fullmatch(r"coinfer\[([\w,-]+)\]", req)
        if m:
            for sub in m.group(1).split(","):
                out |= _extra(sub)
        else:
            out.add(re.split(r"[<>=!\[ ]", req)[0])
    return out


def test_the_llm_export_extra_has_no_torch() -> None:
    assert {"gguf", "llama-cpp-python"} <= _extra("export-llm")
    assert "torch" not in _extra("export-llm") and "torch" in _extra("export")
    assert _extra("dnn") == {"onnxruntime"} and _extra("pico") == {"mpremote"}


def test_nothing_points_outside_the_repository() -> None:
    bad = re.compile(r"/wor[k]/|\.\./share[d]/|\bDESIGN\.md\b")  # [k], [d]: no path here
    files = [REPO / "README.md", REPO / "Makefile", *REPO.glob("docs/*.md"),
             *(p for pkg in ("ondevice", "edge_server", "export", "hw")
               for p in (REPO / pkg).rglob("*") if p.suffix in (".py", ".json", ".md"))]
    hits = [f"{p.relative_to(REPO)}:{n}" for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert not hits, hits
    assert (REPO / "docs" / "hardware-profiles.md").is_file()


def _demo_extras() -> set[str]:
    """What `make demo` installs: the Makefile's DEMO_EXTRAS, expanded."""
    m = re.search(r"^DEMO_EXTRAS \?= (\S+)$", (REPO / "Makefile").read_text(), flags=re.M)
    assert m, "Makefile: no DEMO_EXTRAS"
    return set().union(*(_extra(name) for name in m.group(1).split(",")))


def test_the_demo_installs_what_the_readmes_examples_import() -> None:
    import sys

    own = {"ondevice", "edge_server", "export", "hw"}
    dist_of = {"openai": "openai", "numpy": "numpy", "aiohttp": "aiohttp"}  # import -> dist
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    imported = {m.group(1).split(".")[0] for b in blocks
                for m in re.finditer(r"^\s*(?:from|import) ([\w.]+)", b, flags=re.M)}
    assert {"openai", "ondevice"} <= imported
    third = imported - own - set(sys.stdlib_module_names)
    unknown = third - set(dist_of)
    assert not unknown, f"README imports {unknown}: add them to dist_of and an extra"
    core = {re.split(r"[<>=!\[ ]", r)[0] for r in PYPROJECT["project"]["dependencies"]}
    missing = {dist_of[name] for name in third} - _demo_extras() - core
    assert not missing, f"`make demo` does not install {missing}, which the README imports"
