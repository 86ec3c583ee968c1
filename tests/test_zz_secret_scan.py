"""Runs last (by name): no password, token, API key or signing secret in any log of the session.

It reads the in-process gateways' log and every log file the session's gateways and model
servers wrote under pytest's temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SESSION_LOG
from tests.support import secrets

LOG_SUFFIXES = (".log", ".out", ".err", ".txt", ".jsonl")


def _log_files(base: Path) -> list[Path]:
    return [p for p in base.rglob("*") if p.is_file() and p.name.endswith(LOG_SUFFIXES)]


def test_no_secret_reaches_any_log(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    files = _log_files(base)
    assert base / SESSION_LOG in files
    assert secrets.SEEN, "the session recorded no secrets: the scan would prove nothing"
    leaks = []
    for path in files:
        text = path.read_text(errors="replace")
        for secret in secrets.SEEN:
            if secret in text:
                leaks.append(f"{path.relative_to(base)} contains {secret[:6]}...")
    assert not leaks, "\n".join(leaks)


def test_the_scan_would_catch_a_leak(tmp_path: Path) -> None:
    secret = "sk-this-is-a-canary-secret-value"
    secrets.SEEN.add(secret)
    try:
        (tmp_path / "leaky.log").write_text(f"GET /v1/models Authorization: Bearer {secret}\n")
        leaked = [p for p in _log_files(tmp_path) if secret in p.read_text()]
        assert leaked
    finally:
        secrets.SEEN.discard(secret)
