"""What replicas share besides rows: revocation signals (PostgreSQL NOTIFY/LISTEN) and whether
the database answers at all.

Every write that must end a cached login (a user disabled, demoted, deleted or given a new
password; a key deleted or changed) sends `notify_user`/`notify_key` inside its own transaction,
so the signal leaves exactly when the change commits (PostgreSQL delivers NOTIFY at commit and
drops it on rollback). The store's functions do this themselves, so the admin API and the CLI
signal alike. On SQLite (one gateway) there is nobody to tell: the calls do nothing.

The listening side (gateway/revocation.py) uses a dedicated asyncpg connection, outside the
SQLAlchemy pool: LISTEN belongs to one connection for as long as it lives, which a pool that
hands connections out per query cannot promise.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.tables import Setting

log = logging.getLogger("mlx_manager.database")

# One channel for every gateway on the database; payloads are {"user": id} or {"key": id}.
CHANNEL = "mlx_manager_revocations"
# How a listener shows in pg_stat_activity (operators and the tests find it by this name),
# followed by "<pid>@<host>" of its gateway; PostgreSQL keeps the first 63 bytes.
LISTENER_APPLICATION_NAME = "mlx-manager revocations"

# asyncpg.connect's own keyword arguments: the rest of what SQLAlchemy derives from the URL
# (e.g. prepared_statement_cache_size) is for SQLAlchemy's adapter, not for the driver.
_CONNECT_KEYWORDS = frozenset(inspect.signature(asyncpg.connect).parameters)


async def notify_user(session: AsyncSession, user_id: int) -> None:
    """Tell every replica to drop `user_id`'s cached logins once this transaction commits."""
    await _notify(session, {"user": user_id})


async def notify_key(session: AsyncSession, key_id: int) -> None:
    """Tell every replica to drop the cached login of API key `key_id` at commit."""
    await _notify(session, {"key": key_id})


async def notify_profile(session: AsyncSession, profile_id: int) -> None:
    """Tell the other replicas to reload profile `profile_id` (made, changed or deleted) at
    commit, so a profile saved on one replica is served by all. Marked with this process, whose
    own manager already has the change."""
    await _notify(session, {"profile": profile_id, "from": ORIGIN})


# Who sent a notice: a gateway ignores its own profile notices.
ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


async def _notify(session: AsyncSession, payload: dict[str, int | str]) -> None:
    connection = await session.connection()
    if connection.dialect.name != "postgresql":
        return
    await connection.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {"channel": CHANNEL, "payload": json.dumps(payload)},
    )


def parse_payload(payload: str) -> tuple[str, int] | None:
    """("user", id), ("key", id) or ("profile", id) from a notification, ("echo", id) for this
    process's own profile notice; None when it is none of these (a listener then drops every
    cached login: unknown news is treated as the worst news)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if isinstance(data, dict) and set(data) == {"profile", "from"}:
        profile_id = data["profile"]
        if not isinstance(profile_id, int) or isinstance(profile_id, bool):
            return None
        return ("echo" if data["from"] == ORIGIN else "profile"), profile_id
    if not isinstance(data, dict) or len(data) != 1:
        return None
    ((kind, value),) = data.items()
    if kind not in ("user", "key") or not isinstance(value, int) or isinstance(value, bool):
        return None
    return kind, value


def listener_connect_args(engine: AsyncEngine) -> dict[str, Any]:
    """asyncpg.connect arguments for the engine's database: host, port, user, password,
    database and SSL exactly as SQLAlchemy reads them from MLX_MANAGER_DATABASE_URL."""
    _, kwargs = engine.dialect.create_connect_args(engine.url)
    return {name: value for name, value in kwargs.items() if name in _CONNECT_KEYWORDS}


async def open_listener(
    connect_args: dict[str, Any],
    on_notify: Callable[[str], None],
    on_lost: Callable[[], None],
    connect_timeout: float,
) -> Any:
    """A new connection LISTENing on `CHANNEL`: `on_notify(payload)` for each notification,
    `on_lost()` when the connection ends (closed by the server, the network, or us).

    Returns the asyncpg connection; once this returns, every notification committed from now
    on reaches `on_notify`.
    """
    connection = await asyncpg.connect(
        **connect_args,
        timeout=connect_timeout,
        server_settings={"application_name": listener_application_name()},
    )
    try:
        connection.add_termination_listener(lambda _connection: on_lost())
        await connection.add_listener(
            CHANNEL, lambda _connection, _pid, _channel, payload: on_notify(payload)
        )
    except BaseException:
        connection.terminate()
        raise
    return connection


def listener_application_name() -> str:
    """This gateway's listener in pg_stat_activity: which replica (pid and host) it is."""
    name = f"{LISTENER_APPLICATION_NAME} {ORIGIN}"
    return name.encode()[:63].decode(errors="ignore")


