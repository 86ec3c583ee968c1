"""Cache housekeeping: which partial files are stale, and what cancelling a download removes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gateway.hub.cache import (
    blob_lock,
    clean_stale_partials,
    discard_incomplete_revision,
    write_ref,
    write_tree_listing,
)

REPO = "org/model"
DAY = 24 * 3600.0


def blobs(cache: Path) -> Path:
    folder = cache / "models--org--model" / "blobs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def partial(cache: Path, name: str, age: float = 0.0) -> Path:
    path = blobs(cache) / name
    path.write_bytes(b"x" * 10)
    if age:
        old = time.time() - age
        os.utime(path, (old, old))
    return path


def test_stale_partials(tmp_path: Path) -> None:
    cache = tmp_path
    a, b, c, d, e = ("a" * 64, "b" * 64, "c" * 40, "d" * 64, "e" * 64)
    owned = partial(cache, f"{a}.incomplete", age=3 * DAY)
    fresh_unowned = partial(cache, f"{b}.incomplete", age=60)
    old_unowned = partial(cache, f"{c}.incomplete", age=2 * DAY)
    foreign = partial(cache, f"{d}.1a2b3c4d.incomplete")  # huggingface-hub 2.x, writer gone
    being_written = partial(cache, f"{e}.9f8e7d6c.incomplete")
    lock = blob_lock(cache, REPO, e)
    lock.acquire()
    try:
        removed = clean_stale_partials(cache, owned=[owned], unowned_max_age=DAY)
    finally:
        lock.release()
    assert sorted(removed) == sorted([old_unowned, foreign])
    assert owned.exists()
    assert fresh_unowned.exists()  # e.g. a Ctrl-C'd `model pull` that will be resumed
    assert being_written.exists()  # another process holds its lock


def link(snapshot: Path, name: str, etag: str) -> None:
    snapshot.mkdir(parents=True, exist_ok=True)
    os.symlink(f"../../blobs/{etag}", snapshot / name)


def test_discard_removes_only_the_unfinished_revision(tmp_path: Path) -> None:
    cache = tmp_path
    folder = cache / "models--org--model"
    old, new = "1" * 40, "2" * 40
    shared, only_new, missing = "a" * 40, "b" * 40, "c" * 64
    (blobs(cache) / shared).write_bytes(b"shared")
    (blobs(cache) / only_new).write_bytes(b"new")
    partial(cache, f"{missing}.incomplete")
    link(folder / "snapshots" / old, "config.json", shared)
    write_tree_listing(folder, old, {"config.json": {"size": 6, "blob_id": shared}})
    write_ref(folder, "main", old)
    link(folder / "snapshots" / new, "config.json", shared)
    link(folder / "snapshots" / new, "tokenizer.json", only_new)
    write_tree_listing(
        folder,
        new,
        {
            "config.json": {"size": 6, "blob_id": shared},
            "tokenizer.json": {"size": 3, "blob_id": only_new},
            "model.safetensors": {"size": 99, "blob_id": "f" * 40, "lfs_sha256": missing},
        },
    )
    freed = discard_incomplete_revision(cache, REPO, new)
    assert freed == 10 + 3  # the partial and the blob only the new revision used
    assert not (folder / "snapshots" / new).exists()
    assert not (folder / "trees" / f"{new}.json").exists()
    assert (blobs(cache) / shared).exists()  # the complete old revision still needs it
    assert (folder / "snapshots" / old / "config.json").read_bytes() == b"shared"
    # A complete revision is never touched.
    assert discard_incomplete_revision(cache, REPO, old) == 0
    assert (folder / "snapshots" / old).exists()


def test_discard_of_a_first_download_removes_the_repo_folder(tmp_path: Path) -> None:
    cache = tmp_path
    folder = cache / "models--org--model"
    commit, done, missing = "3" * 40, "a" * 40, "b" * 64
    (blobs(cache) / done).write_bytes(b"config")
    partial(cache, f"{missing}.incomplete")
    link(folder / "snapshots" / commit, "config.json", done)
    write_tree_listing(
        folder,
        commit,
        {
            "config.json": {"size": 6, "blob_id": done},
            "model.safetensors": {"size": 99, "blob_id": "f" * 40, "lfs_sha256": missing},
        },
    )
    discard_incomplete_revision(cache, REPO, commit)
    assert not folder.exists()
