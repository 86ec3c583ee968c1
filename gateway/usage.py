"""Usage accounting: one record per /v1 request, spooled to local disk, committed in batches.

The request path makes the record (its own `record_id`: 128 random bits) and appends it to this
process's write-ahead spool (gateway/usage_spool.py: one `write(2)`, no await, no database)
before the response's last byte is sent, so a client that read its whole answer is always
accounted, even if the gateway is SIGKILLed right after. A background task commits the spool to
the database every second, then deletes what was committed. Inserts skip a `record_id` the table
already has, so a batch written again (its commit's outcome unknown, a crash between commit and
delete) never doubles. While the database is down, records stay spooled and the commit is
retried with a doubling wait (up to MLX_MANAGER_USAGE_RETRY_MAX); nothing is dropped. Past
MLX_MANAGER_USAGE_SPOOL_MAX_BYTES the gateway refuses new /v1 requests (503) rather than serve
what it cannot account for.

Token counts come from the `usage` object the model server sends: in a JSON body, or in the last
SSE chunk of a stream (`stream_options.include_usage`), found by scanning the tail of the bytes
we relayed anyway, so nothing is parsed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.errors import ServiceUnavailable
from gateway.store.usage import record_usage, refused
from gateway.usage_spool import Segment, UsageSpool, decode, read_lines

log = logging.getLogger("mlx_manager.usage")
TAIL_BYTES = 64 * 1024
FLUSH_SECONDS = 1.0
# Rows per insert (one transaction each): a large backlog after an outage is committed in
# steps, each read from the spool off the event loop.
BATCH_ROWS = 2000
# While the database stays down, repeat the warning at most this often.
OUTAGE_LOG_SECONDS = 60.0
USAGE_MODEL_CHARS = 200  # the `usage.model` column's length

# At most 15 digits: a longer number is no token count (and int() of 4300+ digits raises).
_PROMPT = re.compile(rb'"(?:prompt_tokens|input_tokens)"\s*:\s*(\d{1,15})(?!\d)')
_COMPLETION = re.compile(rb'"(?:completion_tokens|output_tokens)"\s*:\s*(\d{1,15})(?!\d)')


def tokens_in(tail: bytes) -> tuple[int, int]:
    """(prompt, completion) from the last usage numbers in the tail of a response."""
    prompt = _PROMPT.findall(tail)
    completion = _COMPLETION.findall(tail)
    return (int(prompt[-1]) if prompt else 0, int(completion[-1]) if completion else 0)


@dataclass(slots=True)
class RequestTap:
    """What the proxy learns about one request while relaying it."""

    started: float
    model: str = ""  # as the client sent it (bounded); "" until read
    profile: str = ""  # the profile it resolved to; "" when it did not
    status: int = 0
    first_byte: float | None = None
    tail: bytearray = field(default_factory=bytearray)
    accounted: bool = False  # the usage record is made (once: before the last byte, or at end)

    def saw(self, chunk: bytes) -> None:
        self.tail += chunk
        if len(self.tail) > TAIL_BYTES:
            del self.tail[: len(self.tail) - TAIL_BYTES]


# The usage columns a record carries besides record_id and created_at, with their defaults
# (a spool line from another gateway version may lack one).
FIELDS: dict[str, Any] = {
    "request_id": None,
    "user_id": None,
    "key_id": None,
    "model": "",
    "endpoint": "",
    "status": 0,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "latency_ms": 0.0,
    "ttfb_ms": None,
}


class UsageSpoolFull(ServiceUnavailable):
    code = "usage_spool_full"


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(values: dict[str, Any]) -> bytes:
    """One spool line; created_at as seconds since the epoch (or ISO 8601 when given)."""
    created = values.get("created_at")
    if isinstance(created, datetime):
        values = {**values, "created_at": created.isoformat()}
    return (_ENCODER.encode(values) + "\n").encode()


def to_row(record: dict[str, Any]) -> dict[str, Any]:
    """A spool record as a full `usage` row (raises ValueError/TypeError on a malformed one)."""
    row = {name: record.get(name, default) for name, default in FIELDS.items()}
    row["record_id"] = str(record["record_id"])
    created = record.get("created_at")
    if isinstance(created, str):
        row["created_at"] = datetime.fromisoformat(created)
    elif isinstance(created, int | float):
        row["created_at"] = datetime.fromtimestamp(created, UTC)
    else:
        row["created_at"] = datetime.now(UTC)
    return row


def _read_rows(segment: Segment, limit: int) -> tuple[list[tuple[dict[str, Any], bytes]], int]:
    """Rows (each with its spool line) from `segment`, and the offset after them. Runs in a
    worker thread: a backlog of a million lines must not stall the event loop."""
    lines, upto = read_lines(segment, limit)
    return _rows_of(lines, segment), upto


def _rows_of(lines: list[bytes], segment: Segment | None) -> list[tuple[dict[str, Any], bytes]]:
    where = segment.path if segment is not None else "memory"
    rows: list[tuple[dict[str, Any], bytes]] = []
    for line in lines:
        for record in decode([line], where):
            try:
                rows.append((to_row(record), line))
            except (KeyError, TypeError, ValueError) as exc:
                log.error("skipping a malformed usage record in %s (%s): %r", where, exc, line)
    return rows


class UsageRecorder:
    """Spools each record at once (the request path), commits the spool in the background."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        spool: UsageSpool,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        retry_max: float = 10.0,
        batch_timeout: float = 30.0,
    ) -> None:
        self._sessions = sessions
        self.spool = spool
        self._flush_seconds = flush_seconds
        self._retry_max = max(retry_max, flush_seconds)
        self._batch_timeout = batch_timeout
        self._delay = flush_seconds  # until the next attempt; doubles while the database fails
        self._task: asyncio.Task[None] | None = None
        # One flush at a time: a report that flushes must not read before an earlier,
        # concurrent flush has committed the rows it took from the spool.
        self._flush_lock = asyncio.Lock()
        self._failing_since: float | None = None
        self._last_warning = 0.0
        self._full_logged = False

    def start(self) -> None:
        """Open the spool, take over what dead gateways of this machine left, start writing."""
        self.spool.open()
        self.spool.adopt_dead()
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    def admit(self) -> None:
        """Refuse a new /v1 request while the spool is full: serving it would mean an answer
        nobody can account for. Requests already admitted are still spooled (the cap is
        exceeded by at most their records)."""
        if not self.spool.full:
            if self._full_logged:
                self._full_logged = False
                log.warning("usage spool below its cap again: /v1 requests are admitted")
            return
        if not self._full_logged:
            self._full_logged = True
            log.error(
                "usage spool full (%d bytes, MLX_MANAGER_USAGE_SPOOL_MAX_BYTES=%d): refusing "
                "/v1 requests until the database takes the spooled records",
                self.spool.pending_bytes,
                self.spool.max_bytes,
            )
        retry = max(1, math.ceil(self._delay))
        raise UsageSpoolFull(
            "the gateway cannot record usage right now (its database is unreachable and the "
            "local usage spool is full); retry later",
            headers={"Retry-After": str(retry)},
        )

    def record(self, **values: Any) -> None:
        """Spool one row (column=value) before returning; never waits, never touches the
        database."""
        # 128 random bits as 32 hex digits, like uuid4().hex at a quarter of its cost (this
        # runs once per request: see the module docstring of gateway/usage_spool.py).
        values["record_id"] = os.urandom(16).hex()
        values.setdefault("created_at", time.time())
        self.spool.append(encode(values))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            async with asyncio.timeout(self._batch_timeout):
                await self.flush()
        except Exception as exc:
            log.warning(
                "could not write the last usage records (%s); they stay in %s for the next "
                "gateway start on this machine",
                type(exc).__name__,
                self.spool.directory,
            )
        finally:
            self.spool.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._delay)
            try:
                # A replica of this machine that died since (and is not restarted) left its
                # spool: take it over, or its records would wait for the next start.
                self.spool.adopt(await asyncio.to_thread(self.spool.dead_segments))
                await self.flush()
            except Exception as exc:
                self._delay = min(self._delay * 2, self._retry_max)
                self._failed(exc)
            else:
                self._delay = self._flush_seconds

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._last_warning < OUTAGE_LOG_SECONDS:
            return
        self._last_warning = now
        log.warning(
            "could not write usage records to the database (%s: %s); %d bytes stay spooled in "
            "%s, retried every %.0f s at most",
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
            self.spool.pending_bytes,
            self.spool.directory,
            self._retry_max,
        )

    async def flush(self) -> None:
        """Commit everything spooled so far; raises (and keeps it all) if the database fails."""
        async with self._flush_lock:
            await self._flush()
        if self._failing_since is not None:
            log.warning(
                "usage records reach the database again (after %.0f s)",
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None

    async def _flush(self) -> None:
        spool = self.spool
        if spool.unwritten:
            lines = list(spool.unwritten)
            await self._insert(_rows_of(lines, None), None)
            del spool.unwritten[: len(lines)]
        for segment in list(spool.closed):
            await self._commit(segment)
        spool.rotate()  # only once the older segments are in: an outage grows one file
        for segment in list(spool.closed):
            await self._commit(segment)

    async def _commit(self, segment: Segment) -> None:
        while segment in self.spool.closed:
            rows, upto = await asyncio.to_thread(_read_rows, segment, BATCH_ROWS)
            if rows:
                await self._insert(rows, segment)
            if upto == segment.done:  # the file ends early (cut short): nothing more to read
                upto = segment.size
            self.spool.committed(segment, upto)

    async def _insert(
        self, rows: list[tuple[dict[str, Any], bytes]], segment: Segment | None
    ) -> None:
        """Insert rows in one transaction. If the database refuses the batch as invalid (not
        unreachable: that raises and is retried), insert row by row and set the refused rows
        aside, so one bad row never blocks accounting."""
        if not rows:
            return
        try:
            async with asyncio.timeout(self._batch_timeout), self._sessions() as session:
                await record_usage(session, [row for row, _ in rows])
            return
        except Exception as exc:
            if not refused(exc):
                raise
            log.warning("a usage batch was refused (%s); inserting its rows one by one", exc)
        refused_lines: list[bytes] = []
        for row, line in rows:
            try:
                async with asyncio.timeout(self._batch_timeout), self._sessions() as session:
                    await record_usage(session, [row])
            except Exception as exc:
                if not refused(exc):
                    raise
                refused_lines.append(line)
                log.error("the database refused a usage record (%s): %r", exc, line)
        if refused_lines and segment is not None:
            path = self.spool.reject(segment, refused_lines)
            log.error("%d refused usage records are kept in %s", len(refused_lines), path)
