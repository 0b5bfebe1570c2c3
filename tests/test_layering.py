"""The package's import graph: no cycles, imports point down the layers, and nothing outside factory/bench
imports the benchmarks.

Every `import` and `from ... import` statement counts, at module level or inside a function (a lazy
import hides a cycle from Python, not from the design). Names held as strings and imported through a
table (factory.cli's command table, the recipe registry) are not import statements and do not count.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Module name -> file, for every module of the factory package under `root`."""
    found = {}
    for path in sorted((root / "factory").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The factory modules that `name` (at `path`) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = name.split(".")
                package = package[:len(package) - node.level + (1 if is_package else 0)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from a.b import c` imports module a.b.c when there is one, else a name from a.b.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name-less path: its deepest module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    found = modules(root)
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_import_graph_sees_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "factory"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py", "sub/b.py"):
        (package / name).write_text("")
    (package / "sub" / "a.py").write_text("def f():\n    from . import b\n    from factory import sub\n")
    assert import_graph(tmp_path)["factory.sub.a"] == {"factory.sub.b", "factory.sub"}


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_benchmarks_import_the_benchmarks():
    offenders = sorted(f"{name} imports {target}" for name, targets in import_graph().items()
                       if not name.startswith("factory.bench")
                       for target in targets if target == "factory.bench" or target.startswith("factory.bench."))
    assert not offenders, "; ".join(offenders)


# Dependencies point one way: cli/jobs -> train/produce/evaluate -> models/data/stream -> the base modules.
LAYERS = (
    ("factory.cli", "factory.demo", "factory.__main__", "factory.bench"),
    ("factory.train", "factory.produce", "factory.evaluate"),
    ("factory.models", "factory.data", "factory.stream"),
)


def layer_of(module: str) -> int:
    """0 for the top layer ... len(LAYERS) for the base modules (storage, config, validation, ...)."""
    for depth, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return depth
    return len(LAYERS)


def test_imports_point_down_the_layers():
    offenders = sorted(f"{name} imports {target}" for name, targets in import_graph().items()
                       for target in targets if layer_of(target) < layer_of(name))
    assert not offenders, "; ".join(offenders)
