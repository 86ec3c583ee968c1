"""One rule per fact: a model's weight size and its place on disk are each decided once.

The admin page's size and the scheduler's estimate read the same folder with the same rule,
and every "where is this model" (profiles, JIT profiles, launches, the listing) finds the same
snapshot whatever case a client uses.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest

from gateway.hub.cache import (
    find_cached_snapshot,
    resolve_model_folder,
    write_ref,
    write_tree_listing,
)
from gateway.hub.model_info import find_cached_mlx_model, weights_bytes
from gateway.serving.memory import WEIGHT_OVERHEAD, estimate_need_bytes
from gateway.settings import Settings
from tests.conftest import bearer, make_settings

REPO = "acme/Mixed-Weights-4bit"
MLX_CONFIG = json.dumps({"model_type": "llama", "quantization": {"bits": 4}}).encode()
# MLX loads the safetensors (top level and subfolders); the PyTorch copy is never loaded.
FILES = {
    "config.json": MLX_CONFIG,
    "model.safetensors": b"w" * 3000,
    "transformer/diffusion.safetensors": b"t" * 700,
    "pytorch_model.bin": b"p" * 5000,
    "README.md": b"# card\n",
}
MLX_WEIGHTS = 3700


def cached_snapshot(
    cache: Path, repo_id: str, commit: str, files: dict[str, bytes], *, missing: int = 0
) -> Path:
    """One snapshot as huggingface-hub lays it out: blobs, relative symlinks, a tree listing
    (naming `missing` extra files that never arrived, as during a download)."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    listing: dict[str, dict[str, object]] = {}
    for name, content in files.items():
        etag = hashlib.sha1(f"{commit}/{name}".encode()).hexdigest()
        (folder / "blobs" / etag).write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(folder / "blobs" / etag, link.parent), link)
        listing[name] = {"size": len(content), "blob_id": etag}
    for j in range(missing):
        listing[f"model-{j}-of-more.safetensors"] = {"size": 1, "blob_id": f"{j:040x}"}
    write_tree_listing(folder, commit, listing)
    return snapshot


# ---- weight size ------------------------------------------------------------------------------


def test_weights_count_what_mlx_loads_in_every_subfolder_once(tmp_path: Path) -> None:
    snapshot = cached_snapshot(tmp_path, REPO, "a" * 40, FILES)
    # A second link to an already counted blob (as two snapshots' files may share one) adds 0.
    os.symlink(os.readlink(snapshot / "model.safetensors"), snapshot / "copy.safetensors")
    (snapshot / "weights.npz").write_bytes(b"n" * 11)  # MLX whisper's format
    assert weights_bytes(snapshot) == MLX_WEIGHTS + 11
    assert estimate_need_bytes(None, snapshot) == int((MLX_WEIGHTS + 11) * WEIGHT_OVERHEAD)
    assert estimate_need_bytes(2.0, snapshot) == 2 * 1024**3  # the operator's word wins


# ---- where is the model -----------------------------------------------------------------------


def test_every_lookup_finds_the_same_snapshot_in_any_case(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    snapshot = cached_snapshot(cache, REPO, "a" * 40, FILES)
    write_ref(snapshot.parent.parent, "main", "a" * 40)
    for asked in (REPO, REPO.lower(), REPO.upper().replace("ACME", "acme")):
        assert find_cached_snapshot(asked, cache) == snapshot
        assert resolve_model_folder(asked, cache) == snapshot
        assert find_cached_mlx_model(asked, cache) == snapshot
    assert resolve_model_folder("acme/Other", cache) is None
    assert find_cached_snapshot("../acme/Mixed-Weights-4bit", cache) is None


def test_every_lookup_skips_a_main_that_is_still_downloading(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    older = cached_snapshot(cache, REPO, "a" * 40, FILES)
    cached_snapshot(cache, REPO, "b" * 40, FILES, missing=1)
    write_ref(older.parent.parent, "main", "b" * 40)  # main moved on; its files are arriving
    assert find_cached_snapshot(REPO.lower(), cache) == older
    assert resolve_model_folder(REPO, cache) == older
    assert find_cached_mlx_model(REPO, cache) == older


def test_a_repo_with_no_complete_snapshot_is_not_found(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cached_snapshot(cache, REPO, "b" * 40, FILES, missing=2)
    assert find_cached_snapshot(REPO, cache) is None
    assert resolve_model_folder(REPO, cache) is None


# ---- through the API: the page's size and the scheduler's estimate ---------------------------


@pytest.fixture
def settings(tmp_path: Path, cache_dir: Path) -> Settings:
    # No backend: profile validation stops after the model lookup, which is what is under test.
    return make_settings(
        tmp_path / "home", hf_cache_path=cache_dir, backend_bin=str(tmp_path / "no-backend")
    )


async def test_the_listed_size_and_the_scheduler_estimate_agree(
    client: httpx.AsyncClient, admin_token: str, cache_dir: Path
) -> None:
    snapshot = cached_snapshot(cache_dir, REPO, "a" * 40, FILES)
    write_ref(snapshot.parent.parent, "main", "a" * 40)

    listed = await client.get(f"/api/models/local/{REPO.lower()}", headers=bearer(admin_token))
    assert listed.status_code == 200, listed.text
    model = listed.json()
    assert model["id"] == REPO
    assert model["path"] == str(snapshot)
    assert model["characteristics"]["weights_bytes"] == MLX_WEIGHTS

    # A client's lowercase id finds the same folder, and the estimate reads the same weights.
    body = {"name": "mixed", "model_path": REPO.lower()}
    created = await client.post("/api/profiles", json=body, headers=bearer(admin_token))
    assert created.status_code == 201, created.text
    assert created.json()["need_bytes"] == int(MLX_WEIGHTS * WEIGHT_OVERHEAD)
