"""Download a planned snapshot into the HF cache, resuming partial files with HTTP Range.

Why not `snapshot_download`: huggingface-hub 2.x writes each file to a process-unique
``<etag>.<random>.incomplete`` and never reuses it, so a download killed with the gateway (or a
Ctrl-C'd CLI pull) starts every file over (see DESIGN.md). Here the hub client still supplies
the plan (commit, files, sizes, hashes), URLs and auth headers, but each file is streamed by
us into ``blobs/<etag>.incomplete``, continued with ``Range: bytes=<size>-`` after any
interruption, verified (size, then sha256 for LFS files or the git blob sha1 for the rest),
renamed to ``blobs/<etag>`` and linked from ``snapshots/<commit>/<path>``; ``refs/<revision>``
is written last, so the model becomes visible to loaders only once it is whole. The result is
byte-for-byte the layout huggingface-hub produces (and it resumes huggingface-hub 1.x partials).

Blob locks are huggingface-hub's own, so this never writes a blob that `hf download` or another
gateway process is writing at the same moment. The engine is async (httpx streaming, file
writes and hashing in worker threads) and is shared by the gateway and `mlx-manager model pull`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from filelock import FileLock, Timeout

from gateway.errors import GatewayError
from gateway.hub import cache as hf_cache
from gateway.hub.client import (
    DownloadPlan,
    FileNotOnHub,
    HubFailed,
    InsufficientStorage,
    RemoteFile,
    gated_error,
    status_error,
    unreachable_error,
)
from gateway.types import GIB

log = logging.getLogger("mlx_manager.downloads")

PARALLEL_FILES = 4
WRITE_BUFFER = 1024 * 1024
FLUSH_SECONDS = 1.0
MAX_ATTEMPTS = 6  # per file; each attempt resumes where the last one stopped
RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
LOCK_POLL_SECONDS = 0.25
FREE_SPACE_HEADROOM = 256 * 1024 * 1024


class DownloadError(GatewayError):
    status_code = 502
    error_type = "server_error"
    code = "download_failed"


class _Retry(Exception):
    """A transient failure: wait, then continue from what is on disk."""


class _Corrupt(Exception):
    """The finished file does not match its hash: start that file over."""


@dataclass
class TransferProgress:
    """Counters the transfer updates in place; readers (a ticker, a progress bar) poll them.

    `done` counts bytes on disk (resumed ones included); `transferred` only bytes received in
    this run, which is what a rate must be computed from.
    """

    total: int = 0
    done: int = 0
    transferred: int = 0
    files_total: int = 0
    files_done: int = 0
    waiting_for_lock: str | None = None
    _per_file: dict[str, int] = field(default_factory=dict)

    def start(self, plan: DownloadPlan, present: dict[str, int], complete: set[str]) -> None:
        self.total = plan.total_bytes
        self.files_total = len(plan.files)
        self._per_file = {f.path: present.get(f.path, 0) for f in plan.files}
        self.done = sum(self._per_file.values())
        self.files_done = len(complete)

    def set(self, path: str, on_disk: int) -> None:
        self.done += on_disk - self._per_file.get(path, 0)
        self._per_file[path] = on_disk

    def advance(self, path: str, received: int) -> None:
        self._per_file[path] = self._per_file.get(path, 0) + received
        self.done += received
        self.transferred += received

    def finish(self, file: RemoteFile) -> None:
        self.set(file.path, file.size)
        self.files_done += 1


# ---- sizing ----------------------------------------------------------------------------------


def present_bytes(plan: DownloadPlan, cache: Path) -> tuple[dict[str, int], set[str]]:
    """Bytes already on disk per file (complete blobs and partials), and the complete files."""
    folder = cache / hf_cache.repo_folder_name(plan.repo_id)
    present: dict[str, int] = {}
    complete: set[str] = set()
    for file in plan.files:
        blob = folder / "blobs" / file.etag
        if _size(blob) == file.size:
            present[file.path] = file.size
            complete.add(file.path)
        else:
            present[file.path] = min(_size(hf_cache.partial_path(folder, file.etag)), file.size)
    return present, complete


def free_bytes(path: Path) -> int:
    """Free space on the disk holding `path` (its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_free_space(
    plan: DownloadPlan, cache: Path, measure_free: Callable[[Path], int] = free_bytes
) -> int:
    """Raise a 507 unless the disk holds what is still missing (plus headroom); returns it.

    `measure_free` is the seam for a test's full disk (a real one cannot be arranged)."""
    present, _ = present_bytes(plan, cache)
    needed = plan.total_bytes - sum(present.values())
    free = measure_free(cache)
    if needed + FREE_SPACE_HEADROOM > free:
        raise InsufficientStorage(
            f"{plan.repo_id} needs {needed / GIB:.2f} GiB more, but only {free / GIB:.2f} GiB "
            f"is free on the disk of {cache}; free some space (e.g. DELETE "
            "/api/models/local/<id> or `mlx-manager model rm`) or point "
            "MLX_MANAGER_HF_CACHE_PATH at a bigger disk"
        )
    return needed


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---- the transfer ------------------------------------------------------------------------


def new_client() -> httpx.AsyncClient:
    """Redirects followed (LFS files live on a CDN; httpx drops Authorization when the host
    changes), a read timeout so a stalled stream becomes a retry, environment proxies kept."""
    return httpx.AsyncClient(
        follow_redirects=True,
        timeout=httpx.Timeout(30.0, connect=15.0),
        headers={"Accept-Encoding": "identity"},
    )


async def download_snapshot(
    plan: DownloadPlan,
    cache: Path,
    progress: TransferProgress,
    client: httpx.AsyncClient,
    *,
    sleep: Callable[[float], Any] = asyncio.sleep,
    retry_base_seconds: float = RETRY_BASE_SECONDS,
) -> Path:
    """Fetch every file of `plan` that is not complete yet; return the snapshot folder.

    Cancelling the task stops at once and leaves partial files for the next run to resume.
    A failed attempt is retried after `retry_base_seconds`, doubling each time (tests shorten
    it, so many cut connections resume quickly).
    """
    folder = cache / hf_cache.repo_folder_name(plan.repo_id)
    snapshot = folder / "snapshots" / plan.commit
    await asyncio.to_thread(_prepare, folder, snapshot, plan)
    present, complete = await asyncio.to_thread(present_bytes, plan, cache)
    progress.start(plan, present, complete)
    headers = await asyncio.to_thread(hub_headers)
    fetcher = _Fetcher(
        plan, cache, folder, snapshot, progress, client, headers, sleep, retry_base_seconds
    )
    slots = asyncio.Semaphore(PARALLEL_FILES)

    async def one(file: RemoteFile) -> None:
        async with slots:
            await fetcher.fetch(file)

    try:
        async with asyncio.TaskGroup() as group:
            for file in plan.files:
                group.create_task(one(file))
    except ExceptionGroup as failures:
        # The first file that failed is the story ("x failed its checksum twice"); the group's
        # own message ("unhandled errors in a TaskGroup") tells the user nothing.
        raise first_failure(failures) from failures
    if plan.revision != plan.commit:
        await asyncio.to_thread(hf_cache.write_ref, folder, plan.revision, plan.commit)
    return snapshot


def first_failure(failures: ExceptionGroup[Exception]) -> Exception:
    """The first of a task group's failures, a `GatewayError` (whose message is meant for the
    user) before anything else."""
    leaves = list(_leaves(failures))
    return next((e for e in leaves if isinstance(e, GatewayError)), leaves[0])


def _leaves(error: Exception) -> Iterator[Exception]:
    if isinstance(error, ExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def hub_headers() -> dict[str, str]:
    """What huggingface-hub would send: its user agent, and the token from HF_TOKEN (or a
    saved `hf auth login`). httpx drops the token itself on a redirect to another host."""
    import huggingface_hub

    headers = {"User-Agent": f"mlx-manager; huggingface_hub/{huggingface_hub.__version__}"}
    token = huggingface_hub.get_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _prepare(folder: Path, snapshot: Path, plan: DownloadPlan) -> None:
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    hf_cache.write_tree_listing(folder, plan.commit, {f.path: f.listing() for f in plan.files})


class _Hasher:
    """sha256 for LFS files; the git blob sha1 ("blob <size>\\0" + content) for the rest."""

    def __init__(self, file: RemoteFile) -> None:
        self.file = file
        self.reset()

    def reset(self) -> None:
        if self.file.sha256 is not None:
            self._hash = hashlib.sha256()
        else:
            self._hash = hashlib.sha1(usedforsecurity=False)
            self._hash.update(b"blob %d\0" % self.file.size)

    def update(self, data: bytes | bytearray) -> None:
        self._hash.update(data)

    def update_from(self, path: Path, length: int) -> None:
        with path.open("rb") as handle:
            remaining = length
            while remaining > 0:
                block = handle.read(min(remaining, 4 * WRITE_BUFFER))
                if not block:
                    break
                self._hash.update(block)
                remaining -= len(block)

    def matches(self) -> bool:
        return self._hash.hexdigest() == (self.file.sha256 or self.file.git_oid)


class _Fetcher:
    def __init__(
        self,
        plan: DownloadPlan,
        cache: Path,
        folder: Path,
        snapshot: Path,
        progress: TransferProgress,
        client: httpx.AsyncClient,
        headers: dict[str, str],
        sleep: Callable[[float], Any],
        retry_base_seconds: float,
    ) -> None:
        self.plan = plan
        self.cache = cache
        self.folder = folder
        self.snapshot = snapshot
        self.progress = progress
        self.client = client
        self.headers = headers
        self.sleep = sleep
        self.retry_base_seconds = retry_base_seconds

    async def fetch(self, file: RemoteFile) -> None:
        blob = self.folder / "blobs" / file.etag
        pointer = self.snapshot / file.path
        if await asyncio.to_thread(_size, blob) == file.size:
            await asyncio.to_thread(_link, pointer, blob)
            return
        lock = await self._lock(file)
        try:
            if await asyncio.to_thread(_size, blob) != file.size:  # someone may have finished it
                await self._download(file, blob)
            await asyncio.to_thread(_link, pointer, blob)
        finally:
            await asyncio.to_thread(lock.release)
        self.progress.finish(file)

    async def _lock(self, file: RemoteFile) -> FileLock:
        lock = await asyncio.to_thread(hf_cache.blob_lock, self.cache, self.plan.repo_id, file.etag)
        while True:
            try:
                await asyncio.to_thread(lock.acquire, timeout=0)
            except Timeout:
                self.progress.waiting_for_lock = file.path
                await asyncio.sleep(LOCK_POLL_SECONDS)
                continue
            if self.progress.waiting_for_lock == file.path:
                self.progress.waiting_for_lock = None
            return lock

    async def _download(self, file: RemoteFile, blob: Path) -> None:
        partial = hf_cache.partial_path(self.folder, file.etag)
        corrupt_once = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                await self._transfer(file, partial)
            except _Corrupt:
                await asyncio.to_thread(partial.unlink, missing_ok=True)
                self.progress.set(file.path, 0)
                if corrupt_once:
                    raise DownloadError(
                        f"{file.path} of {self.plan.repo_id} failed its checksum twice; the hub "
                        "may be serving a broken file, try again later"
                    ) from None
                corrupt_once = True
                continue
            except _Retry as exc:
                if attempt == MAX_ATTEMPTS:
                    raise DownloadError(
                        f"giving up on {file.path} of {self.plan.repo_id} after {attempt} "
                        f"attempts: {exc}. The partial file is kept: start the download again "
                        "to resume it"
                    ) from exc
                delay = min(RETRY_MAX_SECONDS, self.retry_base_seconds * 2 ** (attempt - 1))
                log.warning("%s: %s; retrying in %.1f s", file.path, exc, delay)
                await self.sleep(delay)
                continue
            await asyncio.to_thread(os.replace, partial, blob)
            return

    async def _transfer(self, file: RemoteFile, partial: Path) -> None:
        """One attempt: continue `partial` from its current size to the end, then verify."""
        hasher = _Hasher(file)
        offset = await asyncio.to_thread(_size, partial)
        if offset > file.size:
            await asyncio.to_thread(_truncate, partial)
            offset = 0
        if offset:
            await asyncio.to_thread(hasher.update_from, partial, offset)
        self.progress.set(file.path, offset)
        if offset < file.size:
            offset = await self._stream(file, partial, offset, hasher)
        if offset != file.size:
            raise _Retry(f"got {offset} of {file.size} bytes")
        if not hasher.matches():
            raise _Corrupt(file.path)

    async def _stream(self, file: RemoteFile, partial: Path, offset: int, hasher: _Hasher) -> int:
        from huggingface_hub import hf_hub_url

        url = hf_hub_url(
            self.plan.repo_id, file.path, revision=self.plan.commit, endpoint=self.plan.endpoint
        )
        headers = dict(self.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            async with self.client.stream("GET", url, headers=headers) as response:
                if response.status_code == 416:
                    await asyncio.to_thread(_truncate, partial)
                    self.progress.set(file.path, 0)
                    raise _Retry("the server refused to resume; starting the file over")
                self._check_status(response, file)
                if offset and response.status_code == 200:
                    # The server ignored Range: take the whole body from the top.
                    offset = 0
                    hasher.reset()
                    await asyncio.to_thread(_truncate, partial)
                    self.progress.set(file.path, 0)
                elif offset and not _range_starts_at(response, offset):
                    raise _Retry(
                        f"unexpected Content-Range {response.headers.get('Content-Range')}"
                    )
                handle = await asyncio.to_thread(partial.open, "ab")
                try:
                    return await self._write_body(file, response, handle, hasher, offset)
                finally:
                    await asyncio.to_thread(handle.close)
        except httpx.TimeoutException as exc:
            raise _Retry(f"the download stalled ({type(exc).__name__})") from exc
        except (httpx.TransportError, httpx.StreamError) as exc:
            if isinstance(exc, httpx.ConnectError) and not offset:
                raise _Retry(str(unreachable_error(self.plan.endpoint, exc))) from exc
            raise _Retry(f"connection lost ({exc or type(exc).__name__})") from exc

    async def _write_body(
        self,
        file: RemoteFile,
        response: httpx.Response,
        handle: IO[bytes],
        hasher: _Hasher,
        offset: int,
    ) -> int:
        buffer = bytearray()
        flushed_at = time.monotonic()
        try:
            async for chunk in response.aiter_raw():
                if offset + len(buffer) + len(chunk) > file.size:
                    raise _Corrupt(file.path)
                buffer += chunk
                self.progress.advance(file.path, len(chunk))
                # By size (few thread hops) or by time (a kill loses at most a second).
                if len(buffer) >= WRITE_BUFFER or time.monotonic() - flushed_at >= FLUSH_SECONDS:
                    full, buffer = buffer, bytearray()  # handed over whole: no copy
                    await asyncio.to_thread(_write, handle, hasher, full)
                    offset += len(full)
                    flushed_at = time.monotonic()
        finally:
            # Also when the connection breaks or the task is stopped: what arrived is kept,
            # so the next attempt (or the next start) asks only for the rest.
            if buffer:
                await asyncio.to_thread(_write, handle, hasher, buffer)
                offset += len(buffer)
        return offset

    def _check_status(self, response: httpx.Response, file: RemoteFile) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        code = response.headers.get("X-Error-Code")
        repo = self.plan.repo_id
        if code == "GatedRepo":
            raise gated_error(repo, self.plan.endpoint)
        if code == "EntryNotFound" or (status == 404 and code is None):
            raise FileNotOnHub(
                f"{file.path} of {repo}@{self.plan.commit[:12]} is gone from the hub; start "
                "the download again to fetch the current revision"
            )
        if status in (408, 429) or status >= 500:
            raise _Retry(f"the hub answered {status}")
        error = status_error(status, repo, self.plan.endpoint)
        if isinstance(error, HubFailed):
            raise _Retry(error.message)
        raise error


def _range_starts_at(response: httpx.Response, offset: int) -> bool:
    value: str = response.headers.get("Content-Range", "")
    unit, _, spec = value.partition(" ")
    return unit == "bytes" and spec.split("-", 1)[0].strip() == str(offset)


def _write(handle: IO[bytes], hasher: _Hasher, data: bytes | bytearray) -> None:
    handle.write(data)
    hasher.update(data)


def _truncate(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError), path.open("r+b") as handle:
        handle.truncate(0)


def _link(pointer: Path, blob: Path) -> None:
    """snapshots/<commit>/<path> -> ../../blobs/<etag>, relative like huggingface-hub's."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, pointer.parent)
    if pointer.is_symlink() and os.readlink(pointer) == target:
        return
    with contextlib.suppress(FileNotFoundError):
        pointer.unlink()
    os.symlink(target, pointer)
