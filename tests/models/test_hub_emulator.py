"""The hub emulator speaks what huggingface-hub 2.4 expects: checked with the real client.

If these fail, every other model test is testing against a wrong hub.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from tests.support.hub_emulator import EmulatorProcess
from tests.support.hub_fixtures import BIG, GATE_TOKEN, GATED, HUGE, NOT_MLX, TINY, repo_file_hashes


def test_list_models_filter_sort_expand(hub: EmulatorProcess) -> None:
    api = HfApi(endpoint=hub.url)
    models = list(
        api.list_models(filter="mlx", sort="likes", limit=3, expand=["usedStorage", "likes"])
    )
    assert [m.id for m in models] == [HUGE, BIG, TINY]
    assert models[0].used_storage == 20 * 1024**3
    assert all(m.downloads is None for m in models)  # only what was expanded
    everything = [m.id for m in api.list_models(filter="mlx")]
    assert NOT_MLX not in everything
    assert [m.id for m in api.list_models(author="other-org")] == [HUGE, NOT_MLX]
    assert [m.id for m in api.list_models(search="qwen3")] == [BIG]


def test_pagination_follows_link_headers(hub: EmulatorProcess) -> None:
    response = httpx.get(f"{hub.url}/api/models", params={"limit": 2})
    assert 'rel="next"' in response.headers["link"]
    # Without a limit huggingface-hub walks every page.
    assert len(list(HfApi(endpoint=hub.url).list_models())) == 6


def test_snapshot_download_from_emulator(
    hub: EmulatorProcess, hub_root: Path, tmp_path: Path
) -> None:
    folder = Path(snapshot_download(BIG, cache_dir=tmp_path, endpoint=hub.url))
    for path, digest in repo_file_hashes(hub_root, BIG).items():
        assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == digest
    cdn = [r for r in hub.requests() if r["path"].startswith("/_cdn/")]
    assert cdn  # LFS files came through the "CDN" redirect...
    assert not any(r["authorization"] for r in cdn)  # ...without the token following them


def test_ranges(hub: EmulatorProcess) -> None:
    url = f"{hub.url}/{TINY}/resolve/main/config.json"
    whole = httpx.get(url)
    assert whole.headers["x-repo-commit"]
    assert whole.headers["accept-ranges"] == "bytes"
    part = httpx.get(url, headers={"Range": "bytes=10-"})
    assert part.status_code == 206
    assert part.content == whole.content[10:]
    assert (
        part.headers["content-range"] == f"bytes 10-{len(whole.content) - 1}/{len(whole.content)}"
    )
    beyond = httpx.get(url, headers={"Range": f"bytes={len(whole.content)}-"})
    assert beyond.status_code == 416


def test_errors_map_to_hub_exceptions(hub: EmulatorProcess, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(TINY, revision="no-such-branch")
    with pytest.raises(GatedRepoError):
        snapshot_download(GATED, cache_dir=tmp_path, endpoint=hub.url, token=False)
    snapshot_download(GATED, cache_dir=tmp_path, endpoint=hub.url, token=GATE_TOKEN)
