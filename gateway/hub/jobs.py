"""Background model downloads: one task each, progress in memory, state in the database.

Life of a download: `start()` plans it with the hub at once (so an unknown repo, a gated one,
a dead network or a full disk is the caller's error, not a failed record later), records it
as ``pending`` and starts its task; the task waits for a slot (`MAX_ACTIVE` run at a time),
turns ``downloading``, and ends ``completed``, ``failed`` or ``cancelled``.

* Same model twice: asking for a model (and revision) that is already pending or downloading
  returns that download, including while its plan is still being fetched.
* Progress: `TransferProgress` counters, sampled every `TICK_SECONDS` by a ticker that
  smooths the rate (exponential moving average), derives the ETA, publishes an event to SSE
  subscribers and writes the row - so the database sees at most one write per tick.
* Cancel (`cancel()`) means "I do not want this model": the transfer stops and the unfinished
  revision is removed from disk (partial files, and files already completed for a snapshot
  that is still incomplete; an already-complete model is never touched). A failed download
  keeps its partial files so that starting it again resumes; cancelling it discards them.
* Interrupted (gateway stopped or killed): the row stays ``pending``/``downloading`` with the
  commit it began on, and `open()` resumes it: same commit, partial files continued by Range.
* Stale partial files nobody owns are cleaned at `open()` (see `hf_cache.clean_stale_partials`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway import store
from gateway.errors import Conflict, GatewayError, NotFound
from gateway.hub import cache as hf_cache
from gateway.hub.catalog import LocalCatalog
from gateway.hub.client import (
    OFFLINE_MESSAGE,
    TRANSIENT_ERRORS,
    DownloadPlan,
    OfflineMode,
    call_hub,
    check_repo_id,
    plan_download,
)
from gateway.hub.transfer import (
    RETRY_BASE_SECONDS,
    TransferProgress,
    check_free_space,
    download_snapshot,
    free_bytes,
    new_client,
)
from gateway.settings import Settings
from gateway.tables import Download
from gateway.types import iso_utc, utcnow

log = logging.getLogger("mlx_manager.downloads")

MAX_ACTIVE = 2
TICK_SECONDS = 0.5
RATE_TIME_CONSTANT = 3.0  # seconds; the smoothing window of the rate
PLAN_ATTEMPTS = 5  # a resumed download waits this many tries for the hub to come back
UNOWNED_PARTIAL_MAX_AGE = 24 * 3600.0
DEFAULT_REVISION = "main"
UNFINISHED = ("pending", "downloading")


@dataclass(eq=False)
class _Active:
    """A download this process is running: the row, live counters and its task."""

    record: Download
    progress: TransferProgress = field(default_factory=TransferProgress)
    rate: float | None = None
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    sampled_at: float = 0.0
    sampled_bytes: int = 0

    @property
    def id(self) -> int:
        assert self.record.id is not None
        return self.record.id

    def eta(self) -> float | None:
        total = self.record.bytes_total
        if not self.rate or total is None or self.record.status != "downloading":
            return None
        return max(0.0, (total - self.record.bytes_done) / self.rate)


class _Subscriber:
    """Latest view per download since the last read: a slow reader gets fresh state, never a
    growing backlog."""

    def __init__(self) -> None:
        self.pending: dict[int, dict[str, Any]] = {}
        self.ready = asyncio.Event()

    def push(self, view: dict[str, Any]) -> None:
        self.pending[view["id"]] = view
        self.ready.set()


def download_json(record: Download, active: _Active | None = None) -> dict[str, Any]:
    """A download as the API shows it: its row, plus rate and ETA while it transfers."""
    total = record.bytes_total
    return {
        "id": record.id,
        "model_id": record.model_id,
        "host": record.host or None,
        "revision": record.revision,
        "commit_sha": record.commit_sha,
        "status": record.status,
        "bytes_done": record.bytes_done,
        "bytes_total": total,
        "progress": round(record.bytes_done / total, 4) if total else None,
        "files_done": record.files_done,
        "files_total": record.files_total,
        "rate_bytes_per_second": round(active.rate, 1) if active and active.rate else None,
        "eta_seconds": _round(active.eta()) if active else None,
        "error": record.error,
        "created_at": iso_utc(record.created_at),
        "updated_at": iso_utc(record.updated_at),
        "finished_at": iso_utc(record.finished_at),
    }


def _round(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else round(value, 1)


class DownloadManager:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        cache: Path,
        catalog: LocalCatalog | None = None,
        *,
        retry_base_seconds: float = RETRY_BASE_SECONDS,
        free_bytes: Callable[[Path], int] = free_bytes,
        host: str | None = None,
    ) -> None:
        """`retry_base_seconds` (the first pause before a failed transfer resumes) and
        `free_bytes` (how free disk space is measured) are seams for tests: a quick retry
        after many cut connections, a full disk."""
        self.settings = settings
        self.host = host or socket.gethostname()  # whose downloads these are (replicas)
        self._retry_base_seconds = retry_base_seconds
        self._free_bytes = free_bytes
        self.cache = cache
        self.catalog = catalog or LocalCatalog(cache)
        self._sessions = sessions
        self._active: dict[int, _Active] = {}
        self._planning: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self._slots = asyncio.Semaphore(MAX_ACTIVE)
        self._subscribers: set[_Subscriber] = set()
        self._client: httpx.AsyncClient | None = None
        self._closing = False
        # Bytes received since the gateway started (for metrics); resumed bytes not recounted.
        self.transferred_bytes = 0

    # ---- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Resume what a stopped (or killed) gateway left unfinished, then clean stale partials."""
        async with self._sessions() as session:
            rows = await store.downloads.list_downloads(session, self.host, statuses=UNFINISHED)
        for record in rows:
            if self.settings.offline_mode:
                record.error = "waiting: " + OFFLINE_MESSAGE
                await self._save(record)
                continue
            log.info("resuming download %s of %s", record.id, record.model_id)
            self._launch(_Active(record=record), plan=None)
        owned = await self._owned_partials()
        removed = await asyncio.to_thread(
            hf_cache.clean_stale_partials, self.cache, owned, UNOWNED_PARTIAL_MAX_AGE
        )
        for path in removed:
            log.info("removed stale partial file %s", path)

    async def close(self) -> None:
        """Stop every transfer; rows stay unfinished so the next start resumes them."""
        self._closing = True
        tasks = [a.task for a in self._active.values() if a.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _owned_partials(self) -> list[Path]:
        async with self._sessions() as session:
            rows = await store.downloads.list_downloads(
                session, self.host, statuses=(*UNFINISHED, "failed")
            )

        def find() -> list[Path]:
            paths: list[Path] = []
            for row in rows:
                folder = hf_cache.find_repo_folder(self.cache, row.model_id)
                if folder is not None and row.commit_sha:
                    paths += hf_cache.partials_of(folder, row.commit_sha)
            return paths

        return await asyncio.to_thread(find)

    # ---- the API -------------------------------------------------------------------------

    async def start(
        self, model_id: str, revision: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Start (or join) a download; returns its view and whether it is new."""
        if self.settings.offline_mode:
            raise OfflineMode(OFFLINE_MESSAGE)
        model_id = check_repo_id(model_id)
        revision = (revision or DEFAULT_REVISION).strip() or DEFAULT_REVISION
        existing = self._find_unfinished(model_id, revision)
        if existing is not None:
            return download_json(existing.record, existing), False
        key = (model_id.lower(), revision)
        planning = self._planning.get(key)
        if planning is not None:
            return await asyncio.shield(planning), False
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._planning[key] = future
        try:
            view, created = await self._create(model_id, revision)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        else:
            future.set_result(view)
            return view, created
        finally:
            del self._planning[key]

    async def _create(self, model_id: str, revision: str) -> tuple[dict[str, Any], bool]:
        plan = await call_hub(plan_download, model_id, revision, repo_id=model_id)
        existing = self._find_unfinished(plan.repo_id, plan.commit)
        if existing is not None:  # e.g. "main" and its sha: the same files
            return download_json(existing.record, existing), False
        await asyncio.to_thread(check_free_space, plan, self.cache, self._free_bytes)
        record = Download(
            model_id=plan.repo_id,
            host=self.host,
            revision=revision,
            commit_sha=plan.commit,
            status="pending",
            bytes_total=plan.total_bytes,
            files_total=len(plan.files),
        )
        async with self._sessions() as session:
            await store.downloads.add_download(session, record)
        active = _Active(record=record)
        self._launch(active, plan)
        self._publish(active)
        return download_json(record, active), True

    async def cancel(self, download_id: int) -> dict[str, Any]:
        active = self._active.get(download_id)
        if active is not None:
            assert active.task is not None
            if active.record.status in UNFINISHED:  # not when it is just saving its success
                active.cancel_requested = True
                active.task.cancel()
            await asyncio.gather(active.task, return_exceptions=True)
            return download_json(active.record)
        record = await self._load(download_id)
        if record.status == "completed":
            raise Conflict(
                f"download {download_id} already completed; to remove the model use "
                f"DELETE /api/models/local/{record.model_id}",
                code="download_finished",
            )
        if record.status in ("failed", *UNFINISHED):
            # Failed (or unfinished in offline mode): nothing runs, discard what it left -
            # unless a newer download of the same commit is continuing those very files.
            if not self._commit_in_use(record):
                await self._discard(record)
            self._finish(record, "cancelled", "cancelled by request")
            await self._save(record)
            self._publish_record(record)
        return download_json(record)

    async def get(self, download_id: int) -> dict[str, Any]:
        active = self._active.get(download_id)
        if active is not None:
            return download_json(active.record, active)
        return download_json(await self._load(download_id))

    async def views(self) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            rows = await store.downloads.list_downloads(session, self.host)
        views = []
        for row in rows:
            active = self._active.get(row.id) if row.id is not None else None
            views.append(download_json(active.record, active) if active else download_json(row))
        return views

    def unfinished_models(self) -> set[str]:
        """Lower-cased ids of models being downloaded right now."""
        return {a.record.model_id.lower() for a in self._active.values()}

    async def events(self, keepalive: float) -> AsyncIterator[dict[str, Any] | None]:
        """Views of downloads as they change: first every running one, then each update;
        None after `keepalive` seconds without one (so a stream can prove it is alive)."""
        subscriber = _Subscriber()
        for active in self._active.values():
            subscriber.push(download_json(active.record, active))
        self._subscribers.add(subscriber)
        try:
            while True:
                try:
                    await asyncio.wait_for(subscriber.ready.wait(), keepalive)
                except TimeoutError:
                    yield None
                    continue
                subscriber.ready.clear()
                batch, subscriber.pending = subscriber.pending, {}
                for view in batch.values():
                    yield view
        finally:
            self._subscribers.discard(subscriber)

    async def _load(self, download_id: int) -> Download:
        async with self._sessions() as session:
            record = await store.downloads.get_download(session, download_id, self.host)
        if record is None:
            raise NotFound(f"no download with id {download_id}", code="download_not_found")
        return record

    def _commit_in_use(self, record: Download) -> bool:
        return any(
            a.record.commit_sha == record.commit_sha
            and a.record.model_id.lower() == record.model_id.lower()
            for a in self._active.values()
        )

    def _find_unfinished(self, model_id: str, revision: str) -> _Active | None:
        wanted = model_id.lower()
        for active in self._active.values():
            record = active.record
            if (
                record.model_id.lower() == wanted
                and record.status in UNFINISHED
                and not active.cancel_requested
                and revision in (record.revision, record.commit_sha)
            ):
                return active
        return None

    # ---- the task ------------------------------------------------------------------------

    def _launch(self, active: _Active, plan: DownloadPlan | None) -> None:
        self._active[active.id] = active
        active.task = asyncio.create_task(
            self._run(active, plan), name=f"download-{active.id}-{active.record.model_id}"
        )

    async def _run(self, active: _Active, plan: DownloadPlan | None) -> None:
        record = active.record
        try:
            async with self._slots:
                if plan is None:
                    plan = await self._replan(active)
                await asyncio.to_thread(check_free_space, plan, self.cache, self._free_bytes)
                record.status = "downloading"
                record.error = None
                await self._save(record)
                ticker = asyncio.create_task(self._tick(active))
                try:
                    await download_snapshot(
                        plan,
                        self.cache,
                        active.progress,
                        self._http(),
                        retry_base_seconds=self._retry_base_seconds,
                    )
                finally:
                    ticker.cancel()
                    await asyncio.gather(ticker, return_exceptions=True)
            self._sample(active)
            self._finish(record, "completed", None)
        except asyncio.CancelledError:
            if not active.cancel_requested:  # the gateway is stopping: resume at next start
                self._sample(active)
                with contextlib.suppress(Exception):
                    await self._save(record)
                raise
            await self._discard(record)
            self._finish(record, "cancelled", "cancelled by request")
        except GatewayError as exc:
            log.warning("download %s of %s failed: %s", record.id, record.model_id, exc.message)
            self._finish(record, "failed", exc.message)
        except Exception as exc:
            log.exception("download %s of %s failed", record.id, record.model_id)
            self._finish(record, "failed", f"unexpected error: {exc}; see the gateway log")
        finally:
            if record.status not in UNFINISHED:
                self._active.pop(active.id, None)
        await self._save(record)
        self.catalog.invalidate()
        self._publish(active)

    async def _replan(self, active: _Active) -> DownloadPlan:
        """The plan of a resumed download: its recorded commit, so partial files still fit.
        Waits (with backoff) for a hub that is not reachable yet, e.g. right after boot."""
        record = active.record
        revision = record.commit_sha or record.revision or DEFAULT_REVISION
        for attempt in range(1, PLAN_ATTEMPTS + 1):
            try:
                plan = await call_hub(
                    plan_download, record.model_id, revision, repo_id=record.model_id
                )
            except TRANSIENT_ERRORS as exc:
                if attempt == PLAN_ATTEMPTS:
                    raise
                record.error = (
                    f"waiting for the hub (attempt {attempt}/{PLAN_ATTEMPTS}): {exc.message}"
                )
                await self._save(record)
                self._publish(active)
                await asyncio.sleep(min(30.0, 2.0**attempt))
                continue
            # Keep the requested revision name so refs/<branch> is written at the end.
            return DownloadPlan(
                repo_id=plan.repo_id,
                revision=record.revision or DEFAULT_REVISION,
                commit=plan.commit,
                files=plan.files,
                endpoint=plan.endpoint,
            )
        raise AssertionError("unreachable")

    async def _tick(self, active: _Active) -> None:
        active.sampled_at = time.monotonic()
        active.sampled_bytes = active.progress.transferred
        while True:
            await asyncio.sleep(TICK_SECONDS)
            before = (active.record.bytes_done, active.record.files_done)
            self._sample(active)
            if (active.record.bytes_done, active.record.files_done) != before:
                await self._save(active.record)
            self._publish(active)

    def _sample(self, active: _Active) -> None:
        progress = active.progress
        record = active.record
        now = time.monotonic()
        elapsed = now - active.sampled_at
        if active.sampled_at and elapsed > 0:
            instant = (progress.transferred - active.sampled_bytes) / elapsed
            if active.rate is None:
                active.rate = instant
            else:
                weight = 1 - math.exp(-elapsed / RATE_TIME_CONSTANT)
                active.rate += weight * (instant - active.rate)
        self.transferred_bytes += max(0, progress.transferred - active.sampled_bytes)
        active.sampled_at, active.sampled_bytes = now, progress.transferred
        if progress.total:
            record.bytes_total = progress.total
            record.bytes_done = progress.done
            record.files_total = progress.files_total
            record.files_done = progress.files_done
        record.error = (
            f"waiting for another process writing {progress.waiting_for_lock}"
            if progress.waiting_for_lock
            else None
        )

    @property
    def active_count(self) -> int:
        return len(self._active)

    def _finish(self, record: Download, status: str, error: str | None) -> None:
        record.status = status
        record.error = error
        record.finished_at = utcnow()

    async def _discard(self, record: Download) -> None:
        if record.commit_sha:
            freed = await asyncio.to_thread(
                hf_cache.discard_incomplete_revision, self.cache, record.model_id, record.commit_sha
            )
            log.info("cancelled download %s: removed %d bytes", record.id, freed)

    async def _save(self, record: Download) -> None:
        record.updated_at = utcnow()
        async with self._sessions() as session:
            await store.downloads.save_progress(session, record)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = new_client()
        return self._client

    def _publish(self, active: _Active) -> None:
        view = download_json(active.record, active)
        for subscriber in self._subscribers:
            subscriber.push(view)

    def _publish_record(self, record: Download) -> None:
        view = download_json(record)
        for subscriber in self._subscribers:
            subscriber.push(view)
