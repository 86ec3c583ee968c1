"""Usage rows (`usage`): the recorder's batches in, totals per user, model or key out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import case, func, update
from sqlalchemy import exc as sa_exc
from sqlalchemy import select as sql_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.tables import ApiKey, Usage, User

GroupBy = Literal["user", "model", "key"]
GROUPS: tuple[GroupBy, ...] = ("user", "model", "key")


async def record_usage(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert a batch of usage rows (one executemany) and mark their API keys used now.

    Idempotent: a row whose `record_id` is already stored is skipped (ON CONFLICT DO NOTHING),
    so a batch written again after a commit whose outcome was unknown doubles nothing. A user
    or key deleted since the request (their rows would break the foreign key and block every
    later batch) is written as NULL, as the foreign keys' ON DELETE SET NULL would have done.
    """
    conn = await session.connection()
    rows = await _existing_owners(session, rows)
    dialect = conn.dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(Usage).on_conflict_do_nothing(
            index_elements=["record_id"]
        )
    elif dialect == "sqlite":
        statement = sqlite.insert(Usage).on_conflict_do_nothing(index_elements=["record_id"])
    else:  # pragma: no cover - the gateway runs on SQLite or PostgreSQL only
        raise RuntimeError(f"usage rows cannot be written idempotently on {dialect}")
    await conn.execute(statement, rows)
    key_ids = {row["key_id"] for row in rows if row.get("key_id") is not None}
    if key_ids:
        await conn.execute(
            update(ApiKey).where(col(ApiKey.id).in_(key_ids)).values(last_used_at=datetime.now(UTC))
        )
    await session.commit()


def refused(exc: BaseException) -> bool:
    """Whether the database refused a batch for its data (a constraint, a value too long),
    which writing it again cannot fix, as opposed to being unreachable or busy. (SQLite's
    driver raises a bare OverflowError for an integer beyond 64 bits.)"""
    return isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError | OverflowError)


async def _existing_owners(
    session: AsyncSession, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`rows` with user_id/key_id set to None where that user or key no longer exists."""
    conn = await session.connection()
    user_ids = {row["user_id"] for row in rows if row.get("user_id") is not None}
    key_ids = {row["key_id"] for row in rows if row.get("key_id") is not None}
    users: set[Any] = set()
    keys: set[Any] = set()
    if user_ids:
        found = await conn.execute(sql_select(col(User.id)).where(col(User.id).in_(user_ids)))
        users = set(found.scalars())
    if key_ids:
        found = await conn.execute(sql_select(col(ApiKey.id)).where(col(ApiKey.id).in_(key_ids)))
        keys = set(found.scalars())
    if users == user_ids and keys == key_ids:
        return rows
    return [
        {
            **row,
            "user_id": row.get("user_id") if row.get("user_id") in users else None,
            "key_id": row.get("key_id") if row.get("key_id") in keys else None,
        }
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """One line of the report: what `id` (a user id, model name or key id) used."""

    id: Any
    label: Any  # users by email, keys by "name (prefix...)", models by name
    requests: int
    prompt_tokens: int
    completion_tokens: int
    avg_latency_ms: float
    errors: int


async def usage_groups(
    session: AsyncSession,
    group_by: GroupBy,
    *,
    user_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[UsageGroup]:
    """Totals grouped by `group_by` over [since, until); only `user_id`'s rows when given."""
    column: Any = {"user": Usage.user_id, "model": Usage.model, "key": Usage.key_id}[group_by]
    query = sql_select(
        column,
        func.count(),
        func.coalesce(func.sum(Usage.prompt_tokens), 0),
        func.coalesce(func.sum(Usage.completion_tokens), 0),
        func.avg(Usage.latency_ms),
        func.sum(case((col(Usage.status) >= 400, 1), else_=0)),
    ).group_by(column)
    if user_id is not None:
        query = query.where(col(Usage.user_id) == user_id)
    if since is not None:
        query = query.where(col(Usage.created_at) >= since)
    if until is not None:
        query = query.where(col(Usage.created_at) < until)
    conn = await session.connection()
    rows = (await conn.execute(query)).all()
    labels = await _labels(session, group_by, [row[0] for row in rows])
    return [
        UsageGroup(
            id=row[0],
            label=labels.get(row[0], row[0]),
            requests=row[1],
            prompt_tokens=int(row[2]),
            completion_tokens=int(row[3]),
            avg_latency_ms=round(float(row[4] or 0), 2),
            errors=int(row[5] or 0),
        )
        for row in rows
    ]


async def _labels(session: AsyncSession, group_by: GroupBy, ids: list[Any]) -> dict[Any, str]:
    """Readable names for ids: users by email, keys by name."""
    wanted = [i for i in ids if i is not None]
    if group_by == "user" and wanted:
        users = (await session.exec(select(User).where(col(User.id).in_(wanted)))).all()
        return {u.id: u.email for u in users}
    if group_by == "key" and wanted:
        keys = (await session.exec(select(ApiKey).where(col(ApiKey.id).in_(wanted)))).all()
        return {k.id: f"{k.name} ({k.prefix}...)" for k in keys}
    return {}