async def ping_listener(connection: Any) -> None:
    """A round trip on the listener's connection (the caller bounds its time): a silently
    dead connection raises or hangs here."""
    await connection.fetchval("SELECT 1")


async def ping(engine: AsyncEngine, seconds: float) -> str | None:
    """None when the database answers `SELECT 1` within `seconds`, else why not, in brief:
    the error's kind only (GET /ready is open; a full message may name internal hosts)."""
    try:
        async with asyncio.timeout(seconds):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except TimeoutError:
        return f"no answer within {seconds:g} s"
    except Exception as exc:  # any failure is the answer: "not ready", and why
        log.info("database check failed: %s", describe(exc))
        return kind(exc)
    return None


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc` means the database could not be reached (down, restarting, too slow, the
    connection lost), as opposed to a query that the database refused."""
    if isinstance(exc, TimeoutError | OSError | asyncpg.InterfaceError):
        return True
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.CannotConnectNowError):
        return True
    if isinstance(exc, asyncpg.AdminShutdownError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            return True
        return exc.orig is not None and is_unreachable(exc.orig)
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no connection to give in time
        return True
    cause = exc.__cause__
    return cause is not None and cause is not exc and is_unreachable(cause)


def kind(exc: BaseException) -> str:
    """The error's class name, the driver's rather than SQLAlchemy's wrapper."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        inner = exc.orig.__cause__ or exc.orig
        return type(inner).__name__
    return type(exc).__name__


def lost_database(exc: BaseException) -> bool:
    """Whether `exc`, raised anywhere in a request, is the database being out of reach: an
    unreachable-kind error (see `is_unreachable`) that came out of SQLAlchemy or the driver.
    An OSError or timeout of the route's own (a file, the hub) is not the database's."""
    if not is_unreachable(exc):
        return False
    traceback = exc.__traceback__
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("sqlalchemy.", "asyncpg.", "aiosqlite.")):
            return True
        traceback = traceback.tb_next
    return isinstance(exc, sa_exc.DBAPIError)


def describe(exc: BaseException) -> str:
    """A one-line reason without SQLAlchemy's multi-line boilerplate (no secrets: asyncpg's
    messages name the host and port at most)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text_ = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text_}" if text_ else type(exc).__name__


SECRET_FINGERPRINT_KEY = "jwt_secret_fingerprint"


async def record_secret(session: AsyncSession, secret: str) -> bool:
    """Record which JWT secret the gateway starting now signs with; False when the gateway
    that started before it on this database used another one.

    Replicas must share the secret (each verifies tokens the others signed), and a replica
    left with its own generated secret refuses every other replica's sign-ins: a 401 with no
    clue why. The fingerprint is an HMAC of a fixed label under the secret, so the stored
    value says nothing about the secret itself.
    """
    fingerprint = hmac.new(secret.encode(), b"mlx-manager jwt secret", "sha256").hexdigest()
    row = await session.get(Setting, SECRET_FINGERPRINT_KEY)
    same = row is None or hmac.compare_digest(row.value, fingerprint)
    if row is None:
        session.add(Setting(key=SECRET_FINGERPRINT_KEY, value=fingerprint))
    elif not same:
        row.value = fingerprint
        session.add(row)
    await session.commit()
    return same
