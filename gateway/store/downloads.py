"""Download rows (`downloads`): what the jobs in `gateway.hub.jobs` record so a restarted
gateway can resume them and the API can list them."""

from __future__ import annotations

from collections.abc import Iterable

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.tables import Download

# The columns a running download changes; the rest are fixed when it is created.
PROGRESS_FIELDS = (
    "status", "bytes_done", "bytes_total", "files_done", "files_total",
    "error", "updated_at", "finished_at", "commit_sha",
)  # fmt: skip


async def add_download(session: AsyncSession, record: Download) -> Download:
    session.add(record)
    await session.commit()
    await session.refresh(record)
    return record


async def get_download(session: AsyncSession, download_id: int, host: str) -> Download | None:
    """The download, if it belongs to `host` (or was made before downloads said where)."""
    row = await session.get(Download, download_id)
    return row if row is not None and row.host in ("", host) else None


async def list_downloads(
    session: AsyncSession, host: str, *, statuses: Iterable[str] | None = None
) -> list[Download]:
    """`host`'s downloads (and those made before downloads said where), newest first; only
    those in `statuses` when given."""
    query = (
        select(Download).where(col(Download.host).in_(("", host))).order_by(col(Download.id).desc())
    )
    if statuses is not None:
        query = query.where(col(Download.status).in_(tuple(statuses)))
    return list((await session.exec(query)).all())


async def save_progress(session: AsyncSession, record: Download) -> None:
    """Copy `record`'s progress onto its row. A row deleted meanwhile stays deleted: the
    record may be a job's in-memory copy that outlived it."""
    row = await session.get(Download, record.id)
    if row is None:
        return
    for name in PROGRESS_FIELDS:
        setattr(row, name, getattr(record, name))
    session.add(row)
    await session.commit()
