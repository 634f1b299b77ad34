"""The package layout's import rules, read from the source with `ast` (nothing is imported).

1. No module of ``ondevice`` imports ``export`` (at module level or inside a function).
2. ``hw`` imports nothing of ``ondevice``, ``edge_server`` or ``export``.
3. ``edge_server`` and ``export`` import from ``ondevice`` only its shared part,
   ``ondevice.common``.
4. ``ondevice.common`` imports only the standard library, numpy, msgpack, llama-cpp-python,
   onnxruntime and itself (``sample_photos`` may also read Pillow, scikit-learn and scikit-image
   inside its functions: the photos they ship; ``http_guard``, the connection guards of the two
   aiohttp servers, the edge and ``ondevice serve``, may import aiohttp, a base dependency;
   ``metrics_http``, their ``/metrics`` route, aiohttp and prometheus_client, base too).
5. No import cycle among the modules of the four packages. Every import counts, also one
   inside a function; only imports under ``if TYPE_CHECKING:`` (never executed) do not.

The checker runs on the real tree and on small trees written here that break each rule, so
a checker that saw nothing would fail too.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ondevice", "edge_server", "export", "hw")
SHARED = "ondevice.common"
SHARED_THIRD_PARTY = {"numpy", "msgpack", "llama_cpp", "onnxruntime"}
# module -> third-party packages it may import inside functions only
SHARED_LAZY_EXTRA = {f"{SHARED}.sample_photos": {"PIL", "sklearn", "skimage"}}
# module -> third-party packages it may import at module level too
SHARED_MODULE_EXTRA = {f"{SHARED}.http_guard": {"aiohttp"},
                       f"{SHARED}.metrics_http": {"aiohttp", "prometheus_client"}}


@dataclass(frozen=True)
class Import:
    """One import statement's target as written (absolute), and where it stands."""

    source: str  # importing module
    target: str  # "a.b" for `import a.b`, "a.b.c" or "a.b" for `from a.b import c`
    lazy: bool  # inside a function or method
    line: int


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages under ``root``."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every executed import of one module, resolved to a known module where one matches."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, lazy)
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend(Import(name, a.name, lazy, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    out.append(Import(name, sub if sub in known else base, lazy, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return out


def _top(target: str) -> str:
    return target.split(".")[0]


def _under(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    """Every broken rule (1-4) in the tree under ``root``, one line each."""
    mods = modules(root)
    known = set(mods)
    out = []
    for name, path in mods.items():
        for imp in imports_of(name, path, known):
            where = f"{path.relative_to(root)}:{imp.line} imports {imp.target}"
            top = _top(imp.target)
            if _under(name, "ondevice") and top == "export":
                out.append(f"{where}: ondevice must not import export")
            if _under(name, "hw") and top in ("ondevice", "edge_server", "export"):
                out.append(f"{where}: hw must not import {top}")
            if (_top(name) in ("edge_server", "export") and top == "ondevice"
                    and not _under(imp.target, SHARED)):
                out.append(f"{where}: {_top(name)} may import only {SHARED} from ondevice")
            if _under(name, SHARED):
                lazy_ok = SHARED_LAZY_EXTRA.get(name, set()) if imp.lazy else set()
                lazy_ok = lazy_ok | SHARED_MODULE_EXTRA.get(name, set())
                ok = (_under(imp.target, SHARED) or top in sys.stdlib_module_names
                      or top in SHARED_THIRD_PARTY or top in lazy_ok or top == "__future__")
                if not ok:
                    out.append(f"{where}: {SHARED} may import only the standard library, "
                               f"{', '.join(sorted(SHARED_THIRD_PARTY))} and itself")
    return out


def cycles(root: Path) -> list[list[str]]:
    """The import cycles among the tree's modules: strongly connected components of more than
    one module, or a module importing itself (Tarjan's algorithm)."""
    mods = modules(root)
    known = set(mods)
    graph = {n: sorted({i.target for i in imports_of(n, p, known) if i.target in known})
             for n, p in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in graph:
            if v not in index:
                strongconnect(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_real_tree_keeps_the_import_rules() -> None:
    assert violations(REPO) == []


def test_real_tree_has_no_import_cycle() -> None:
    assert cycles(REPO) == []


def test_shared_part_is_what_edge_and_export_use() -> None:
    """The shared part exists and the edge and the export really use it (the rule is not
    vacuous), and ondevice's own __init__ stays free of heavy imports."""
    mods = modules(REPO)
    known = set(mods)
    used = {i.target for n, p in mods.items() if _top(n) in ("edge_server", "export")
            for i in imports_of(n, p, known) if _top(i.target) == "ondevice"}
    assert {f"{SHARED}.wire", f"{SHARED}.llama_runtime", f"{SHARED}.speculative"} <= used
    for pkg in ("ondevice", SHARED):  # importing them runs no import beyond the stdlib
        eager = [i.target for i in imports_of(pkg, mods[pkg], known) if not i.lazy]
        assert all(_top(x) in sys.stdlib_module_names or x == "__future__" for x in eager), eager


def _write(root: Path, files: dict[str, str]) -> Path:
    for pkg in PACKAGES:
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").touch()
    (root / "ondevice" / "common").mkdir(exist_ok=True)
    (root / "ondevice" / "common" / "__init__.py").touch()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(("files", "expect"), [
    ({"ondevice/demo.py": "def f():\n    from export import quantize_gguf\n"},
     "ondevice must not import export"),
    ({"hw/_x.py": "from ondevice.common import wire\n"}, "hw must not import ondevice"),
    ({"hw/_x.py": "import edge_server.app\n"}, "hw must not import edge_server"),
    ({"edge_server/app.py": "from ondevice.llm.generate import x\n"},
     "edge_server may import only ondevice.common"),
    ({"export/_q.py": "from ondevice import cli\n"}, "export may import only ondevice.common"),
    ({"ondevice/common/wire.py": "import aiohttp\n"}, "ondevice.common may import only"),
    ({"ondevice/common/http_guard.py": "import zeroconf\n"}, "ondevice.common may import only"),
    ({"ondevice/common/wire.py": "from ondevice.llm import gelato\n"},
     "ondevice.common may import only"),
    ({"ondevice/common/sample_photos.py": "from PIL import Image\n"},
     "ondevice.common may import only"),
])
def test_checker_sees_each_broken_rule(tmp_path: Path, files: dict[str, str], expect: str) -> None:
    found = violations(_write(tmp_path, files))
    assert any(expect in line for line in found), found


def test_checker_allows_what_the_rules_allow(tmp_path: Path) -> None:
    root = _write(tmp_path, {
        "ondevice/common/sample_photos.py": "import numpy\ndef f():\n    from PIL import Image\n",
        "ondevice/common/wire.py": "import msgpack, json\nfrom ondevice.common import files\n",
        "ondevice/common/files.py": "import os\n",
        "edge_server/app.py": "from ondevice.common.wire import x\n",
        "ondevice/llm.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                           "    import export\n",
    })
    assert violations(root) == []


def test_checker_sees_cycles_also_through_lazy_imports(tmp_path: Path) -> None:
    root = _write(tmp_path, {
        "ondevice/cli.py": "def main():\n    from ondevice import demo\n",
        "ondevice/demo.py": "from ondevice.cli import main\n",
        "hw/_radio.py": "def f():\n    from hw._wifi import W\n",
        "hw/_wifi.py": "from hw._radio import Channel\n",
        "hw/_meter.py": "from hw._types import X\n",
        "hw/_types.py": "X = 1\n",
    })
    assert sorted(cycles(root)) == [["hw._radio", "hw._wifi"], ["ondevice.cli", "ondevice.demo"]]
