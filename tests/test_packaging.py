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
    assert not bad, "\n".join(bad)
    # every folder of modules is a regular package, else find_packages leaves it out of the wheel
    folders = {f.parent for f in (REPO / "artextract").rglob("*.py")}
    missing = sorted(str(d.relative_to(REPO)) for d in folders if not (d / "__init__.py").exists())
    assert not missing, f"folders without __init__.py (not in the wheel): {missing}"


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


# Third-party packages whose import costs seconds or needs a runtime (a GPU stack, a cluster, a server):
# the only reason a module may import one of our modules inside a function.
HEAVY = {"torch", "torchvision", "ray", "faiss", "onnxruntime", "cv2", "facenet_pytorch", "uvicorn", "fastapi",
         "matplotlib", "skimage", "sklearn"}


def _imports(path: Path, modules: set[str], top_only: bool) -> set[str]:
    """Modules ``path`` imports: ours resolved to a module file (at the top: with the packages on the
    way, whose ``__init__`` runs too), third-party ones by their top-level name; ``top_only``:
    module-level statements only."""
    def resolve(name: str) -> set[str]:
        parts = name.split(".")
        out = [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules]
        return set(out) if top_only else set(out[-1:])
    tree = ast.parse(path.read_text(), str(path))
    nodes = []
    if top_only:  # module-level statements, into if/try blocks but not into functions or classes
        todo = list(tree.body)
        while todo:
            n = todo.pop()
            nodes.append(n)
            if isinstance(n, (ast.If, ast.Try)):
                todo += n.body + n.orelse + getattr(n, "finalbody", []) + [s for h in getattr(n, "handlers", [])
                                                                            for s in h.body]
    else:
        nodes = list(ast.walk(tree))
    found = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom) and not n.level and n.module:
            if n.module.startswith("artextract"):
                for a in n.names:  # ``from pkg import module`` names the module, else pkg itself
                    found |= resolve(f"{n.module}.{a.name}") if f"{n.module}.{a.name}" in modules else \
                        resolve(n.module)
            else:
                found.add(n.module.split(".")[0])
        elif isinstance(n, ast.Import):
            for a in n.names:
                found |= resolve(a.name) if a.name.startswith("artextract") else {a.name.split(".")[0]}
    return found


def test_function_local_imports_of_our_modules_only_guard_heavy_dependencies():
    """A module imports our modules at the top, so its dependencies can be read off its first lines;
    inside a function only where that import would pull a heavy dependency (HEAVY) the module does
    not already load -- measured on the import graph, not taken from comments."""
    files = {".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): f
             for f in (REPO / "artextract").rglob("*.py")}
    mods = set(files)
    top = {m: _imports(f, mods, top_only=True) for m, f in files.items()}
    memo: dict[str, set[str]] = {}

    def loads(m: str) -> set[str]:
        """Third-party top-level names importing ``m`` loads (its own and its packages' imports; the
        graph has no cycles, test above)."""
        if m not in memo:
            memo[m] = set()  # a package's __init__ importing its own submodule: no recursion
            memo[m] = set().union(*(loads(d) if d in mods else {d} for d in top.get(m, ()) if d != m))
        return memo[m]

    bad = []
    for m, f in files.items():
        mine = loads(m) | {x for p in mods if m.startswith(p + ".") for x in loads(p)}
        local = _imports(f, mods, top_only=False) - top[m]  # the module each import names
        for d in sorted(x for x in local if x in mods and not m.startswith(x + ".") and x != m):
            if not (loads(d) & HEAVY) - mine:
                bad.append(f"{m} imports {d} inside a function, but {d} loads nothing heavy {m} does not "
                           f"already load: import it at the top")
    assert not bad, "\n".join(bad)
