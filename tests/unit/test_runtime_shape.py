"""Issue 15's shape of ``sipserver/runtime.py``: it wires parts and carries out decisions; the
request procedure lives sans-IO in ``proxy/``. Checked statically so that growth shows up in
review, not in a later refactor: under 500 lines, no function over 60 lines, and no
``async def`` that awaits nothing (such a function only hides that it never waits)."""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "sipserver" / "runtime.py"


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _awaits(fn: ast.AsyncFunctionDef) -> bool:
    """An await, async for or async with in ``fn`` itself (not in a nested function)."""
    stack: list[ast.AST] = list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Await, ast.AsyncFor, ast.AsyncWith)):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return False


def test_runtime_is_small() -> None:
    lines = RUNTIME.read_text().count("\n")
    assert lines < 500, f"sipserver/runtime.py has {lines} lines; move logic into a part of its own"


def test_no_long_function_and_no_async_without_await() -> None:
    tree = ast.parse(RUNTIME.read_text())
    long = [(f.name, f.end_lineno - f.lineno + 1) for f in _functions(tree) if (f.end_lineno or 0) - f.lineno + 1 > 60]
    assert not long, f"functions over 60 lines in runtime.py: {long}"
    idle = [f.name for f in _functions(tree) if isinstance(f, ast.AsyncFunctionDef) and not _awaits(f)]
    assert not idle, f"async functions that await nothing in runtime.py: {idle}"
