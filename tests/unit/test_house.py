"""The package's shape, held to the figures it keeps (CONTRIBUTING.md, "Tests, lint, tox").

No import cycle between its modules (TYPE_CHECKING imports included), no
function over 60 lines, at most 40 explicit ``typing.Any``, and the tracker key
prefix written out in keys.py alone. A change that breaks one of these says
so here, with the names to look at.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "celery_redis_stream"
MAX_FUNCTION_LINES = 60
MAX_ANY = 40


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.glob("*.py"))}


MODULES = _modules()


def _imports(tree: ast.Module) -> set[str]:
    """The package modules ``tree`` imports, at module level or not, TYPE_CHECKING included."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("celery_redis_stream."):
            found.add((node.module or "").split(".")[1])
    return {name for name in found if name in MODULES and name != "__init__"}


def test_the_modules_import_each_other_without_a_cycle() -> None:
    graph = {name: _imports(tree) for name, tree in MODULES.items() if name != "__init__"}
    cycles: list[list[str]] = []

    def visit(path: list[str]) -> None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == path[0]:
                cycles.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest module
                visit([*path, nxt])

    for name in sorted(graph):
        visit([name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


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
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and literal in node.value
        and not _is_docstring(tree, node)
    )
    assert set(holders) == {"keys"}, holders


def _is_docstring(tree: ast.Module, node: ast.Constant) -> bool:
    for owner in ast.walk(tree):
        if isinstance(owner, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = owner.body
            if body and isinstance(body[0], ast.Expr) and body[0].value is node:
                return True
    return False
