"""Rate-limit counters (`rate_windows`): requests and tokens per subject and window.

On PostgreSQL these rows are the counters every replica shares: a request is counted with a
conditional upsert (`... ON CONFLICT DO UPDATE SET requests = requests + 1 WHERE requests <
limit RETURNING ...`), which takes the row's lock, so concurrent replicas can never admit more
than the limit; a refused admission rolls its transaction back, undoing what it counted on the
other rows. On SQLite (one gateway) the counters live in memory and these rows are their
write-behind copy, read back at start so budgets survive a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, tuple_
from sqlalchemy import select as sql_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.limits import Counts, Row
from gateway.tables import RateWindow

# How long a row is kept after its window can no longer be current (`prune`).
_KEEP = {
    "minute:": timedelta(minutes=5),
    "day:": timedelta(days=2),
    "month:": timedelta(days=62),
}


def _insert(conn: AsyncConnection) -> Any:
    """INSERT with ON CONFLICT, in the connection's dialect (both speak the same upsert)."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(RateWindow)


async def count_request(
    session: AsyncSession,
    rows: Sequence[tuple[Row, int | None]],
    allow: Callable[[Mapping[Row, Counts]], bool],
    now: datetime,
) -> dict[Row, Counts]:
    """Count one request in each row that has a request limit (only while under it), read the
    others, and commit only if `allow` accepts the counts as they were before this request;
    otherwise roll back, so a refused request counts nowhere. Returns those counts.

    `rows` must come in one global order (`gateway.limits.admission_rows`): each upsert holds
    its row's lock until the commit, and the same order everywhere means no deadlock.
    """
    conn = await session.connection()
    before: dict[Row, Counts] = {}
    for (subject, window), limit in rows:
        if limit is None:
            before[(subject, window)] = await _read_one(conn, subject, window)
            continue
        insert = _insert(conn)
        statement = (
            insert.values(subject=subject, window=window, requests=1, tokens=0, updated_at=now)
            .on_conflict_do_update(
                index_elements=[RateWindow.subject, RateWindow.window],
                set_={"requests": RateWindow.requests + 1, "updated_at": now},
                where=col(RateWindow.requests) < limit,
            )
            .returning(col(RateWindow.requests), col(RateWindow.tokens))
        )
        counted = (await conn.execute(statement)).first()
        if counted is None:  # at the limit: the row is locked but unchanged
            before[(subject, window)] = await _read_one(conn, subject, window)
        else:
            before[(subject, window)] = Counts(int(counted[0]) - 1, int(counted[1]))
    if allow(before):
        await session.commit()
    else:
        await session.rollback()
    return before


async def _read_one(conn: AsyncConnection, subject: str, window: str) -> Counts:
    query = sql_select(col(RateWindow.requests), col(RateWindow.tokens)).where(
        col(RateWindow.subject) == subject, col(RateWindow.window) == window
    )
    found = (await conn.execute(query)).first()
    return Counts() if found is None else Counts(int(found[0]), int(found[1]))


async def add_tokens(
    session: AsyncSession, rows: Sequence[Row], tokens: int, now: datetime
) -> None:
    """Add a finished request's tokens to each row (atomically: replicas add concurrently)."""
    conn = await session.connection()
    for subject, window in rows:
        statement = (
            _insert(conn)
            .values(subject=subject, window=window, requests=0, tokens=tokens, updated_at=now)
            .on_conflict_do_update(
                index_elements=[RateWindow.subject, RateWindow.window],
                set_={"tokens": RateWindow.tokens + tokens, "updated_at": now},
            )
        )
        await conn.execute(statement)
    await session.commit()


async def read_counts(session: AsyncSession, rows: Collection[Row]) -> dict[Row, Counts]:
    """The counts of these rows (a missing row counts nothing)."""
    if not rows:
        return {}
    key = tuple_(col(RateWindow.subject), col(RateWindow.window))
    query = sql_select(
        col(RateWindow.subject),
        col(RateWindow.window),
        col(RateWindow.requests),
        col(RateWindow.tokens),
    ).where(key.in_(list(rows)))
    conn = await session.connection()
    found = {(r[0], r[1]): Counts(int(r[2]), int(r[3])) for r in (await conn.execute(query)).all()}
    return {row: found.get(row, Counts()) for row in rows}


async def load_windows(session: AsyncSession, windows: Collection[str]) -> dict[Row, Counts]:
    """Every subject's counts in these windows (the current minute, day and month)."""
    query = sql_select(
        col(RateWindow.subject),
        col(RateWindow.window),
        col(RateWindow.requests),
        col(RateWindow.tokens),
    ).where(col(RateWindow.window).in_(list(windows)))
    conn = await session.connection()
    return {(r[0], r[1]): Counts(int(r[2]), int(r[3])) for r in (await conn.execute(query)).all()}


async def save_counts(session: AsyncSession, counts: Mapping[Row, Counts], now: datetime) -> None:
    """Write these counts as they are (the one SQLite gateway owns them)."""
    if not counts:
        return
    conn = await session.connection()
    for (subject, window), value in counts.items():
        insert = _insert(conn)
        statement = insert.values(
            subject=subject,
            window=window,
            requests=value.requests,
            tokens=value.tokens,
            updated_at=now,
        ).on_conflict_do_update(
            index_elements=[RateWindow.subject, RateWindow.window],
            set_={
                "requests": insert.excluded.requests,
                "tokens": insert.excluded.tokens,
                "updated_at": now,
            },
        )
        await conn.execute(statement)
    await session.commit()


async def prune(session: AsyncSession, now: datetime) -> int:
    """Delete rows whose window is long over; returns how many."""
    conn = await session.connection()
    removed = 0
    for prefix, keep in _KEEP.items():
        statement = delete(RateWindow).where(
            col(RateWindow.window).startswith(prefix), col(RateWindow.updated_at) < now - keep
        )
        result: Any = await conn.execute(statement)
        removed += int(result.rowcount or 0)
    await session.commit()
    return removed
