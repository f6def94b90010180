"""The package's import graph, read with ``ast`` (every import: lazy ones inside functions and
``TYPE_CHECKING`` ones included): no cycle among the runtime's modules, and adapters that
import only the adapter contract, the public namespace and their own framework."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "watchroutes"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, source: str | None = None) -> Iterator[str]:
    """Every module ``path`` imports, as absolute names (``from x import y`` yields ``x`` and
    ``x.y``, since ``y`` may be a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            for alias in node.names:
                yield f"{target}.{alias.name}"


def graph(prefix: str) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name.startswith(prefix):
            edges[name] = {t for t in imports(path) if t in modules and t.startswith(prefix)}
            edges[name].discard(name)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_runtime_has_no_import_cycle() -> None:
    cycle = find_cycle(graph("watchroutes._runtime"))
    assert cycle is None, " -> ".join(cycle or ())


def test_the_core_has_no_import_cycle() -> None:
    cycle = find_cycle(graph("watchroutes._core"))
    assert cycle is None, " -> ".join(cycle or ())


def test_adapters_import_only_the_contract_and_the_public_api() -> None:
    for path in sorted((PACKAGE / "adapters").glob("*.py")):
        if path.name == "__init__.py":
            continue  # the contract itself
        private = sorted(
            target
            for target in imports(path)
            if target.startswith("watchroutes.") and "._" in target.removeprefix("watchroutes")
        )
        assert not private, f"{path.name} imports private modules: {private}"


def test_the_finder_sees_lazy_and_type_checking_imports() -> None:
    """The check cannot pass by not looking."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .hub import Hub\n"
        "def f():\n    from .stream import x\n"
    )
    path = PACKAGE / "_runtime" / "probe_for_test.py"
    found = list(imports(path, source))
    assert "watchroutes._runtime.hub" in found
    assert "watchroutes._runtime.stream" in found
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
