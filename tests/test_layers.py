"""The package imports downward only: an AST scan of ela_jax/ against the layer list in ela_jax/layers.toml."""

import ast
import pathlib
import tomllib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ela_jax"


def module_files() -> dict[str, pathlib.Path]:
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def layer_table() -> list[tuple[str, str, int]]:
    """(module prefix, layer name, rank) for every listed name; rank 0 is the bottom."""
    layers = tomllib.loads((PACKAGE / "layers.toml").read_text())["layer"]
    return [(name, layer["name"], rank) for rank, layer in enumerate(layers) for name in layer["modules"]]


def layer_of(module: str, table) -> tuple[str, int] | None:
    """The layer of the longest listed name that is `module` or one of its packages; the root matches only itself."""
    matches = [
        (len(name), layer, rank)
        for name, layer, rank in table
        if module == name or (name != "ela_jax" and module.startswith(name + "."))
    ]
    return max(matches)[1:] if matches else None


def imports_of(module: str, path: pathlib.Path, modules) -> set[str]:
    """Every ela_jax module that `path` imports, at module level or inside a function."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import ela_jax.data.pipeline.x` -> the module that exists
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def test_every_module_has_a_layer():
    table = layer_table()
    assert [module for module in module_files() if layer_of(module, table) is None] == []


def test_no_module_imports_a_higher_layer():
    table = layer_table()
    upward = []
    for module, imported in import_graph().items():
        layer, rank = layer_of(module, table)
        for target in sorted(imported):
            target_layer, target_rank = layer_of(target, table)
            if target_rank > rank:
                upward.append(f"{module} ({layer}) imports {target} ({target_layer})")
    assert upward == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_library_never_imports_tests_or_benchmarks():
    offenders = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [
                f"{module} imports {n}" for n in names if n.split(".")[0] in ("tests", "benchmarks", "common")
            ]
    assert offenders == []


def test_scan_sees_upward_imports_and_cycles():
    """The scan itself: a function-level upward import and a two-module cycle are both reported."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    table = [("ela_jax.config", "foundation", 0), ("ela_jax.training", "machinery", 2)]
    assert layer_of("ela_jax.training.loop", table) == ("machinery", 2)
    assert layer_of("ela_jax.configx", table) is None


def top_level_imports_under(folder: str) -> dict[str, set[str]]:
    """Every imported module name (inside functions too) of each .py file under `folder` of the repository."""
    found = {}
    for path in sorted((PACKAGE.parent / folder).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(PACKAGE.parent))] = names
    return found


def test_benchmarks_do_not_import_tests():
    offenders = [
        f"{path} imports {name}"
        for path, names in top_level_imports_under("benchmarks").items()
        for name in sorted(names)
        if name.split(".")[0] == "tests"
    ]
    assert offenders == []


def test_test_files_import_helpers_not_each_other():
    offenders = [
        f"{path} imports {name}"
        for path, names in top_level_imports_under("tests").items()
        for name in sorted(names)
        if name.startswith(("tests.test_", "tests.conftest"))
    ]
    assert offenders == []


def imported_closure(module: str, graph: dict[str, set[str]]) -> set[str]:
    seen, stack = set(), [module]
    while stack:
        for target in graph.get(stack.pop(), ()):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_evaluation_commands_import_no_trainer_code():
    """`python -m ela_jax.evaluate` / `zeroshot` run the evaluators without the training loop."""
    graph = import_graph()
    for command in ("ela_jax.evaluate", "ela_jax.zeroshot"):
        assert "ela_jax.training.loop" not in imported_closure(command, graph), command
    assert "ela_jax.training.loop" in imported_closure("ela_jax.train", graph)  # the scan does see the loop
