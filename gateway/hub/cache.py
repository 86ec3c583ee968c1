"""The Hugging Face cache on disk: where models live, what is complete, and cleaning up.

The layout is huggingface-hub's own (``models--org--name/{blobs,snapshots,refs,trees}``, locks
under ``.locks/``), so models pulled here load with ``snapshot_download(local_files_only=True)``
and show in ``hf cache ls``, and models pulled by other tools show here.

"Complete" follows huggingface-hub 2.4: a snapshot whose tree listing (``trees/<sha>.json``) is
cached is complete only when every listed file is there; the downloader writes that listing
first, so a half-downloaded snapshot is never mistaken for a model.

Every function here does file IO: call it from a thread when on the event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

log = logging.getLogger("mlx_manager.cache")

TREE_FORMAT_VERSION = 1
PARTIAL_SUFFIX = ".incomplete"
# huggingface-hub 2.x writes `<etag>.<8 hex>.incomplete`, unique per process: never resumable.
_FOREIGN_PARTIAL = re.compile(r"^(?P<etag>[0-9a-f]{40}|[0-9a-f]{64})\.[0-9a-f]{8}\.incomplete$")
_OWN_PARTIAL = re.compile(r"^(?P<etag>[0-9a-f]{40}|[0-9a-f]{64})\.incomplete$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def default_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_folder_name(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def repo_id_of(folder_name: str) -> str | None:
    if not folder_name.startswith("models--"):
        return None
    return folder_name.removeprefix("models--").replace("--", "/")


def find_repo_folder(cache: Path, repo_id: str) -> Path | None:
    """The cache folder of `repo_id`, matched exactly first, then case-insensitively."""
    if "/" not in repo_id or repo_id.startswith(("/", ".")) or ".." in repo_id:
        return None
    exact = cache / repo_folder_name(repo_id)
    if exact.is_dir():
        return exact
    wanted = repo_folder_name(repo_id).lower()
    try:
        with os.scandir(cache) as entries:  # closed also when returning early
            for entry in entries:
                if entry.name.lower() == wanted and entry.is_dir():
                    return Path(entry.path)
    except OSError:
        return None
    return None


def lock_path(cache: Path, repo_id: str, etag: str) -> Path:
    """The same lock file huggingface-hub takes for a blob, so the two never write it at once."""
    return cache / ".locks" / repo_folder_name(repo_id) / f"{etag}.lock"


def blob_lock(cache: Path, repo_id: str, etag: str) -> FileLock:
    path = lock_path(cache, repo_id, etag)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not thread-local: it is taken in one worker thread and released from another.
    return FileLock(str(path), mode=0o664, thread_local=False)


def is_locked(cache: Path, repo_id: str, etag: str) -> bool:
    """True when another process (or download) holds the blob's lock right now."""
    if not lock_path(cache, repo_id, etag).exists():
        return False
    lock = blob_lock(cache, repo_id, etag)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def read_ref(repo_folder: Path, ref: str) -> str | None:
    try:
        value = (repo_folder / "refs" / ref).read_text().strip()
    except OSError:
        return None
    return value if _COMMIT.match(value) else None


def write_ref(repo_folder: Path, ref: str, commit: str) -> None:
    """Atomically, like huggingface-hub: a reader never sees a truncated ref."""
    path = repo_folder / "refs" / ref
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == commit:
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, path)


def tree_listing(repo_folder: Path, commit: str) -> dict[str, dict[str, Any]] | None:
    """huggingface-hub 2.4's cached tree listing of a commit, or None."""
    try:
        data = json.loads((repo_folder / "trees" / f"{commit}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format_version") != TREE_FORMAT_VERSION:
        return None
    files = data.get("files")
    return files if isinstance(files, dict) else None


def write_tree_listing(repo_folder: Path, commit: str, files: dict[str, dict[str, Any]]) -> None:
    """Written before any file arrives: it is what marks a partial snapshot as incomplete."""
    path = repo_folder / "trees" / f"{commit}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format_version": TREE_FORMAT_VERSION, "files": files}, indent=1))
    os.replace(tmp, path)


def listing_etag(entry: dict[str, Any]) -> str | None:
    value = entry.get("lfs_sha256") or entry.get("blob_id")
    return value if isinstance(value, str) else None


def missing_files(repo_folder: Path, commit: str) -> list[str] | None:
    """Files the tree listing names that the snapshot lacks; None when there is no listing."""
    files = tree_listing(repo_folder, commit)
    if files is None:
        return None
    snapshot = repo_folder / "snapshots" / commit
    return [path for path in files if not (snapshot / path).exists()]


def snapshot_complete(repo_folder: Path, commit: str) -> bool:
    if not (repo_folder / "snapshots" / commit).is_dir():
        return False
    missing = missing_files(repo_folder, commit)
    return not missing


