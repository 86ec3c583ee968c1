"""The counters behind per-key and per-user limits, kept where the database makes them exact.

- SQLite (one gateway): in memory. An admission is a plain function with no `await`, so in
  asyncio it is atomic and exact without a lock and costs no database write; the counts are
  written behind every second and read back at start, so a restart keeps the day's and the
  month's budgets.
- PostgreSQL (replicas): in the shared `rate_windows` rows, counted by conditional upserts
  (gateway/store/rate_windows.py), so N replicas together admit exactly the limit. If the
  database cannot be reached, each replica falls back to its own in-memory counters (limits
  then hold per replica) and says so in the log, rather than refusing or waving everything
  through.

A caller without limits (the usual case) costs nothing: `admit` returns None before any work.
What each count means is decided by gateway/limits.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.auth import Principal
from gateway.errors import TooManyRequests
from gateway.limits import (
    Check,
    Counts,
    Decision,
    Row,
    admission_rows,
    decide,
    minute_window,
    period_window,
    request_checks,
    token_rows,
    window_end,
)
from gateway.store import rate_windows

log = logging.getLogger("mlx_manager.limits")

SAVE_SECONDS = 1.0  # SQLite: how often the in-memory counts are written behind
PRUNE_SECONDS = 600.0  # how often rows of long-gone windows are deleted
_FALLBACK_LOG_EVERY = 30.0  # at most one "counting locally" warning per this many seconds


def checks_of(principal: Principal, now: float) -> list[Check]:
    return request_checks(
        principal.key_id, principal.key_limits, principal.user_id, principal.user_limits, now
    )


def refusal(decision: Decision) -> TooManyRequests:
    """The 429 of a refused admission, in OpenAI's shape: `type` is the kind of limit
    ("requests" or "tokens"), `code` rate_limit_exceeded, with Retry-After and x-ratelimit-*."""
    assert decision.denied is not None
    error = TooManyRequests(
        decision.message(), code="rate_limit_exceeded", headers=decision.headers()
    )
    error.error_type = decision.denied.kind
    return error


def _utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


class LocalCounts:
    """Counters in this process: exact for one gateway (no `await` between read and count)."""

    def __init__(self) -> None:
        self.counts: dict[Row, Counts] = {}
        self.dirty: set[Row] = set()

    def admit(self, checks: Sequence[Check], now: float) -> Decision:
        rows = admission_rows(checks)
        decision = decide(checks, {row: self.counts.get(row, Counts()) for row, _ in rows}, now)
        if decision.admitted:
            for row, limit in rows:
                if limit is not None:
                    old = self.counts.get(row, Counts())
                    self.counts[row] = Counts(old.requests + 1, old.tokens)
                    self.dirty.add(row)
        return decision

    def add_tokens(self, rows: Sequence[Row], tokens: int) -> None:
        for row in rows:
            old = self.counts.get(row, Counts())
            self.counts[row] = Counts(old.requests, old.tokens + tokens)
            self.dirty.add(row)

    def read(self, rows: Collection[Row]) -> dict[Row, Counts]:
        return {row: self.counts.get(row, Counts()) for row in rows}

    def take_dirty(self) -> dict[Row, Counts]:
        taken = {row: self.counts[row] for row in self.dirty if row in self.counts}
        self.dirty.clear()
        return taken

    def expire(self, now: float) -> None:
        """Forget windows that are over (and already written)."""
        self.counts = {
            row: counts
            for row, counts in self.counts.items()
            if row in self.dirty or window_end(row[1]) > now
        }


class Limiter:
    """Admits or refuses a request against its caller's limits; adds tokens when it ends."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, shared: bool) -> None:
        self._sessions = sessions
        # True on PostgreSQL: the rows are the counters; else `_local` is, written behind.
        self.shared = shared
        self._local = LocalCounts()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._fallback_logged = -_FALLBACK_LOG_EVERY

    @classmethod
    async def open(cls, sessions: async_sessionmaker[AsyncSession], *, shared: bool) -> Limiter:
        limiter = cls(sessions, shared=shared)
        if not shared:
            now = time.time()
            windows = [minute_window(now), period_window("day", now), period_window("month", now)]
            async with sessions() as session:
                limiter._local.counts = await rate_windows.load_windows(session, windows)
        limiter._loop = asyncio.create_task(limiter._housekeeping(), name="rate-limit-counters")
        return limiter

    async def admit(self, principal: Principal) -> Decision | None:
        """None when the caller has no limits; else the decision, already counted if admitted."""
        if principal.key_limits is None and principal.user_limits is None:
            return None
        now = time.time()
        checks = checks_of(principal, now)
        if not self.shared:
            return self._local.admit(checks, now)
        decision: Decision | None = None

        def allow(before: Mapping[Row, Counts]) -> bool:
            nonlocal decision
            decision = decide(checks, before, now)
            return decision.admitted

        try:
            async with self._sessions() as session:
                await rate_windows.count_request(session, admission_rows(checks), allow, _utc(now))
        except Exception as exc:
            self._counting_locally(exc)
            return self._local.admit(checks, now)
        assert decision is not None
        return decision

    def spend(self, principal: Principal, tokens: int) -> None:
        """Add a finished request's tokens to its caller's token windows (never waits)."""
        if tokens <= 0 or (principal.key_limits is None and principal.user_limits is None):
            return
        now = time.time()
        rows = token_rows(checks_of(principal, now))
        if not rows:
            return
        if not self.shared:
            self._local.add_tokens(rows, tokens)
            return
        task = asyncio.create_task(self._add_tokens(rows, tokens, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add_tokens(self, rows: list[Row], tokens: int, now: float) -> None:
        try:
            async with self._sessions() as session:
                await rate_windows.add_tokens(session, rows, tokens, _utc(now))
        except Exception as exc:
            self._counting_locally(exc)
            self._local.add_tokens(rows, tokens)

    async def current(self, rows: Collection[Row]) -> dict[Row, Counts]:
        """What these rows hold now (for /api/usage)."""
        if not self.shared:
            return self._local.read(rows)
        await self.settle()
        async with self._sessions() as session:
            return await rate_windows.read_counts(session, rows)

    async def settle(self) -> None:
        """Wait until every finished request's tokens are counted."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def save(self) -> None:
        """SQLite: write the changed counts behind."""
        if self.shared:
            return
        changed = self._local.take_dirty()
        if not changed:
            return
        try:
            async with self._sessions() as session:
                await rate_windows.save_counts(session, changed, _utc(time.time()))
        except BaseException:
            self._local.dirty.update(changed)  # written next time (or at close)
            raise

    def _counting_locally(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._fallback_logged >= _FALLBACK_LOG_EVERY:
            self._fallback_logged = now
            log.warning(
                "rate-limit counters unreachable in the database (%s: %s); counting in this "
                "gateway only until it is back",
                type(exc).__name__,
                exc,
            )

    async def _housekeeping(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(SAVE_SECONDS)
            try:
                await self.save()
                self._local.expire(time.time())
                if time.monotonic() - last_prune >= PRUNE_SECONDS:
                    last_prune = time.monotonic()
                    async with self._sessions() as session:
                        await rate_windows.prune(session, _utc(time.time()))
            except Exception:
                log.exception("could not write or prune rate-limit counters; will retry")

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await self.settle()
        await self.save()
