"""The core stays sans-IO: it imports only the stdlib, msgspec and typing-extensions, and none
of the stdlib modules that read clocks or do I/O (STYLE 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "watchroutes" / "_core"
FORBIDDEN = {
    "anyio",
    "asyncio",
    "trio",
    "time",
    "socket",
    "threading",
    "select",
    "selectors",
    "subprocess",
    "multiprocessing",
    "concurrent",
    "datetime",
    "random",
    "starlette",
    "fastapi",
    "flask",
    "django",
    "aiohttp",
    "uvicorn",
    "redis",
    "nats",
    "psycopg",
}
ALLOWED_THIRD_PARTY = {"msgspec", "typing_extensions"}
CORE_FILES = sorted(CORE.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_files_found() -> None:
    assert len(CORE_FILES) >= 10


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.relative_to(CORE).as_posix())
def test_core_module_is_pure(path: Path) -> None:
    imported = imported_modules(path)
    assert not imported & FORBIDDEN, f"{path.name} imports {imported & FORBIDDEN}"
    import sys

    stdlib = set(sys.stdlib_module_names)
    outside = {m for m in imported if m not in stdlib and m != "__future__"}
    assert outside <= ALLOWED_THIRD_PARTY, f"{path.name} imports {outside - ALLOWED_THIRD_PARTY}"


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom anyio import sleep\n")
    assert imported_modules(bad) & FORBIDDEN == {"time", "anyio"}