def preferred_snapshot(repo_folder: Path) -> Path | None:
    """The snapshot to use: `refs/main`'s if complete, else the newest complete one."""
    main = read_ref(repo_folder, "main")
    if main is not None and snapshot_complete(repo_folder, main):
        return repo_folder / "snapshots" / main
    snapshots = repo_folder / "snapshots"
    try:
        candidates = sorted(
            (p for p in snapshots.iterdir() if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
    except OSError:
        return None
    for candidate in candidates:
        if snapshot_complete(repo_folder, candidate.name):
            return candidate
    return None


def delete_model(cache: Path, repo_id: str) -> int:
    """Remove a repo from the cache (every revision, its blobs and locks); bytes freed."""
    folder = find_repo_folder(cache, repo_id)
    if folder is None:
        return 0
    freed = _tree_size(folder)
    shutil.rmtree(folder)
    shutil.rmtree(cache / ".locks" / folder.name, ignore_errors=True)
    return freed


def _tree_size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    total += os.stat(path).st_size
    return total


# ---- partial files -------------------------------------------------------------------------


def partial_path(repo_folder: Path, etag: str) -> Path:
    return repo_folder / "blobs" / f"{etag}{PARTIAL_SUFFIX}"


def partials_of(repo_folder: Path, commit: str) -> list[Path]:
    """This commit's resumable partial files, named from its tree listing."""
    files = tree_listing(repo_folder, commit) or {}
    etags = {etag for entry in files.values() if (etag := listing_etag(entry))}
    return [p for etag in sorted(etags) if (p := partial_path(repo_folder, etag)).exists()]


def discard_incomplete_revision(cache: Path, repo_id: str, commit: str) -> int:
    """Undo an unfinished download of `commit`: its partial files, and the files it already
    completed when the snapshot is still incomplete (a complete one is never touched).
    Blobs another snapshot uses and files another process is writing stay. Bytes freed."""
    folder = find_repo_folder(cache, repo_id)
    if folder is None:
        return 0
    freed = 0
    for partial in partials_of(folder, commit):
        if not is_locked(cache, repo_id, partial.name.removesuffix(PARTIAL_SUFFIX)):
            freed += _unlink(partial)
    snapshot = folder / "snapshots" / commit
    if snapshot_complete(folder, commit):
        return freed
    used_elsewhere = _blobs_in_use(folder, exclude=commit)
    for root, _dirs, files in os.walk(snapshot):
        for name in files:
            link = Path(root) / name
            if link.is_symlink():
                blob = (link.parent / os.readlink(link)).resolve()
                if blob not in used_elsewhere and blob.parent == (folder / "blobs").resolve():
                    freed += _unlink(blob)
    shutil.rmtree(snapshot, ignore_errors=True)
    with contextlib.suppress(OSError):
        (folder / "trees" / f"{commit}.json").unlink()
    _remove_refs_to(folder, commit)
    if not any((folder / "snapshots").glob("*")) and not any((folder / "blobs").glob("*")):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(cache / ".locks" / folder.name, ignore_errors=True)
    return freed


def _blobs_in_use(folder: Path, exclude: str) -> set[Path]:
    used: set[Path] = set()
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return used
    for snapshot in snapshots.iterdir():
        if snapshot.name == exclude:
            continue
        for root, _dirs, files in os.walk(snapshot):
            for name in files:
                link = Path(root) / name
                if link.is_symlink():
                    used.add((link.parent / os.readlink(link)).resolve())
    return used


def _remove_refs_to(folder: Path, commit: str) -> None:
    refs = folder / "refs"
    if not refs.is_dir():
        return
    for ref in refs.rglob("*"):
        if ref.is_file() and read_ref(folder, ref.relative_to(refs).as_posix()) == commit:
            _unlink(ref)


def _unlink(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
    except OSError:
        return 0
    return size


def clean_stale_partials(
    cache: Path, owned: Iterable[Path], unowned_max_age: float, now: float | None = None
) -> list[Path]:
    """Delete partial blobs nobody will resume; return what was removed.

    Kept: partials an unfinished download owns (`owned`), partials whose blob lock is held
    (someone is writing them), and our own resumable ``<etag>.incomplete`` files younger than
    `unowned_max_age` seconds (a Ctrl-C'd ``model pull`` resumes from them). Removed: older
    unowned ones, and huggingface-hub 2.x's per-process ``<etag>.<id>.incomplete`` files once
    their writer is gone, since nothing can ever resume those.
    """
    keep = {p.resolve() for p in owned}
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        repo_folders = [p for p in cache.iterdir() if p.name.startswith("models--")]
    except OSError:
        return removed
    for folder in repo_folders:
        repo_id = repo_id_of(folder.name)
        blobs = folder / "blobs"
        if repo_id is None or not blobs.is_dir():
            continue
        for partial in blobs.glob(f"*{PARTIAL_SUFFIX}"):
            if partial.resolve() in keep:
                continue
            foreign = _FOREIGN_PARTIAL.match(partial.name)
            own = _OWN_PARTIAL.match(partial.name)
            match = foreign or own
            if match is None or is_locked(cache, repo_id, match.group("etag")):
                continue
            if own is not None:
                try:
                    age = now - partial.stat().st_mtime
                except OSError:
                    continue
                if age < unowned_max_age:
                    continue
            if _unlink(partial) or not partial.exists():
                removed.append(partial)
    return removed


# Where a profile's model lives on disk: a local folder, or a repo id in the HF cache.

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(value: str) -> bool:
    return bool(_REPO_ID.match(value)) and not value.startswith(("./", "../"))


def find_cached_snapshot(repo_id: str, cache_dir: Path | None) -> Path | None:
    """Where `repo_id` is in the HF cache: the one lookup behind every "where is this model".

    Profiles, JIT profiles, the scheduler's estimate and launches all find a model here, so they
    cannot disagree about which folder (or whether there is one):
    - case: the repo folder is the one the cache spells, matched exactly first, then
      case-insensitively (clients lowercase ids; the cache keeps the hub's spelling);
    - revision: `preferred_snapshot` (`refs/main`'s when complete, else the newest complete).
    """
    folder = find_repo_folder(cache_dir or default_cache_dir(), repo_id)
    return None if folder is None else preferred_snapshot(folder)


def resolve_model_folder(model_path: str, cache_dir: Path | None) -> Path | None:
    """The folder to load: the path itself when it is a folder, else the repo's cached snapshot.

    Never touches the network, so a missing model is reported, not fetched.
    """
    if not model_path:
        return None
    local = Path(model_path).expanduser()
    if local.is_dir():
        return local.resolve()
    if not looks_like_repo_id(model_path):
        return None
    return find_cached_snapshot(model_path, cache_dir)
