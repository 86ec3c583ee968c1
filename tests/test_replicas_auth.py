"""Gateway replicas on one PostgreSQL: revocation reaches every replica at once, and a database
outage leaves cached logins working and `/ready` saying so.

Everything is real: a PostgreSQL server (tests/support/postgres.py), gateways as
`python -m gateway serve` processes (tests/support/gateway_process.py). The replicas run with
cache TTLs of 60 s (the listened one and the backstop), so a token refused on replica B well
before that, after a change on replica A, can only have been refused because B heard the
change (NOTIFY) or emptied its cache on reconnecting. The measured latencies are printed
(`-s` shows them); the assertions only hold them far below the TTL (the machine is noisy).
The outage test stops a private PostgreSQL server, never the session's shared one.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import psutil
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway import store
from gateway.auth import Authenticator
from gateway.errors import Unauthorized
from gateway.settings import load_settings
from gateway.tokens import issue_access_token
from tests.conftest import bearer
from tests.support import secrets
from tests.support.env import process_gone, stub_command
from tests.support.gateway_process import GatewayProcess, serve_environment
from tests.support.postgres import PostgresServer
from tests.support.waiting import wait_until

SECRET = "replicas-test-secret-" + "r" * 40
LONG_TTL = 60.0
# A refusal this long after the change cannot be the TTL's doing (it is half of it).
WELL_BEFORE_TTL = LONG_TTL / 2
PATIENCE = 60.0
ADMIN = {"email": "admin@example.com", "password": "admin-password"}
PASSWORD = "user-password"


# ---- settings at their edges (no processes) --------------------------------------------------


def test_auth_and_readiness_settings_accept_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings(_env_file=None)
    assert (defaults.auth_cache_ttl, defaults.auth_cache_backstop_ttl) == (60, 1)
    assert (defaults.auth_stale_max_age, defaults.auth_db_timeout) == (300, 5)
    assert (defaults.ready_timeout, defaults.revocation_ping_interval) == (2, 5)
    assert defaults.revocation_reconnect_max == 5
    for values in (
        {"AUTH_CACHE_TTL": "0", "AUTH_CACHE_BACKSTOP_TTL": "0", "AUTH_STALE_MAX_AGE": "0"},
        {"AUTH_CACHE_TTL": "3600", "AUTH_CACHE_BACKSTOP_TTL": "60", "AUTH_STALE_MAX_AGE": "86400"},
        {"AUTH_DB_TIMEOUT": "60", "READY_TIMEOUT": "60", "REVOCATION_RECONNECT_MAX": "300"},
    ):
        for name, value in values.items():
            monkeypatch.setenv(f"MLX_MANAGER_{name}", value)
        settings = load_settings(_env_file=None)
        for name, value in values.items():
            assert getattr(settings, name.lower()) == float(value)


# ---- the authenticator's TTLs on a real SQLite database (one gateway) ------------------------


async def _user_token(sessions: async_sessionmaker[AsyncSession], email: str) -> tuple[int, str]:
    async with sessions() as session:
        user = await store.users.register_user(session, email, PASSWORD, admin=True)
    assert user.id is not None
    token = issue_access_token(SECRET, user.id, user.token_version, timedelta(hours=1))
    return user.id, f"Bearer {token}"


async def _disable_unannounced(sessions: async_sessionmaker[AsyncSession], user_id: int) -> None:
    """What the CLI or another process does: a change this authenticator is not told about."""
    async with sessions() as session:
        user = await store.users.get_user(session, user_id)
        assert user is not None
        await store.users.update_user(session, user, status="disabled")


async def test_the_backstop_ttl_applies_unless_revocations_are_heard(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await _user_token(sessions, "first@example.com")  # the first admin, never disabled here
    auth = Authenticator(sessions, SECRET, 0.0, listened_ttl=3600)

    # Backstop 0 (SQLite, or a listener down): every request reads the database again.
    quiet_id, quiet = await _user_token(sessions, "quiet@example.com")
    assert (await auth.authenticate(quiet)).user_id == quiet_id
    await _disable_unannounced(sessions, quiet_id)
    with pytest.raises(Unauthorized):
        await auth.authenticate(quiet)

    # Listening: the cache is trusted for the listened TTL, so an unannounced change waits...
    auth.listening = True
    heard_id, heard = await _user_token(sessions, "heard@example.com")
    assert (await auth.authenticate(heard)).user_id == heard_id
    await _disable_unannounced(sessions, heard_id)
    assert (await auth.authenticate(heard)).user_id == heard_id  # cached: the TTL is 3600 s
    assert auth.ttl == 3600
    # ...until announced (forget_user) or the listener reconnects (forget_all).
    auth.forget_all()
    with pytest.raises(Unauthorized):
        await auth.authenticate(heard)
    # And when the listener drops, the backstop is back at once, for entries cached before.
    other_id, other = await _user_token(sessions, "other@example.com")
    assert (await auth.authenticate(other)).user_id == other_id
    await _disable_unannounced(sessions, other_id)
    assert (await auth.authenticate(other)).user_id == other_id
    auth.listening = False
    assert auth.ttl == 0
    with pytest.raises(Unauthorized):
        await auth.authenticate(other)


async def test_ready_on_sqlite_needs_no_listener(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")  # open: no token
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ready",
        "database": "ok",
        "revocations": "local",
        "auth_cache_ttl": 1.0,
        "usage_spool_bytes": 0,
    }
    assert (await client.get("/health")).json() == {"status": "ok"}


# ---- replicas as real processes --------------------------------------------------------------


@dataclass
class Replicas:
    """Gateway processes on one database; each on its own home folder."""

    tmp_path: Path
    url: str
    started: list[GatewayProcess]

    async def start(self, **settings: str) -> GatewayProcess:
        index = len(self.started) + 1
        values = {
            "database_url": self.url,
            "auth_cache_ttl": str(LONG_TTL),
            "auth_cache_backstop_ttl": str(LONG_TTL),
            "revocation_reconnect_max": "0.5",
            **settings,
        }
        env = serve_environment(self.tmp_path / f"home-{index}", SECRET, **values)
        gateway = GatewayProcess(env, self.tmp_path / f"gateway-{index}.log")
        self.started.append(gateway)
        await gateway.wait_healthy()
        return gateway


@pytest.fixture
def replicas_on() -> Iterator[Callable[[Path, str], Replicas]]:
    made: list[Replicas] = []

    def make(tmp_path: Path, url: str) -> Replicas:
        made.append(Replicas(tmp_path, url, []))
        return made[-1]

    yield make
    for group in made:
        for gateway in group.started:
            gateway.terminate()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, trust_env=False, event_hooks=secrets.HOOKS) as client:
        yield client


async def _ready(http: httpx.AsyncClient, gateway: GatewayProcess) -> dict[str, Any]:
    response = await http.get(f"{gateway.url}/ready")
    body: dict[str, Any] = response.json()
    assert response.status_code == (200 if body["status"] == "ready" else 503), body
    return body


async def _wait_ready(http: httpx.AsyncClient, gateway: GatewayProcess, status: str) -> Any:
    async def reached() -> dict[str, Any] | None:
        body = await _ready(http, gateway)
        return body if body["status"] == status else None

    return await wait_until(reached, timeout=PATIENCE, interval=0.05, message=f"/ready {status}")


async def _login(
    http: httpx.AsyncClient, gateway: GatewayProcess, email: str, password: str
) -> str:
    response = await http.post(
        f"{gateway.url}/api/auth/login", json={"email": email, "password": password}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def _admin(http: httpx.AsyncClient, gateway: GatewayProcess) -> dict[str, str]:
    response = await http.post(f"{gateway.url}/api/auth/register", json=ADMIN)
    assert response.status_code == 201, response.text
    return bearer(await _login(http, gateway, ADMIN["email"], ADMIN["password"]))


@dataclass
class Member:
    id: int
    token: dict[str, str]  # Authorization header with a JWT
    key_id: int
    key: dict[str, str]  # Authorization header with an API key


async def _signed_in(
    http: httpx.AsyncClient, gateway: GatewayProcess, admin: dict[str, str], name: str
) -> tuple[int, dict[str, str]]:
    """A new approved user and a fresh token of theirs (signing in authenticates nothing, so
    no gateway has it cached yet)."""
    email = f"{name}@example.com"
    credentials = {"email": email, "password": PASSWORD}
    response = await http.post(f"{gateway.url}/api/auth/register", json=credentials)
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    response = await http.patch(
        f"{gateway.url}/api/users/{user_id}", json={"status": "approved"}, headers=admin
    )
    assert response.status_code == 200, response.text
    return user_id, bearer(await _login(http, gateway, email, PASSWORD))


async def _new_key(
    http: httpx.AsyncClient, gateway: GatewayProcess, owner: dict[str, str], name: str
) -> tuple[int, dict[str, str]]:
    response = await http.post(f"{gateway.url}/api/keys", json={"name": name}, headers=owner)
    assert response.status_code == 201, response.text
    return response.json()["id"], bearer(response.json()["key"])


async def _member(
    http: httpx.AsyncClient, gateway: GatewayProcess, admin: dict[str, str], name: str
) -> Member:
    user_id, token = await _signed_in(http, gateway, admin, name)
    key_id, key = await _new_key(http, gateway, token, name)
    return Member(user_id, token, key_id, key)


async def _status(
    http: httpx.AsyncClient, gateway: GatewayProcess, auth: dict[str, str], path: str
) -> int:
    return (await http.get(f"{gateway.url}{path}", headers=auth)).status_code


async def _answers_after(
    http: httpx.AsyncClient,
    gateway: GatewayProcess,
    auth: dict[str, str],
    since: float,
    *,
    path: str = "/v1/models",
    status: int = 401,
) -> float:
    """Seconds from `since` until `gateway` answers `status` for `auth`, polled."""

    async def refused() -> bool:
        return await _status(http, gateway, auth, path) == status

    await wait_until(refused, timeout=PATIENCE, interval=0.02, message=f"{path} -> {status}")
    return time.monotonic() - since


def _report(what: str, seconds: float) -> None:
    print(f"\n  {what}: refused on the other replica after {seconds * 1000:.0f} ms")
    assert seconds < WELL_BEFORE_TTL, f"{what} took {seconds:.1f} s: the TTL, not a notification"


async def test_a_revocation_on_one_replica_is_refused_on_the_other_at_once(
    tmp_path: Path, postgres_url: str, replicas_on: Callable[[Path, str], Replicas], http
) -> None:
    replicas = replicas_on(tmp_path, postgres_url)
    a = await replicas.start()
    b = await replicas.start()
    assert (await _wait_ready(http, a, "ready"))["auth_cache_ttl"] == LONG_TTL
    assert (await _wait_ready(http, b, "ready"))["revocations"] == "listening"
    admin = await _admin(http, a)
    bob, carol, dave, erin, frank = [
        await _member(http, a, admin, name) for name in ("bob", "carol", "dave", "erin", "frank")
    ]
    # Warm B's cache with everything the test will revoke.
    for member in (bob, carol, dave, erin, frank):
        assert await _status(http, b, member.token, "/v1/models") == 200
        assert await _status(http, b, member.key, "/v1/models") == 200
    assert await _status(http, b, dave.token, "/api/users") == 403

    # A user disabled on A: their token and their key, on B.
    response = await http.patch(
        f"{a.url}/api/users/{bob.id}", json={"status": "disabled"}, headers=admin
    )
    assert response.status_code == 200, response.text
    since = time.monotonic()
    _report("disabled user's token", await _answers_after(http, b, bob.token, since))
    _report("disabled user's API key", await _answers_after(http, b, bob.key, since))

    # A key revoked on A; the owner's sign-in stays good.
    response = await http.delete(f"{a.url}/api/keys/{erin.key_id}", headers=erin.token)
    assert response.status_code == 204, response.text
    _report("revoked API key", await _answers_after(http, b, erin.key, time.monotonic()))
    assert await _status(http, b, erin.token, "/v1/models") == 200

    # A password reset on A: tokens issued before are refused on B.
    response = await http.post(
        f"{a.url}/api/users/{carol.id}/password", json={"password": "new-password-1"}, headers=admin
    )
    assert response.status_code == 200, response.text
    reset = await _answers_after(http, b, carol.token, time.monotonic())
    _report("token after a password reset", reset)
    assert await _status(http, b, carol.key, "/v1/models") == 200  # keys survive a password change

    # A role change: promoted on A is an admin on B; demoted on A is refused on B.
    response = await http.patch(
        f"{a.url}/api/users/{dave.id}", json={"is_admin": True}, headers=admin
    )
    assert response.status_code == 200, response.text
    await _answers_after(http, b, dave.token, time.monotonic(), path="/api/users", status=200)
    response = await http.patch(
        f"{a.url}/api/users/{dave.id}", json={"is_admin": False}, headers=admin
    )
    assert response.status_code == 200, response.text
    demoted = await _answers_after(
        http, b, dave.token, time.monotonic(), path="/api/users", status=403
    )
    _report("demoted admin on /api/users", demoted)

    # A user deleted on A: their key on B.
    response = await http.delete(f"{a.url}/api/users/{frank.id}", headers=admin)
    assert response.status_code == 204, response.text
    _report("deleted user's API key", await _answers_after(http, b, frank.key, time.monotonic()))

    # Nothing of this was B's TTL or a reconnect: its listener stayed up all along.
    assert (await _ready(http, b))["revocations"] == "listening"
    assert "reconnected" not in b.log.read_text()


def _plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _listener_backend(url: str, gateway: GatewayProcess) -> int | None:
    """The PostgreSQL backend pid of `gateway`'s LISTEN connection, found by its name."""
    connection = await asyncpg.connect(_plain_dsn(url))
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1",
            f"{store.replicas.LISTENER_APPLICATION_NAME} {gateway.pid}@%",
        )
    finally:
        await connection.close()
    assert len(rows) <= 1, rows
    return rows[0]["pid"] if rows else None


