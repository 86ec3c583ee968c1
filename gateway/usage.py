"""Usage accounting: one record per /v1 request, written to the database in batches.

The request path only appends to a list (no await, no I/O); a background task flushes every
second. Token counts come from the `usage` object the model server sends: in a JSON body, or
in the last SSE chunk of a stream (`stream_options.include_usage`), found by scanning the tail
of the bytes we relayed anyway, so nothing is parsed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.store.usage import record_usage

log = logging.getLogger("mlx_manager.usage")
TAIL_BYTES = 64 * 1024
FLUSH_SECONDS = 1.0
MAX_BUFFER = 50_000  # beyond this (database down), the oldest records are dropped
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

    def saw(self, chunk: bytes) -> None:
        self.tail += chunk
        if len(self.tail) > TAIL_BYTES:
            del self.tail[: len(self.tail) - TAIL_BYTES]


class UsageRecorder:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._buffer: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        # One flush at a time: a report that flushes must not read before an earlier,
        # concurrent flush has committed the rows it took from the buffer.
        self._flush_lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    def record(self, **values: Any) -> None:
        """Queue one row (column=value); never waits, never touches the database."""
        if len(self._buffer) >= MAX_BUFFER:
            del self._buffer[: MAX_BUFFER // 10]
        values.setdefault("created_at", datetime.now(UTC))
        self._buffer.append(values)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:
                log.exception("could not write usage records; will retry")

    async def flush(self) -> None:
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            async with self._sessions() as session:
                await record_usage(session, batch)
        except BaseException:  # cancelled at shutdown too: close() flushes again
            self._buffer[:0] = batch
            raise
