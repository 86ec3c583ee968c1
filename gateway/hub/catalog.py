"""The local model catalog: every model repo in the HF cache, with what its files say.

Scanning stats every file of every repo, which is slow on a big cache, so `LocalCatalog` keeps
the last scan while a cheap signature of the cache stays the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.hub.cache import preferred_snapshot, snapshot_complete
from gateway.hub.model_info import ModelCharacteristics, describe_model, suggested_profile
from gateway.types import iso_utc

log = logging.getLogger("mlx_manager.cache")
CATALOG_TTL = 60.0


@dataclass(frozen=True, slots=True)
class LocalRevision:
    commit: str
    refs: tuple[str, ...]
    size_bytes: int
    last_modified: float
    path: Path
    complete: bool
    files: tuple[tuple[str, int], ...]  # (repo-relative path, size)


@dataclass(frozen=True, slots=True)
class LocalModel:
    repo_id: str
    path: Path
    size_bytes: int
    last_modified: float
    last_accessed: float
    revisions: tuple[LocalRevision, ...]
    snapshot: Path | None  # the complete snapshot in use; None while only partial ones exist
    characteristics: ModelCharacteristics | None = field(default=None)

    @property
    def complete(self) -> bool:
        return self.snapshot is not None

    def to_json(self, *, detail: bool = False) -> dict[str, Any]:
        """The model as `/api/models/local` lists it; `detail` adds every revision's files
        (what `/api/models/local/{id}` answers)."""
        chars = self.characteristics
        preferred = next((r for r in self.revisions if r.path == self.snapshot), None)
        data: dict[str, Any] = {
            "id": self.repo_id,
            "size_bytes": self.size_bytes,
            "complete": self.complete,
            "revision": preferred.commit if preferred else None,
            "refs": list(preferred.refs) if preferred else [],
            "revisions": [r.commit for r in self.revisions],
            "last_modified": iso_utc(self.last_modified),
            "last_accessed": iso_utc(self.last_accessed),
            "path": str(self.snapshot or self.path),
            "characteristics": chars.to_json() if chars else None,
            "suggested_profile": suggested_profile(chars).fields() if chars else None,
        }
        if not detail:
            return data
        data["cache_path"] = str(self.path)
        data["revisions"] = [
            {
                "commit": r.commit,
                "refs": list(r.refs),
                "size_bytes": r.size_bytes,
                "last_modified": iso_utc(r.last_modified),
                "path": str(r.path),
                "complete": r.complete,
                "files": [{"path": p, "size_bytes": s} for p, s in r.files],
            }
            for r in self.revisions
        ]
        return data


def scan_models(cache: Path) -> list[LocalModel]:
    """Every model repo in the cache, with what its config says (huggingface-hub's scanner)."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    try:
        info = scan_cache_dir(cache)
    except (CacheNotFound, ValueError):
        return []
    for warning in info.warnings:
        log.debug("cache scan: %s", warning)
    models = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        revisions = tuple(
            sorted(
                (
                    LocalRevision(
                        commit=rev.commit_hash,
                        refs=tuple(sorted(rev.refs)),
                        size_bytes=rev.size_on_disk,
                        last_modified=rev.last_modified,
                        path=rev.snapshot_path,
                        complete=snapshot_complete(repo.repo_path, rev.commit_hash),
                        files=tuple(
                            sorted(
                                (
                                    f.file_path.relative_to(rev.snapshot_path).as_posix(),
                                    f.size_on_disk,
                                )
                                for f in rev.files
                            )
                        ),
                    )
                    for rev in repo.revisions
                ),
                key=lambda r: r.last_modified,
                reverse=True,
            )
        )
        snapshot = preferred_snapshot(repo.repo_path)
        models.append(
            LocalModel(
                repo_id=repo.repo_id,
                path=repo.repo_path,
                size_bytes=repo.size_on_disk,
                last_modified=repo.last_modified,
                last_accessed=repo.last_accessed,
                revisions=revisions,
                snapshot=snapshot,
                characteristics=describe_model(snapshot, repo.repo_id) if snapshot else None,
            )
        )
    return sorted(models, key=lambda m: m.repo_id.lower())


class LocalCatalog:
    """`scan_models` in a thread, reused while the cache looks unchanged.

    "Unchanged" is a cheap signature (the mtimes of the cache folder, and of each repo's
    `refs`, `snapshots` and snapshot folders, which every add, finish or delete touches), so a
    model pulled by the CLI or another tool shows at once without a full scan per request;
    `ttl` bounds how long a change the signature misses can go unseen.
    """

    def __init__(self, cache: Path, ttl: float = CATALOG_TTL) -> None:
        self.cache = cache
        self._ttl = ttl
        self._models: list[LocalModel] | None = None
        self._signature: tuple[Any, ...] | None = None
        self._scanned_at = 0.0
        self._lock = asyncio.Lock()

    async def models(self) -> list[LocalModel]:
        async with self._lock:
            signature = await asyncio.to_thread(cache_signature, self.cache)
            fresh = time.monotonic() - self._scanned_at < self._ttl
            if self._models is None or signature != self._signature or not fresh:
                self._models = await asyncio.to_thread(scan_models, self.cache)
                self._signature, self._scanned_at = signature, time.monotonic()
            return self._models

    async def get(self, repo_id: str) -> LocalModel | None:
        """The case rule of `find_cached_snapshot`: the cache's spelling first, then any case."""
        models = await self.models()
        exact = next((m for m in models if m.repo_id == repo_id), None)
        wanted = repo_id.lower()
        return exact or next((m for m in models if m.repo_id.lower() == wanted), None)

    async def complete_ids(self) -> set[str]:
        """Lower-cased ids of the models that have a complete snapshot."""
        return {m.repo_id.lower() for m in await self.models() if m.complete}

    def invalidate(self) -> None:
        self._models = None


def cache_signature(cache: Path) -> tuple[Any, ...]:
    parts: list[Any] = [_mtime(cache)]
    try:
        entries = sorted(e.name for e in os.scandir(cache) if e.name.startswith("models--"))
    except OSError:
        return tuple(parts)
    for name in entries:
        repo = cache / name
        parts += [name, _mtime(repo / "refs"), _mtime(repo / "snapshots")]
        try:
            parts += sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(repo / "snapshots"))
        except OSError:
            continue
    return tuple(parts)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
