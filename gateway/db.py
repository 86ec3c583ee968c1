"""The async database engine and Alembic migrations.

SQLite is the default, so the engine turns on what SQLite leaves off: WAL (readers never block
the writer), foreign keys (cascades really happen) and a busy timeout (concurrent writers wait
instead of failing with "database is locked"). PostgreSQL (asyncpg) is the shared database of
several gateway replicas: there the migrations take an advisory lock, so replicas starting
together apply each revision once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.settings import make_private, make_private_dir

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


# Any constant shared by every replica: the key of the advisory lock the migrations hold.
MIGRATION_LOCK_KEY = 0x6D6C786D  # "mlxm"

# Plain driver-less URLs, as users write them, mapped to the async drivers the gateway uses
# (SQLAlchemy would pick the sync drivers psycopg2 / pysqlite, which an async engine refuses).
_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


def async_url(url: str) -> str:
    """`url` with an async driver: `postgres(ql)://` -> `postgresql+asyncpg://`,
    `sqlite://` -> `sqlite+aiosqlite://`; URLs naming a driver are kept as they are."""
    scheme, sep, rest = url.partition("://")
    return f"{_ASYNC_DRIVERS.get(scheme, scheme)}{sep}{rest}" if sep else url


def create_engine(url: str) -> AsyncEngine:
    url = async_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            private_sqlite_files(Path(path))
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True)


def private_sqlite_files(path: Path) -> None:
    """Create the database file 0600 before SQLite does, and tighten an existing one and its
    `-wal`/`-shm` to 0600: they hold password hashes and profile env secrets.

    SQLite creates the WAL and shared-memory files with the database file's own permissions,
    so a 0600 database keeps the new ones private too. A missing folder is made 0700; an
    existing one is left as it is (it may be anything the operator chose).
    """
    if not path.parent.exists():
        make_private_dir(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        make_private(file)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision`; runs at every start, a no-op when already there."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Held to the end of this transaction (Alembic's DDL runs in it): a second replica
            # waits here, then finds the schema at head and does nothing.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), revision))
