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