async def test_a_killed_listener_reconnects_empties_the_cache_and_hears_revocations_again(
    tmp_path: Path, postgres_url: str, replicas_on: Callable[[Path, str], Replicas], http
) -> None:
    replicas = replicas_on(tmp_path, postgres_url)
    a = await replicas.start()
    b = await replicas.start()
    await _wait_ready(http, a, "ready")
    await _wait_ready(http, b, "ready")
    admin = await _admin(http, a)
    bob = await _member(http, a, admin, "bob")
    carol = await _member(http, a, admin, "carol")
    assert await _status(http, b, bob.token, "/v1/models") == 200

    # A change nobody announces (SQL by hand): B keeps serving its cached login (TTL 60 s).
    connection = await asyncpg.connect(_plain_dsn(postgres_url))
    try:
        await connection.execute(
            "UPDATE users SET status = 'disabled', token_version = token_version + 1 WHERE id = $1",
            bob.id,
        )
        assert await _status(http, b, bob.token, "/v1/models") == 200

        # Kill B's LISTEN connection from the server side.
        old = await _listener_backend(postgres_url, b)
        assert old is not None
        assert await connection.fetchval("SELECT pg_terminate_backend($1)", old) is True
    finally:
        await connection.close()

    # B reconnects and empties its cache: the unannounced change now counts.
    since = time.monotonic()
    flushed = await _answers_after(http, b, bob.token, since)
    print(f"\n  listener killed: cache emptied after reconnecting, {flushed * 1000:.0f} ms")
    assert flushed < WELL_BEFORE_TTL
    await _wait_ready(http, b, "ready")
    new = await wait_until(lambda: _listener_backend(postgres_url, b), message="a new listener")
    assert new != old
    assert "revocation listener reconnected; auth cache flushed" in b.log.read_text()

    # And revocations reach B again.
    assert await _status(http, b, carol.token, "/v1/models") == 200
    response = await http.patch(
        f"{a.url}/api/users/{carol.id}", json={"status": "pending"}, headers=admin
    )
    assert response.status_code == 200, response.text
    _report(
        "pending user after a reconnect",
        await _answers_after(http, b, carol.token, time.monotonic()),
    )


