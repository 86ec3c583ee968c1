"""The `mlx-manager` command line: user create/list (password from stdin), `python -m gateway`."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.db import create_engine, migrate, session_factory
from gateway.store.users import register_user
from tests.conftest import bearer, login, make_settings
from tests.support.gateway import running_gateway
from tests.support.secrets import on_request, on_response

CLI = str(Path(sys.executable).with_name("mlx-manager"))
PASSWORD = "cli-secret-password"

# Secrets these clients handle join the session-wide log scan (see tests/support/secrets.py).
SECRET_HOOKS: dict[str, list[Callable[..., Any]]] = {
    "request": [on_request],
    "response": [on_response],
}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "cwd").mkdir()
    return tmp_path / "home"


def emails(home: Path) -> list[str]:
    """The users in the CLI's database, read directly (no subprocess needed)."""
    database = home / "mlx-manager.db"
    if not database.exists():
        return []
    with sqlite3.connect(database) as connection:
        return [row[0] for row in connection.execute("SELECT email FROM users ORDER BY id")]


def run(
    home: Path, *args: str, stdin: str | None = None, program: tuple[str, ...] = (CLI,)
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLX_MANAGER_")}
    environment["MLX_MANAGER_HOME"] = str(home)
    return subprocess.run(
        [*program, *args],
        env=environment,
        cwd=home.parent / "cwd",
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_user_create_admin_from_stdin_then_list(home: Path):
    created = run(
        home, "user", "create", "--email", "Root@Example.com", "--admin", stdin=PASSWORD + "\n"
    )
    assert created.returncode == 0, created.stderr
    assert "root@example.com" in created.stdout
    assert "admin" in created.stdout
    assert PASSWORD not in created.stdout + created.stderr

    listed = run(home, "user", "list")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if "root@example.com" in line)
    assert "admin" in line
    assert "approved" in line
    assert PASSWORD not in listed.stdout + listed.stderr
    assert "argon2" not in listed.stdout


def test_user_create_without_admin_is_pending_once_an_admin_exists(home: Path):
    assert (
        run(
            home, "user", "create", "--email", "a@example.com", "--admin", stdin=PASSWORD
        ).returncode
        == 0
    )
    created = run(home, "user", "create", "--email", "b@example.com", stdin=PASSWORD)
    assert created.returncode == 0, created.stderr
    assert "pending" in created.stdout
    assert "created user b@example.com" in created.stdout
    assert emails(home) == ["a@example.com", "b@example.com"]


async def test_cli_admin_can_sign_in_to_the_gateway(home: Path):
    created = run(home, "user", "create", "--email", "root@example.com", "--admin", stdin=PASSWORD)
    assert created.returncode == 0, created.stderr
    async with (
        running_gateway(make_settings(home)) as handle,
        httpx.AsyncClient(base_url=handle.url, event_hooks=SECRET_HOOKS) as client,
    ):
        token = await login(client, "root@example.com", PASSWORD)
        me = (await client.get("/api/auth/me", headers=bearer(token))).json()
        assert (me["is_admin"], me["status"]) == (True, "approved")


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("--email", "a@example.com"), "short\n", "at least 8"),
        (("--email", "a@example.com"), "\n", "at least 8"),
        (("--email", "not-an-email"), PASSWORD, "email"),
    ],
)
def test_user_create_refuses_bad_input(home: Path, args, stdin, message):
    result = run(home, "user", "create", *args, stdin=stdin)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if stdin.strip():
        assert stdin.strip() not in result.stdout + result.stderr
    assert emails(home) == []


def test_user_create_duplicate_email_fails(home: Path):
    assert run(home, "user", "create", "--email", "a@example.com", stdin=PASSWORD).returncode == 0
    result = run(home, "user", "create", "--email", "A@example.com", stdin=PASSWORD)
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert emails(home) == ["a@example.com"]


def test_password_is_never_an_argument(home: Path):
    result = run(home, "user", "create", "--email", "a@example.com", "--password", PASSWORD)
    assert result.returncode != 0
    assert PASSWORD not in result.stdout
    assert emails(home) == []


def test_python_dash_m_gateway_help(home: Path):
    result = run(home, "--help", program=(sys.executable, "-m", "gateway"))
    assert result.returncode == 0, result.stderr
    for command in ("serve", "user"):
        assert command in result.stdout
    result = run(home, "serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "--port" in result.stdout


def test_user_list_shows_long_emails_in_full_when_piped(home: Path):
    email = "firstname.lastname.department@subsidiary.example.com"
    assert run(home, "user", "create", "--email", email, "--admin", stdin=PASSWORD).returncode == 0
    listed = run(home, "user", "list")
    assert listed.returncode == 0, listed.stderr
    assert email in listed.stdout, listed.stdout


async def test_user_list_survives_emails_that_look_like_console_markup(home: Path):
    """Registration is open: an email like `[/b]@x.io` must not break the admin's CLI."""
    engine = create_engine(make_settings(home).sqlalchemy_url)
    try:
        await migrate(engine)
        async with session_factory(engine)() as session:
            await register_user(session, "root@example.com", PASSWORD, admin=True)
            await register_user(session, "[/b]@example.com", PASSWORD)
            await register_user(session, "[red]x@example.com", PASSWORD)
    finally:
        await engine.dispose()
    listed = run(home, "user", "list")
    assert listed.returncode == 0, listed.stderr[-1500:]
    assert "[/b]@example.com" in listed.stdout
    assert "[red]x@example.com" in listed.stdout


def test_user_create_prints_an_email_that_looks_like_console_markup(home: Path):
    created = run(home, "user", "create", "--email", "[/b]@example.com", stdin=PASSWORD)
    assert created.returncode == 0, created.stderr[-1500:]
    assert "[/b]@example.com" in created.stdout
