"""The package's modules import each other without circles, counting imports inside functions too."""

from __future__ import annotations

import ast

from sharebench.paths import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "src" / "sharebench"


def module_name(path) -> str:
    parts = ["sharebench", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(type_checking: bool = True) -> dict[str, set[str]]:
    """Each module's imports of the package's own modules; importing a.b.c also runs the packages a.b above it.
    `type_checking=False` leaves out the imports under `if TYPE_CHECKING:`, which never run."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        tree = ast.parse(path.read_text())
        guards = [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
        skipped = set() if type_checking else {id(inner) for guard in guards for inner in ast.walk(guard)}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
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
    assert "sharebench.train.zero_shot" in graph["sharebench.train.tasks"]  # imported inside run_task
    assert "sharebench.report.plots" in graph["sharebench.report.collect"]


# The packages in layers, the entry points on top and the shared modules at the bottom: a package imports only
# those below it (docs/architecture.md draws it), so the report side reads records without what trains.
LAYERS = {
    "entry": ("sharebench", "__main__", "cli", "main", "board"),
    "train": ("train",),
    "run": ("run",),
    "model": ("model",),
    "data and report": ("data", "report"),
    "layers": ("layers",),
    "sharing": ("sharing",),
    "shared": ("schema", "tuning", "lock", "paths", "errors", "registry", "conf"),
}
RANK = {package: rank for rank, packages in enumerate(LAYERS.values()) for package in packages}


def test_packages_import_only_those_below_them():
    def package(module: str) -> str:
        return module.split(".")[1] if "." in module else module

    def allowed(module: str, target: str) -> bool:  # the entry points, and the shared modules, also each other
        above, below = package(module), package(target)
        return above == below or RANK[below] > RANK[above] or RANK[above] == RANK[below] in (0, RANK["errors"])

    graph = imports(type_checking=False)
    assert {package(m) for m in graph} <= set(RANK), "a package or top-level module no layer names"
    upward = sorted(f"{m} → {t}" for m, targets in graph.items() for t in targets if not allowed(m, t))
    assert upward == []


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


def test_config_keys_are_classified_only_where_declared():
    """Each config key is declared once, at its field of the run spec, with its role (issue 47): a collection
    of config keys (or of groups' key prefixes) written out anywhere else classifies keys a second time."""
    from sharebench.run.spec import declared_keys, leaf_keys

    keys = set(declared_keys(lambda declared: True)) | set(leaf_keys())
    modules = {path.stem for path in PACKAGE.rglob("*")}  # "sharing", "data": a package's modules too
    names = (keys - modules) | {f"{key}." for key in keys}
    found, ordered = [], []
    for path in [*PACKAGE.rglob("*.py"), PROJECT_ROOT / "train.py"]:
        if path.name == "spec.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "NAMING_ORDER" for t in node.targets):
                ordered.append(node.value)  # the one display order of names and labels (paths.py)
            if isinstance(node, (ast.Set, ast.Tuple, ast.List)) and node not in ordered:
                named = [i.value for i in node.elts if isinstance(i, ast.Constant) and i.value in names]
                if len(named) >= 2:
                    found.append(f"{path.name}:{node.lineno} {named}")
    assert found == []


def test_a_collection_of_config_keys_is_found(tmp_path, monkeypatch):
    """The check above sees a tuple of key prefixes, as the one the results once kept."""
    import sys

    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    (tmp_path / "listed.py").write_text('DATA_KEYS = ("data.", "glue.")\n')
    try:
        test_config_keys_are_classified_only_where_declared()
    except AssertionError as error:
        assert "listed.py:1 ['data.', 'glue.']" in str(error)
    else:
        raise AssertionError("a tuple of config keys went unseen")


def test_counting_parameters_does_not_load_lightning():
    """`sharebench params` builds the model on the meta device: Lightning (seconds to import, with torchmetrics and
    transformers behind it) loads only where a run trains."""
    import subprocess
    import sys

    script = "import sys, sharebench.cli, sharebench.run.build, sharebench.run.machine; print(*sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert "sharebench.run.build" in loaded and "lightning" not in loaded


def test_the_test_controller_starts_its_workers_without_torch():
    """`make test`'s controller imports tests/conftest.py before it starts its workers: without torch (3 s), as a
    process outside a worker (no PYTEST_XDIST_WORKER_COUNT) imports it."""
    import os
    import subprocess
    import sys

    script = "import sys, tests.conftest; print(*sorted(sys.modules))"
    controller = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER_COUNT"}
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=PROJECT_ROOT, env=controller).stdout.split()  # fmt: skip
    assert "tests.conftest" in loaded and "torch" not in loaded