# ---- a PostgreSQL outage ---------------------------------------------------------------------


def _signal_cluster(server: PostgresServer, which: signal.Signals) -> None:
    assert server.process is not None
    postmaster = psutil.Process(server.process.pid)
    for process in (postmaster, *postmaster.children(recursive=True)):
        process.send_signal(which)


def _openai_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}


async def test_a_postgresql_outage_keeps_cached_logins_and_ready_says_degraded(
    tmp_path: Path,
    private_postgres: PostgresServer,
    replicas_on: Callable[[Path, str], Replicas],
    http,
) -> None:
    url = private_postgres.url(await private_postgres.create_database())
    replicas = replicas_on(tmp_path, url)
    outage = {
        # TTLs 0: every request reads the database, so a login served during the outage can
        # only come from the stale rule.
        "auth_cache_ttl": "0",
        "auth_cache_backstop_ttl": "0",
        "auth_db_timeout": "1",
        "ready_timeout": "1",
        "revocation_ping_interval": "0.5",
    }
    a = await replicas.start(auth_stale_max_age="300", **outage)
    strict = await replicas.start(auth_stale_max_age="0", **outage)  # the setting's edge
    await _wait_ready(http, a, "ready")
    await _wait_ready(http, strict, "ready")
    admin = await _admin(http, a)
    bob = await _member(http, a, admin, "bob")
    # Never used on either gateway: a token and a key in no cache.
    _, carol = await _signed_in(http, a, admin, "carol")
    _, unused_key = await _new_key(http, a, admin, "unused")
    for gateway in (a, strict):
        assert await _status(http, gateway, bob.token, "/v1/models") == 200
        assert await _status(http, gateway, bob.key, "/v1/models") == 200

    # A hung database (every PostgreSQL process stopped): nothing waits past the timeouts.
    _signal_cluster(private_postgres, signal.SIGSTOP)
    try:
        body = await _wait_ready(http, a, "degraded")
        assert body["database"] == "unreachable"
        assert body["database_error"] == "no answer within 1 s"
        _openai_error(
            await http.get(f"{a.url}/v1/models", headers=carol), 503, "database_unavailable"
        )
        assert await _status(http, a, bob.token, "/v1/models") == 200
    finally:
        _signal_cluster(private_postgres, signal.SIGCONT)
    # The listeners reconnected and emptied their caches (notices may have been missed):
    # bob's requests fill them again.
    for gateway in (a, strict):
        await _wait_ready(http, gateway, "ready")
        assert await _status(http, gateway, bob.token, "/v1/models") == 200
        assert await _status(http, gateway, bob.key, "/v1/models") == 200

    # PostgreSQL stopped.
    await asyncio.to_thread(private_postgres.halt)
    for gateway in (a, strict):
        body = await _wait_ready(http, gateway, "degraded")
        assert body["database"] == "unreachable"
        assert body["database_error"] == "ConnectionRefusedError"
    body = await _wait_ready(http, a, "degraded")
    assert body["revocations"] == "reconnecting"
    assert (await http.get(f"{a.url}/health")).status_code == 200  # liveness is not readiness

    # Cached logins keep working; uncached ones get 503 (OpenAI-shaped, with Retry-After).
    assert await _status(http, a, bob.token, "/v1/models") == 200
    assert await _status(http, a, bob.key, "/v1/models") == 200
    response = await http.get(f"{a.url}/v1/models", headers=carol)
    _openai_error(response, 503, "database_unavailable")
    assert response.headers["retry-after"] == "5"
    response = await http.get(f"{a.url}/v1/models", headers=unused_key)
    _openai_error(response, 503, "database_unavailable")
    # A token that is no token needs no database to be refused.
    _openai_error(
        await http.get(f"{a.url}/v1/models", headers=bearer("not-a-jwt")), 401, "invalid_api_key"
    )
    # The admin API: a route that needs the database answers 503 (not a 500 and a traceback);
    # one that does not (the servers, from memory) still answers.
    response = await http.get(f"{a.url}/api/downloads", headers=bob.token)
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database_unavailable"
    assert response.headers["retry-after"] == "5"
    assert (await http.get(f"{a.url}/api/servers", headers=bob.token)).status_code == 200
    # AUTH_STALE_MAX_AGE=0: nothing cached is served.
    _openai_error(
        await http.get(f"{strict.url}/v1/models", headers=bob.token), 503, "database_unavailable"
    )

    # PostgreSQL back (same port, same data): ready again, and new logins work.
    await asyncio.to_thread(private_postgres.restart)
    for gateway in (a, strict):
        body = await _wait_ready(http, gateway, "ready")
        assert body["revocations"] == "listening"
        assert await _status(http, gateway, carol, "/v1/models") == 200
        assert await _status(http, gateway, unused_key, "/v1/models") == 200
        assert await _status(http, gateway, bob.token, "/v1/models") == 200
    assert "database unreachable" in a.log.read_text()


