"""The lotto package has no import cycle, counting imports inside functions too (a lazy import
only hides a cycle until the function runs). Static: parses lotto/*.py with ast, ~50 ms."""

from __future__ import annotations

import ast
from pathlib import Path

import lotto

PACKAGE = Path(lotto.__file__).parent


def lotto_imports(path: Path) -> set[str]:
    """The lotto modules `path` imports anywhere in its body, by module name (lotto.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lotto.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "lotto":  # from lotto import io, masks
                found |= {f"lotto.{alias.name}" for alias in node.names}
            elif node.module.startswith("lotto."):
                found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {f"lotto.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name: lotto_imports(path) & set(modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first = last), or None: depth-first search."""
    state: dict[str, str] = {}  # "open" while on the stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"lotto.model_facts", "lotto.train", "lotto.vmap"} <= set(graph)
    assert "lotto.vmap" in graph["lotto.model_facts"]  # the walk sees imports inside functions
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_find_cycle_finds_one():
    """The checker itself can fail: spec -> vmap -> train -> spec, the cycle this test removed."""
    graph = {"spec": {"vmap"}, "vmap": {"train"}, "train": {"spec"}, "io": set()}
    assert find_cycle(graph) == ["spec", "vmap", "train", "spec"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
