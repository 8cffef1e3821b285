"""The backend's import structure: packages along its two data paths, no import cycles, no import against the layers.

Read from the source with :mod:`ast` (every import counts: at module level, inside functions and under
``TYPE_CHECKING``), so a cycle or an upward import added later fails here. Layers, lowest first:

    common, settings  <  ls  <  images, feedback  <  serve, learning  <  app (and the fit_job shim)  <  wsgi, __main__

A module imports only from lower layers or from its own package; packages on one layer never import each other.
``backend.settings`` may be imported by any module and imports no backend module itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "backend"

PACKAGES = {"common": 0, "ls": 1, "images": 2, "feedback": 2, "serve": 3, "learning": 3}
# The composition root (and the old RQ job path, an alias of the learning path's job), then the entry points on it.
TOP = {"backend.app": 4, "backend.fit_job": 4, "backend.wsgi": 5, "backend.__main__": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def backend_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(BACKEND.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> tuple[set[str], list[str]]:
    """``(backend modules that ``path`` imports, relative imports written in it)``."""
    found, relative = set(), []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "backend" or a.name.startswith("backend.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                relative.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''}")
                continue
            module = node.module or ""
            if module == "backend" or module.startswith("backend."):
                for alias in node.names:  # `from backend.learning import job` imports the module backend.learning.job
                    found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
    return found, relative


def import_graph() -> dict[str, set[str]]:
    modules = backend_modules()
    return {name: imports_of(path, set(modules))[0] for name, path in modules.items()}


def place(name: str) -> tuple[int, str] | None:
    """``(layer, package)`` of a backend module, None for one the layering does not know."""
    if name in ("backend", "backend.settings"):
        return 0, name
    if name in TOP:
        return TOP[name], name
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in PACKAGES:
        return PACKAGES[parts[1]], parts[1]
    return None


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for importer, imported in sorted(graph.items()):
        for target in sorted(imported):
            if target == "backend.settings" and importer != "backend.settings":
                continue
            (la, pa), (lb, pb) = place(importer), place(target)
            if pa != pb and lb >= la:
                out.append(f"{importer} (layer {la}) imports {target} (layer {lb})")
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_every_backend_module_has_a_layer() -> None:
    assert [name for name in backend_modules() if place(name) is None] == []


def test_imports_are_absolute() -> None:
    known = set(backend_modules())
    relative = {name: rel for name, path in backend_modules().items() if (rel := imports_of(path, known)[1])}
    assert relative == {}


def test_no_module_imports_against_the_layers() -> None:
    assert violations(import_graph()) == []


def test_there_are_no_import_cycles() -> None:
    assert find_cycles(import_graph()) == []


def test_the_checks_catch_what_they_are_for() -> None:
    assert find_cycles({"backend.learning.a": {"backend.learning.b"}, "backend.learning.b": {"backend.learning.a"}})
    assert find_cycles({"backend.common.a": {"backend.common.a"}})
    assert violations({"backend.serve.parse": {"backend.learning.webhooks"}})  # sideways
    assert violations({"backend.ls.ids": {"backend.images.sources"}})  # upward
    assert violations({"backend.settings": {"backend.common.errors"}})  # settings stays at the bottom
    assert not violations({"backend.learning.job": {"backend.images.loader", "backend.settings"}})


def test_the_hidden_cycles_stay_gone() -> None:
    graph = import_graph()
    assert "backend.learning.manager" not in graph["backend.learning.runners"]
    assert not {m for m in graph["backend.learning.webhooks"] if m.startswith("backend.serve")}
    assert graph["backend.settings"] == set()


def test_the_fit_job_imports_neither_redis_nor_rq() -> None:
    # Every job process imports it: the queue's clients belong to the RQ worker and the app only.
    code = "import backend.learning.job, sys; assert 'rq' not in sys.modules and 'redis' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_rq_jobs_queued_under_the_old_function_path_still_resolve() -> None:
    from rq.utils import import_attribute

    from backend.learning.job import run_queued
    from backend.learning.queue import JOB_FUNCTION

    assert import_attribute("backend.fit_job.run_queued") is run_queued  # queued before the split into packages
    assert import_attribute(JOB_FUNCTION) is run_queued
    tree = ast.parse((BACKEND / "fit_job.py").read_text())
    assert [type(n).__name__ for n in tree.body] == ["Expr", "ImportFrom", "Assign"]  # docstring, import, __all__
