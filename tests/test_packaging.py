"""The wheel is the product: no benchmark or test code in it, and nothing in it imports what only
benchmarks and tests install (moto, pytest, playwright) or the repo-root ``benchmarks`` package."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]
DEV_ONLY = {"moto", "pytest", "playwright", "benchmarks", "tests", "fixtures", "rayhead"}


def test_wheel_packages_hold_no_benchmark_or_test_code():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(REPO), include=cfg["include"])
    assert "artextract" in packages and not [p for p in packages if not p.startswith("artextract")]
    assert not [p for p in packages if "bench" in p or "test" in p]
    files = [f for p in packages for f in (REPO / p.replace(".", "/")).glob("*.py")]
    assert not [f for f in files if f.stem in ("fuzz", "conftest") or f.stem.startswith(("test_", "bench"))]
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{f.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in DEV_ONLY]
    assert not bad, bad


def _own_imports(path: Path, modules: set[str]) -> set[str]:
    """artextract modules ``path`` imports anywhere in it (function-local imports included)."""
    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("artextract"):
            found |= {resolve(f"{node.module}.{a.name}") for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names if a.name.startswith("artextract")}
    return found - {""}


def test_no_import_cycles_between_our_modules():
    """Module A imports B (at the top or inside a function) and B imports A, directly or around a
    longer loop: a cycle hidden by a function-local import is still one."""
    files = {".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): f
             for f in (REPO / "artextract").rglob("*.py")}
    graph = {m: _own_imports(f, set(files)) - {m} for m, f in files.items()}
    # a module's package __init__ re-exporting it is not a cycle of code: drop edges to parents
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
