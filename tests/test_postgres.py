"""The gateway on PostgreSQL as on SQLite: the same API flows on both databases (tests marked
`both_databases` run once on each; tests/support/postgres.py starts the real server), what
only PostgreSQL has (replicas migrating together), and `mlx-manager serve` on a PostgreSQL URL.

Flows that other files cover run on both there too: migrations (test_migrations.py), users
(test_users.py), keys (test_keys.py), downloads (tests/models/test_downloads.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import col, select

from gateway.db import async_url, create_engine, migrate
from gateway.tables import Download, Usage
from tests.conftest import bearer, register_and_login
from tests.support import secrets
from tests.support.gateway import GatewayHandle, free_port
from tests.support.stub_server import STUB_SCRIPT
from tests.support.waiting import wait_until

GIB = 1024**3
PATIENCE = 60.0


def stub_command(name: str) -> list[str]:
    return [sys.executable, str(STUB_SCRIPT), "--port", "{port}", "--name", name, "--quiet"]


def test_plain_urls_get_the_async_drivers():
    assert async_url("postgresql://u:p@db:5432/mlx") == "postgresql+asyncpg://u:p@db:5432/mlx"
    assert async_url("postgres://db/mlx") == "postgresql+asyncpg://db/mlx"
    assert async_url("sqlite:////var/mlx.db") == "sqlite+aiosqlite:////var/mlx.db"
    for kept in ("postgresql+asyncpg://db/mlx", "sqlite+aiosqlite:///x.db", "not a url"):
        assert async_url(kept) == kept


@pytest.mark.both_databases
async def test_the_gateway_runs_on_the_database_it_was_given(
    gateway: GatewayHandle, database_url: str | None
):
    assert gateway.core.engine.dialect.name == ("postgresql" if database_url else "sqlite")
    assert gateway.settings.database_path is not None
    assert gateway.settings.database_path.exists() is (database_url is None)


@pytest.mark.both_databases
async def test_emails_are_unique_whatever_their_case(client: httpx.AsyncClient, admin_token: str):
    first = await client.post(
        "/api/auth/register", json={"email": "Ann@Example.com", "password": "p" * 12}
    )
    assert first.status_code == 201, first.text
    again = await client.post(
        "/api/auth/register", json={"email": "ann@example.COM", "password": "q" * 12}
    )
    assert again.status_code == 409, again.text


@pytest.mark.both_databases
async def test_a_deleted_users_id_is_never_given_again(client: httpx.AsyncClient, admin_token: str):
    """A token minted for a deleted user must never fit a newcomer (SQLite AUTOINCREMENT,
    PostgreSQL's sequence)."""
    body = {"email": "gone@example.com", "password": "gone-password"}
    gone = (await client.post("/api/auth/register", json=body)).json()["id"]
    deleted = await client.delete(f"/api/users/{gone}", headers=bearer(admin_token))
    assert deleted.status_code in (200, 204), deleted.text
    body = {"email": "next@example.com", "password": "next-password"}
    newcomer = (await client.post("/api/auth/register", json=body)).json()["id"]
    assert newcomer > gone


@pytest.mark.both_databases
async def test_profiles_crud_keeps_every_field(client: httpx.AsyncClient, admin_token: str):
    auth = bearer(admin_token)
    body: dict[str, Any] = {
        "name": "crud",
        "command": stub_command("crud"),
        "aliases": ["crud-alias", "Crud-Two"],
        "env": {"STUB_FLAG": "1"},
        "pinned": True,
        "memory_gb": 1.5,
        "idle_ttl": 30,
        "trust_remote_code": True,
        "health_path": "/health",
    }
    created = await client.post("/api/profiles", json=body, headers=auth)
    assert created.status_code == 201, created.text
    profile = created.json()
    for name, value in body.items():
        assert profile[name] == value, name

    duplicate = await client.post("/api/profiles", json={**body, "aliases": []}, headers=auth)
    assert duplicate.status_code == 409, duplicate.text

    patch = {"aliases": [], "pinned": False, "memory_gb": None, "env": {}}
    patched = await client.patch(f"/api/profiles/{profile['id']}", json=patch, headers=auth)
    assert patched.status_code == 200, patched.text
    read = (await client.get(f"/api/profiles/{profile['id']}", headers=auth)).json()
    assert {k: read[k] for k in patch} == patch
    assert read["command"] == body["command"]
    assert read["updated_at"] >= profile["updated_at"]
    listed = (await client.get("/api/profiles", headers=auth)).json()
    assert [p["name"] for p in listed] == ["crud"]

    deleted = await client.delete(f"/api/profiles/{profile['id']}", headers=auth)
    assert deleted.status_code in (200, 204), deleted.text
    assert (await client.get(f"/api/profiles/{profile['id']}", headers=auth)).status_code == 404


@pytest.mark.both_databases
async def test_usage_is_recorded_and_reported(
    client: httpx.AsyncClient, admin_token: str, gateway: GatewayHandle
):
    auth = bearer(admin_token)
    created = await client.post(
        "/api/profiles", json={"name": "metered", "command": stub_command("metered")}, headers=auth
    )
    assert created.status_code == 201, created.text
    key = (await client.post("/api/keys", json={"name": "meter"}, headers=auth)).json()
    chat = {"model": "metered", "messages": [{"role": "user", "content": "one two three"}]}
    response = await client.post("/v1/chat/completions", json=chat, headers=bearer(key["key"]))
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    request_id = response.headers["x-request-id"]

    await gateway.core.usage.flush()
    async with gateway.core.sessions() as session:
        rows = (await session.exec(select(Usage).where(Usage.request_id == request_id))).all()
    assert len(rows) == 1
    (row,) = rows
    assert (row.model, row.status, row.key_id) == ("metered", 200, key["id"])
    assert (row.prompt_tokens, row.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )

    by_key = await client.get("/api/usage", params={"group_by": "key"}, headers=auth)
    assert by_key.status_code == 200, by_key.text
    (group,) = by_key.json()["groups"]
    assert (group["key_id"], group["requests"]) == (key["id"], 1)
    assert group["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    listed = (await client.get("/api/keys", headers=auth)).json()
    assert next(k for k in listed if k["id"] == key["id"])["last_used_at"] is not None


@pytest.mark.both_databases
@pytest.mark.parametrize("offset_hours", [0, 5, -7])
async def test_usage_time_windows_honour_the_utc_offset(
    client: httpx.AsyncClient, admin_token: str, gateway: GatewayHandle, offset_hours: int
):
    """`since` and `until` mean the same instant whatever offset they are written in (SQLite
    stores timestamps as text, so anything not in UTC must be converted before comparing)."""
    created = datetime.now(UTC) - timedelta(hours=1)
    async with gateway.core.sessions() as session:
        session.add(Usage(created_at=created, model="windowed", endpoint="/v1/x", status=200))
        await session.commit()
    zone = timezone(timedelta(hours=offset_hours))

    async def count(**window: datetime) -> int:
        params = {
            "group_by": "model",
            **{k: v.astimezone(zone).isoformat() for k, v in window.items()},
        }
        response = await client.get("/api/usage", params=params, headers=bearer(admin_token))
        assert response.status_code == 200, response.text
        return sum(g["requests"] for g in response.json()["groups"])

    minute = timedelta(minutes=1)
    assert await count(since=created - minute) == 1
    assert await count(since=created + minute) == 0
    assert await count(until=created + minute) == 1
    assert await count(until=created - minute) == 0


@pytest.mark.both_databases
async def test_download_rows_keep_64_bit_counters(
    client: httpx.AsyncClient, admin_token: str, gateway: GatewayHandle
):
    async with gateway.core.sessions() as session:
        row = Download(
            model_id="org/huge",
            status="failed",
            bytes_done=5 * GIB + 1,
            bytes_total=9 * GIB,
            files_done=1,
            files_total=3,
            error="stopped",
        )
        session.add(row)
        await session.commit()
        download_id = row.id
    listed = await client.get("/api/downloads", headers=bearer(admin_token))
    assert listed.status_code == 200, listed.text
    (view,) = [d for d in listed.json() if d["id"] == download_id]
    assert (view["bytes_done"], view["bytes_total"]) == (5 * GIB + 1, 9 * GIB)
    async with gateway.core.sessions() as session:
        found = (await session.exec(select(Download).where(col(Download.bytes_done) > 2**32))).all()
    assert [d.id for d in found] == [download_id]


async def test_replicas_starting_together_migrate_once(postgres_url: str):
    """Three gateways starting at once on an empty database: the advisory lock lets one
    migrate while the others wait, then they find the schema at head."""
    engines = [create_engine(postgres_url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(engine) for engine in engines))
        async with engines[0].connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert len(versions) == 1
    finally:
        for engine in engines:
            await engine.dispose()


async def test_serve_on_postgresql_answers_health_and_login(postgres_url: str, tmp_path: Path):
    """The real CLI as a process, given a plain `postgresql://` URL as users write it."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLX_MANAGER_")}
    env.update(
        {
            "MLX_MANAGER_HOME": str(tmp_path / "home"),
            "MLX_MANAGER_DATABASE_URL": postgres_url.replace("+asyncpg", ""),
            "MLX_MANAGER_JWT_SECRET": "serve-on-postgres-" + "s" * 32,
            "MLX_MANAGER_IDLE_TTL": "0",
        }
    )
    secrets.SEEN.add(env["MLX_MANAGER_JWT_SECRET"])
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,  # no stray .env from the working tree
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            trust_env=False,
            timeout=PATIENCE,
            event_hooks=secrets.HOOKS,
        ) as client:

            async def healthy() -> bool:
                assert process.poll() is None, log.read_text()[-3000:]
                try:
                    return (await client.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(healthy, timeout=PATIENCE, message="gateway /health")
            token = await register_and_login(client, "admin@example.com", "admin-password")
            me = await client.get("/api/auth/me", headers=bearer(token))
            assert me.status_code == 200, me.text
            assert me.json()["is_admin"] is True
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 30)
    assert "Application shutdown complete" in log.read_text(), log.read_text()[-3000:]
    assert not (tmp_path / "home" / "mlx-manager.db").exists()

    engine = create_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT email, is_admin FROM users"))).all()
    finally:
        await engine.dispose()
    assert [tuple(row) for row in rows] == [("admin@example.com", True)]
