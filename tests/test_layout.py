"""flowlib/README.md's rule, checked on every import in the package: imports run down, never up, never in a circle.

Levels, from the bottom: ``flowlib.files`` (0), the layers at the top of the package (1), ``datasets`` (2),
``training`` (3), ``book`` (4). A module may import only from its own level or below; the layers may not
import ``files`` either (they write nothing). Imports are read from the source with `ast`, including those
inside functions, so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flowlib"
LEVELS = {"files": 0, "": 1, "datasets": 2, "training": 3, "book": 4}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group(module: str) -> str:
    """``"files"``, ``""`` (a layer), ``"datasets"``, ``"training"`` or ``"book"`` for a flowlib module name."""
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    return parts[1] if parts[1] in LEVELS else ""


def imports_of(path: Path) -> set[str]:
    """The flowlib modules that ``path`` imports (absolute names; ``from .x import y`` resolved)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for name in candidates:
            if name.startswith("flowlib") and _exists(name):
                found.add(name)
    found.discard(me)
    return found


def _exists(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").exists() or (PACKAGE.parent / rel / "__init__.py").exists()


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_the_graph_is_read():
    # Guards the test itself: known edges are found, relative and lazy ones included.
    assert "flowlib.flow" in GRAPH["flowlib.coupling"]
    assert "flowlib.training.fit" in GRAPH["flowlib.training.train"]
    assert "flowlib.files" in GRAPH["flowlib.training.checkpoint"]
    assert "flowlib.datasets.mnist" in GRAPH["flowlib.training.config"]  # imported inside a function


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_down(name):
    if name == "flowlib":  # the package's face re-exports the layers
        allowed = {"", "files"}
    else:
        allowed = {g for g, level in LEVELS.items() if level <= LEVELS[group(name)]}
        if group(name) == "":
            allowed.discard("files")
    up = sorted(m for m in GRAPH[name] if group(m) not in allowed)
    assert not up, f"{name} imports {up}, above its level ({group(name) or 'layers'})"


def test_no_circle_of_imports():
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in GRAPH.get(node, ()):
            if nxt.rpartition(".")[0] == node or node == "flowlib":  # a package imports its own modules
                continue
            if state.get(nxt) == 1:
                raise AssertionError(f"import circle: {' -> '.join(path + [nxt])}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [name])


def test_only_the_command_runs_the_command_line():
    importers = sorted(name for name, deps in GRAPH.items() if "flowlib.training.cli" in deps)
    assert importers == ["flowlib.training.__main__"]
