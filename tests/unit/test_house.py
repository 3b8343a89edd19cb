"""The package's shape, held to the figures it keeps (CONTRIBUTING.md, "The house").

Subpackages by role, a small root, no import cycle between modules (TYPE_CHECKING imports included),
subpackages importing only those below them, no private name imported across modules, every name
imported from the module that defines it, one meaning per module-level name, no function over 60 lines,
at most 40 explicit ``typing.Any``, the key prefixes written out in keys.py alone, and a unit test file
for every module with logic. A change that breaks one of these says so here, with the names to look at.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "celery_redis_stream"
UNIT = Path(__file__).resolve().parent
MAX_FUNCTION_LINES = 60
MAX_ANY = 40
MAX_ROOT_MODULES = 20
MAX_SHIM_LINES = 30

# The subpackages, lowest first: each imports only those before it (and the shared leaves in the root).
# The data path reads bottom-up: the Redis seam, positions, publishing, one batch, upkeep, the reading side;
# the CLI and the testing kit sit on top.
LAYERS = ("client", "position", "publish", "batch", "upkeep", "read", "cli", "testing")

# Module-level names that may mean different things in two modules (verbs of a module's own small API).
SHARED_NAMES = {"build"}

# Modules without logic of their own, so without a unit test file: re-exports, shapes and shims.
NO_LOGIC = {"__init__", "harness", "rows", "signals", "exceptions", "pytest_plugin"}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


PATHS = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
MODULES = {name: ast.parse(path.read_text(), str(path)) for name, path in PATHS.items()}


def _is_package(name: str) -> bool:
    return PATHS[name].name == "__init__.py"


def _target(name: str, node: ast.ImportFrom) -> str | None:
    """The package module an ``ImportFrom`` in module ``name`` reads from ("" for the package itself)."""
    if node.level == 0:
        module = node.module or ""
        if module != "celery_redis_stream" and not module.startswith("celery_redis_stream."):
            return None
        return module.partition(".")[2]
    here = name.split(".") if _is_package(name) and name != "__init__" else name.split(".")[:-1]
    if name == "__init__":
        here = []
    base = here[: len(here) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(name: str) -> list[tuple[str, str]]:
    """(module, imported name) pairs of ``name``'s package imports; a module imported whole has name ""."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(MODULES[name]):
        if not isinstance(node, ast.ImportFrom):
            continue
        target = _target(name, node)
        if target is None:
            continue
        for alias in node.names:
            whole = f"{target}.{alias.name}" if target else alias.name
            found.append((whole, "") if whole in MODULES else (target or "__init__", alias.name))
    return found


def _defined(tree: ast.Module) -> set[str]:
    """Names defined at a module's top level, under ``if`` and ``try`` too (not an ``except ImportError`` fallback)."""
    names: set[str] = set()

    def add(node: ast.stmt) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.If):
            for inner in [*node.body, *node.orelse]:
                add(inner)
        elif isinstance(node, ast.Try):
            for inner in [*node.body, *node.orelse, *node.finalbody]:
                add(inner)

    for node in tree.body:
        add(node)
    return names


DEFINED = {name: _defined(tree) for name, tree in MODULES.items()}


def test_the_root_is_small_and_the_roles_are_subpackages() -> None:
    root = sorted(path.name for path in PACKAGE.glob("*.py"))
    subpackages = sorted(name for name in MODULES if _is_package(name) and name != "__init__")
    assert len(root) <= MAX_ROOT_MODULES, root
    assert set(subpackages) == set(LAYERS), subpackages


def test_no_prefix_family_in_the_root() -> None:
    """``cli_common``, ``cli_reset``... belong in a folder: no two root modules share a ``word_`` prefix."""
    prefixes: dict[str, list[str]] = defaultdict(list)
    for name in MODULES:
        if "." not in name and "_" in name.strip("_"):
            prefixes[name.split("_")[0]].append(name)
    families = {p: names for p, names in prefixes.items() if len(names) > 1 or p in MODULES}
    assert not families, families


