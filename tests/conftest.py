"""Shared fixtures: a real gateway (uvicorn on a real port) per test, on its own SQLite file."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db import create_engine, migrate, session_factory
from gateway.settings import Settings
from tests.support import secrets
from tests.support.gateway import GatewayHandle, running_gateway

# The real PostgreSQL server and the `both_databases` marker (see the module's docstring).
pytest_plugins = ["tests.support.postgres"]

TEST_SECRET = "test-secret-" + "x" * 40


def make_settings(home: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": home,
        # A random first port for model servers (below the ephemeral range): another test run
        # on the machine must not take a port between our pick and our server's bind.
        "default_port_start": random.randrange(20000, 31000, 10),
        "jwt_secret": TEST_SECRET,
        "idle_ttl": 0,
        "health_check_interval": 3600,
        "queue_timeout": 10,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


SESSION_LOG = "gateway-session.log"
LAST = "test_zz_secret_scan.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The secret scan reads every log the session wrote, so it runs after everything else."""
    items.sort(key=lambda item: item.path.name == LAST)


@pytest.fixture(scope="session", autouse=True)
def session_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Everything the in-process gateways log, kept for the secret scan at the end."""
    path = tmp_path_factory.getbasetemp() / SESSION_LOG
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    secrets.SEEN.add(TEST_SECRET)
    yield path
    root.removeHandler(handler)
    root.setLevel(previous)
    handler.close()


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    """`database_url` is None (SQLite under home) unless the test runs on both databases
    (`@pytest.mark.both_databases`, tests/support/postgres.py)."""
    return make_settings(tmp_path / "home", database_url=database_url)


@pytest.fixture
def download_options() -> dict[str, Any]:
    """Keyword options of the `gateway` fixture's DownloadManager; a test that needs some
    parametrizes this fixture (e.g. a short `retry_base_seconds`)."""
    return {}


@pytest.fixture
async def gateway(
    settings: Settings, download_options: dict[str, Any]
) -> AsyncIterator[GatewayHandle]:
    async with running_gateway(settings, download_options) as handle:
        yield handle


@pytest.fixture
async def client(gateway: GatewayHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=gateway.url, timeout=30, event_hooks=secrets.HOOKS
    ) as http:
        yield http


@pytest.fixture
async def admin_token(client: httpx.AsyncClient) -> str:
    return await register_and_login(client, "admin@example.com", "admin-password")


async def register_and_login(client: httpx.AsyncClient, email: str, password: str) -> str:
    response = await client.post("/api/auth/register", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    return await login(client, email, password)


async def login(client: httpx.AsyncClient, email: str, password: str) -> str:
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def approved_user(
    client: httpx.AsyncClient,
    admin_token: str,
    email: str = "user@example.com",
    password: str = "user-password",
) -> tuple[int, str]:
    """Register a user, approve it as the admin, and log it in: its id and token."""
    response = await client.post("/api/auth/register", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    response = await client.patch(
        f"/api/users/{user_id}", json={"status": "approved"}, headers=bearer(admin_token)
    )
    assert response.status_code == 200, response.text
    return user_id, await login(client, email, password)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a migrated SQLite file of the test's own: the store without a gateway."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await migrate(engine)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()
