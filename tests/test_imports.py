"""The package's imports, read statically with ast (imports inside functions count too: a lazy
import only hides a dependency until the function runs), ~50 ms:

- no import cycle anywhere in lotto;
- layers: lotto.core < lotto.methods < lotto.outputs < the jobs (modules at lotto/'s top: cli,
  rounds, ...). A module imports only its own layer and the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import lotto

PACKAGE = Path(lotto.__file__).parent
LAYERS = ("core", "methods", "outputs", "jobs")  # lowest first


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lotto_imports(path: Path, modules: set[str]) -> set[str]:
    """The lotto modules `path` imports anywhere in its body (`from lotto.core import io` counts
    as lotto.core.io; a name that is no module, as its package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lotto.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "lotto" or node.module.startswith("lotto."):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
    return found - {"lotto"}  # the package root holds only __version__


def import_graph() -> dict[str, set[str]]:
    """Every module of lotto (subpackages' __init__ included) -> the lotto modules it imports."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    paths.pop("lotto", None)
    return {name: lotto_imports(path, set(paths)) & set(paths) for name, path in paths.items()}


def layer(module: str) -> str:
    """lotto.core.x -> core, lotto.methods.x -> methods, lotto.outputs.x -> outputs; the modules
    at lotto/'s top level are the jobs."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or parts[1] in LAYERS[:-1] else "jobs"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a higher layer, as 'importer (layer) -> imported (layer)'."""
    return [f"{source} ({layer(source)}) -> {target} ({layer(target)})"
            for source, targets in sorted(graph.items()) for target in sorted(targets)
            if LAYERS.index(layer(target)) > LAYERS.index(layer(source))]


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
    assert {"lotto.core.model_facts", "lotto.core.train", "lotto.core.vmap"} <= set(graph)
    assert "lotto.core.vmap" in graph["lotto.core.model_facts"]  # the walk sees imports inside functions
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_find_cycle_finds_one():
    """The checker itself can fail: spec -> vmap -> train -> spec, the cycle this test removed."""
    graph = {"spec": {"vmap"}, "vmap": {"train"}, "train": {"spec"}, "io": set()}
    assert find_cycle(graph) == ["spec", "vmap", "train", "spec"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_is_in_a_layer_and_each_layer_holds_modules():
    graph = import_graph()
    assert {layer(m) for m in graph} == set(LAYERS)
    nested = [m for m in graph if m.count(".") > 2]
    assert not nested, f"modules below a layer's folder: {nested}; the layers are one level deep"
    assert "lotto.core.errors" in graph["lotto.core.io"]  # from lotto.core.errors import ... counts


def test_dependencies_point_down_the_layers():
    upward = upward_imports(import_graph())
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_upward_imports_are_found():
    """The checker itself can fail: a core module importing a method, a method importing a job."""
    graph = {"lotto.core.spec": {"lotto.methods.structured", "lotto.core.io"},
             "lotto.methods.earlybird": {"lotto.rounds", "lotto.core.train"},
             "lotto.outputs.report": {"lotto.methods.eb_plan"}, "lotto.rounds": {"lotto.outputs.status"}}
    assert upward_imports(graph) == [
        "lotto.core.spec (core) -> lotto.methods.structured (methods)",
        "lotto.methods.earlybird (methods) -> lotto.rounds (jobs)",
    ]
