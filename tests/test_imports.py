"""The package's modules import each other without circles, counting imports inside functions too."""

from __future__ import annotations

import ast

from sharebench.paths import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "src" / "sharebench"


def module_name(path) -> str:
    parts = ["sharebench", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module's imports of the package's own modules; importing a.b.c also runs the packages a.b above it."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        edges = set()
        for target in targets:
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):  # the package's root runs first for every module alike
                above = ".".join(parts[:depth])
                if above in modules and above != name and not name.startswith(above + "."):
                    edges.add(above)
        graph[name] = edges
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target] if target in path else [node, target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_graph_sees_lazy_imports():
    graph = imports()
    assert "sharebench.zero_shot" in graph["sharebench.tasks"]  # imported inside run_task
    assert "sharebench.plots" in graph["sharebench.collect"]


def test_no_import_circles():
    assert cycle(imports()) is None, " → ".join(cycle(imports()))


def test_a_circle_is_found():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_private_name_of_another_object_or_module_is_used():
    """The suite uses frameworks through their public APIs (issue 47): no `x._name` but on `self` or `cls` (a
    class's own state), and no import from a private module (`torch._…`, `lightning.…._…`)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    found.append(f"{path.name}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and any(
                p.startswith("_") and not p.startswith("__") for p in (node.module or "").split(".")
            ):
                found.append(f"{path.name}:{node.lineno} from {node.module}")
    assert found == []
