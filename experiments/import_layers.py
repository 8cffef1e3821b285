"""Count import cycles and upward imports among the project's modules (issue 40's before/after table).

Every ``import`` / ``from ... import`` of a project module counts, wherever it stands (module level, inside a
function, under ``TYPE_CHECKING``): a cycle hidden behind ``TYPE_CHECKING`` or a function-level import is still a
cycle for a reader. A module's layer comes from :data:`LAYERS` by its new path, or for a tree from before the
move (flat ``backend/`` and ``model/``) from :data:`OLD_NAMES`, so the same rules score both trees.

    python experiments/import_layers.py [ROOT]   # one JSON line: modules, cycles, upward and sideways imports
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

#: Layer of each package prefix (lower number = lower layer); a module may import only from its own layer or lower.
#: ``model``'s library is the lowest; evaluation sits above it and training above evaluation (training reads the
#: evaluation datasets for its leak guard); the backend sits on top of the model and is layered in itself.
LAYERS = {
    "model": 0, "model.evaluation": 1, "model.training": 2,
    "backend.settings": 3, "backend.common": 3, "backend.ls": 4, "backend.images": 5, "backend.feedback": 5,
    "backend.serve": 6, "backend.learning": 6, "backend.fit_job": 6,
    "backend.app": 7, "backend.wsgi": 8, "backend.__main__": 8, "backend": 3,
}
#: Where the flat modules of the old tree went (by name), to score the old tree by the same layers.
OLD_NAMES = {
    **{f"model.{n}": f"model.training.{n}" for n in ("train", "train_data", "train_step", "sampling", "losses",
                                                      "ema", "finetune", "leak_guard", "run_state", "validation",
                                                      "plot_training")},
    **{f"model.{n}": f"model.evaluation.{n}" for n in ("evaluate", "datasets", "baselines", "plot_curves")},
    **{f"backend.{n}": f"backend.common.{n}" for n in ("errors", "atomic", "redis_client")},
    **{f"backend.{n}": f"backend.ls.{n}" for n in ("rle", "labelconfig")},
    **{f"backend.{n}": f"backend.images.{n}" for n in ("images", "ls_auth", "safe_http")},
    **{f"backend.{n}": f"backend.feedback.{n}" for n in ("feedback_store", "redis_feedback", "state_cache")},
    **{f"backend.{n}": f"backend.serve.{n}" for n in ("service", "parse", "inference_worker", "cpu_share")},
    **{f"backend.{n}": f"backend.learning.{n}" for n in ("webhooks", "webhook_service", "training_store", "fit",
                                                          "fit_runners", "fit_job", "fit_gate", "fit_queue",
                                                          "fit_worker", "fit_state", "versions")},
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules that ``path`` imports (resolving relative imports against ``name``)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def layer(name: str) -> int | None:
    name = OLD_NAMES.get(name, name)
    best = None
    for prefix, lvl in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, lvl)
    return best[1] if best else None


def package(name: str) -> str:
    """The layered package a module belongs to (its :data:`LAYERS` prefix)."""
    name = OLD_NAMES.get(name, name)
    return max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len, default=name)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other (each as a path back to its start): the suite's own finder,
    ``find_cycles`` of tests/test_layers.py, loaded from its file so that there is one cycle finder."""
    spec = importlib.util.spec_from_file_location("test_layers", Path(__file__).resolve().parents[1] / "tests"
                                                  / "test_layers.py")
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    return layers.find_cycles(graph)


def main(argv: list[str] | None = None) -> dict:
    root = Path((argv or sys.argv[1:] or ["."])[0])
    files = {module_name(root, p): p for pkg in ("model", "backend") for p in (root / pkg).rglob("*.py")}
    known = set(files)
    graph = {name: imports_of(path, name, known) for name, path in files.items()}
    # A package's __init__ importing its own modules is how a package exports them, not a cycle.
    graph = {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in graph.items()}
    upward = sorted(f"{a} -> {b}" for a, ts in graph.items() for b in ts
                    if layer(a) is not None and layer(b) is not None and layer(b) > layer(a))
    # Sideways: between two different packages of the same layer (serve and learning, images and feedback).
    sideways = sorted(f"{a} -> {b}" for a, ts in graph.items() for b in ts
                      if layer(a) is not None and layer(a) == layer(b) and package(a) != package(b)
                      and not package(b).startswith("backend.settings") and package(b) != "backend")
    found = cycles(graph)
    result = {"root": str(root), "modules": len(files), "cycles": len(found), "cycle_members": found,
              "upward_imports": len(upward), "upward": upward, "sideways_imports": len(sideways),
              "sideways": sideways}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