# ---- replicas must share the JWT secret ---------------------------------------------------------


async def test_a_replica_with_another_jwt_secret_is_warned_about(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica left with its own generated secret refuses every other replica's sign-ins
    (a bare 401): its start says why, once, and the next start with the same secret is quiet."""
    from tests.conftest import make_settings
    from tests.support.gateway import running_gateway

    first = make_settings(tmp_path / "a", database_url=postgres_url, jwt_secret="a" * 40)
    other = make_settings(tmp_path / "b", database_url=postgres_url, jwt_secret="b" * 40)
    warning = "Replicas must share MLX_MANAGER_JWT_SECRET"
    secrets.SEEN.update({"a" * 40, "b" * 40})
    async with running_gateway(first), running_gateway(first):
        pass
    assert warning not in caplog.text
    async with running_gateway(other):
        pass
    assert caplog.text.count(warning) == 1
    caplog.clear()
    async with running_gateway(other):
        pass
    assert warning not in caplog.text


# ---- profiles saved on one replica are served by all -------------------------------------------


async def test_a_profile_saved_on_one_replica_is_served_by_the_others(
    tmp_path: Path, postgres_url: str, replicas_on: Callable[[Path, str], Replicas], http
) -> None:
    """Each replica keeps the profiles in memory (the proxy reads no database per request):
    a profile made, changed or deleted on A is announced like a revocation, and B takes it."""
    replicas = replicas_on(tmp_path, postgres_url)
    a = await replicas.start()
    b = await replicas.start()
    admin = await _admin(http, a)
    chat = {"messages": [{"role": "user", "content": "hi"}]}

    async def chat_status(gateway: GatewayProcess, model: str) -> int:
        response = await http.post(
            f"{gateway.url}/v1/chat/completions", json={"model": model, **chat}, headers=admin
        )
        return response.status_code

    async def answers(gateway: GatewayProcess, model: str, status: int) -> bool:
        return await chat_status(gateway, model) == status

    assert await chat_status(b, "shared") == 404  # B knows no such profile yet
    body = {"name": "shared", "command": stub_command()}
    created = await http.post(f"{a.url}/api/profiles", json=body, headers=admin)
    assert created.status_code == 201, created.text
    profile_id = created.json()["id"]
    await wait_until(lambda: answers(b, "shared", 200), message="B serves the new profile")
    servers = (await http.get(f"{b.url}/api/servers", headers=admin)).json()
    assert [(s["name"], s["state"]) for s in servers] == [("shared", "ready")]
    pid = servers[0]["pid"]

    # A change that needs no restart (an alias): B serves the alias with the same process.
    url = f"{a.url}/api/profiles/{profile_id}"
    response = await http.patch(url, json={"aliases": ["also-shared"]}, headers=admin)
    assert response.status_code == 200, response.text
    await wait_until(lambda: answers(b, "also-shared", 200), message="B serves the alias")
    servers = (await http.get(f"{b.url}/api/servers", headers=admin)).json()
    assert servers[0]["pid"] == pid

    # Deleted on A: B stops its server and no longer knows the name.
    assert (await http.delete(url, headers=admin)).status_code == 204
    await wait_until(lambda: answers(b, "shared", 404), message="B forgot the profile")
    assert (await http.get(f"{b.url}/api/servers", headers=admin)).json() == []
    await wait_until(lambda: process_gone(pid), message="B's server stopped")
