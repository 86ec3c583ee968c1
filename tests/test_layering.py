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
