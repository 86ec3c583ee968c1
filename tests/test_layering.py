"""Dependencies point one way: admin -> gateway. Only the composition root imports admin."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"
COMPOSITION_ROOTS = {"main.py"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_gateway_module_imports_admin_except_the_composition_root() -> None:
    offenders = {
        str(path.relative_to(GATEWAY)): sorted(
            m for m in imported_modules(path) if m == "admin" or m.startswith("admin.")
        )
        for path in GATEWAY.rglob("*.py")
        if path.name not in COMPOSITION_ROOTS
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_walk_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import admin.users\nfrom admin import ui\ndef f():\n    import admin\n")
    assert imported_modules(sample) == {"admin.users", "admin"}


# ---- the pure modules: decisions and vocabulary, no I/O ----------------------------------------

PURE_MODULES = ("serving/policy.py", "types.py")
# What a pure module may import: the language's own data tools, and other pure modules. No
# asyncio, httpx, aiohttp, psutil, os, socket, subprocess, pathlib, databases or web frameworks:
# a decision that can do I/O can no longer be tested synchronously with plain values.
PURE_ALLOWED = {"__future__", "collections.abc", "dataclasses", "datetime", "enum", "typing"}
IO_MODULES = {"asyncio", "httpx", "aiohttp", "psutil", "os", "socket", "subprocess", "pathlib"}


def pure_module_imports(path: Path) -> set[str]:
    """Everything `path` imports, following imports of gateway modules (which must be pure too)."""
    seen: set[str] = set()
    pending = [path]
    while pending:
        for name in imported_modules(pending.pop()):
            if name in seen:
                continue
            seen.add(name)
            if name.startswith("gateway."):
                pending.append(GATEWAY.parent / (name.replace(".", "/") + ".py"))
    return seen


def impure(names: set[str]) -> list[str]:
    pure = {"gateway." + m.removesuffix(".py").replace("/", ".") for m in PURE_MODULES}
    return sorted(n for n in names if n not in PURE_ALLOWED and n not in pure)


def test_the_policy_and_the_vocabulary_import_nothing_that_does_io() -> None:
    for module in PURE_MODULES:
        names = pure_module_imports(GATEWAY / module)
        assert not names & IO_MODULES, module
        assert impure(names) == [], module


def test_the_purity_check_sees_io_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from typing import Any\ndef f():\n    import asyncio\nimport httpx\n")
    assert impure(pure_module_imports(sample)) == ["asyncio", "httpx"]
