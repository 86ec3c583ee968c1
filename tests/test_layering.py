"""Dependencies point one way: admin -> gateway. Only the composition root imports admin."""

from __future__ import annotations

import ast
import re
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

PURE_MODULES = ("serving/policy.py", "fleet/placement.py", "types.py")
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


# ---- the README's Layout maps every module ------------------------------------------------------

README = GATEWAY.parent / "README.md"
# Where each package's modules are listed in the README's Layout section (its lead-in line).
LAYOUT_SECTIONS = {
    "gateway": "`gateway/`:",
    "gateway/store": "`gateway/`:",
    "gateway/cli": "`gateway/`:",
    "gateway/serving": "`gateway/serving/`:",
    "gateway/hub": "`gateway/hub/`:",
    "gateway/fleet": "`gateway/fleet/`:",
    "gateway/node": "`gateway/node/`:",
    "admin": "`admin/`:",
}


def layout_section(lead: str) -> str:
    text = README.read_text()
    layout = text[text.index("## Layout") :]
    layout = layout[: layout.find("\n## ", 3)] if "\n## " in layout[3:] else layout
    start = layout.index(lead)
    following = [layout.find(other, start + 1) for other in set(LAYOUT_SECTIONS.values())]
    end = min([i for i in following if i > start] or [len(layout)])
    return layout[start:end]


def named_in(section: str) -> set[str]:
    """Every word inside backticks: `manager.py`, `errors.py`, `events.py` -> manager, errors..."""
    words: set[str] = set()
    for quoted in re.findall(r"`([^`]+)`", section):
        words.update(w.removesuffix(".py") for w in re.findall(r"[A-Za-z_][\w.]*", quoted))
    return words


def test_the_readme_layout_names_every_module() -> None:
    missing = {}
    for package, lead in LAYOUT_SECTIONS.items():
        folder = GATEWAY.parent / package
        stems = {p.stem for p in folder.glob("*.py")} - {"__init__", "__main__"}
        absent = sorted(stems - named_in(layout_section(lead)))
        if absent:
            missing[package] = absent
    assert missing == {}, "name these modules in the README's Layout section"


def test_the_layout_check_sees_a_missing_name() -> None:
    assert named_in("| `manager.py` | x |\\n`errors.py`, `events.py` | y") >= {"manager", "events"}
    assert "policy" not in named_in("| `manager.py` | the policy's steps |")