def test_the_root_holds_no_test_processes_beyond_a_short_shim() -> None:
    harness = PATHS["harness"]
    assert len(harness.read_text().splitlines()) <= MAX_SHIM_LINES
    assert not DEFINED["harness"] - {"__all__"}, "harness.py only re-exports testing.processes"


def test_the_modules_import_each_other_without_a_cycle() -> None:
    graph = {
        name: {module for module, _ in _imports(name) if module != name and not _is_package(module)}
        for name in MODULES
        if not _is_package(name)
    }
    cycles: list[list[str]] = []

    def visit(path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == path[0]:
                cycles.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest module
                visit([*path, nxt])

    for name in sorted(graph):
        visit([name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_subpackages_import_only_the_layers_below_them() -> None:
    wrong = []
    for name in MODULES:
        layer = name.split(".")[0]
        if layer not in LAYERS:
            continue
        for module, _ in _imports(name):
            other = module.split(".")[0]
            if other in LAYERS and other != layer and LAYERS.index(other) > LAYERS.index(layer):
                wrong.append(f"{name} imports {module}")
    assert not wrong, wrong


def test_no_private_name_is_imported_across_modules() -> None:
    private = [
        f"{name} imports {module}.{imported}"
        for name in MODULES
        for module, imported in _imports(name)
        if imported.startswith("_") and imported != "__version__"
    ]
    assert not private, private


def test_names_are_imported_from_the_module_that_defines_them() -> None:
    """Re-exports only at a package boundary (an ``__init__``), never from one sibling module to another."""
    borrowed = [
        f"{name} imports {imported} from {module}"
        for name in MODULES
        for module, imported in _imports(name)
        if imported and not _is_package(module) and imported not in DEFINED[module]
    ]
    assert not borrowed, borrowed


def test_a_module_level_name_means_one_thing() -> None:
    holders: dict[str, list[str]] = defaultdict(list)
    for name, names in DEFINED.items():
        for defined in names:
            if not defined.startswith("_") and defined not in {"__all__", "logger", "T", "S"}:
                holders[defined].append(name)
    repeated = {n: sorted(m) for n, m in holders.items() if len(m) > 1}
    assert set(repeated) <= SHARED_NAMES, {n: m for n, m in repeated.items() if n not in SHARED_NAMES}


def test_no_function_is_longer_than_60_lines() -> None:
    long = [
        f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_explicit_any_stays_rare() -> None:
    uses = {
        name: sum(
            1
            for node in ast.walk(tree)
            if (isinstance(node, ast.Name) and node.id == "Any")
            or (isinstance(node, ast.Attribute) and node.attr == "Any")
        )
        for name, tree in MODULES.items()
    }
    total = sum(uses.values())
    assert total <= MAX_ANY, {name: n for name, n in uses.items() if n}


@pytest.mark.parametrize("literal", ["stream_tracker:", "stream_deliveries:"])
def test_key_prefixes_are_written_out_in_keys_py_alone(literal: str) -> None:
    holders = sorted(
        name
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and literal in node.value
        and not _is_docstring(tree, node)
    )
    assert set(holders) == {"keys"}, holders


def test_every_module_with_logic_has_its_unit_test_file() -> None:
    """tests/unit mirrors the package: ``publish/redis_fast.py`` is tested in ``publish/test_redis_fast.py``."""
    missing = []
    for name, path in PATHS.items():
        stem = path.stem
        if stem in NO_LOGIC or not _has_logic(MODULES[name]):
            continue
        folder = path.parent.relative_to(PACKAGE)
        if not (UNIT / folder / f"test_{stem}.py").exists():
            missing.append(str(folder / f"test_{stem}.py"))
    assert not missing, missing


def _has_logic(tree: ast.Module) -> bool:
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in ast.walk(tree))


def _is_docstring(tree: ast.Module, node: ast.Constant) -> bool:
    for owner in ast.walk(tree):
        if isinstance(owner, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = owner.body
            if body and isinstance(body[0], ast.Expr) and body[0].value is node:
                return True
    return False


def test_every_module_says_what_it_holds() -> None:
    undocumented = [name for name, tree in MODULES.items() if not ast.get_docstring(tree)]
    assert not undocumented, undocumented
