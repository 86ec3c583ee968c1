"""GET /api/models/search against the hub emulator, through the real gateway."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from huggingface_hub import snapshot_download

from tests.conftest import bearer, make_settings, register_and_login
from tests.support.gateway import running_gateway
from tests.support.hub_emulator import EmulatorProcess
from tests.support.hub_fixtures import BIG, GATED, HUGE, NOT_MLX, TINY, WHISPER

MLX_BY_DOWNLOADS = [WHISPER, TINY, BIG, GATED, HUGE]


async def search(
    client: httpx.AsyncClient, token: str, **params: str | int | float
) -> httpx.Response:
    return await client.get("/api/models/search", params=params, headers=bearer(token))


async def test_search_lists_mlx_models_with_sizes(
    hub: EmulatorProcess, client: httpx.AsyncClient, admin_token: str
) -> None:
    response = await search(client, admin_token)
    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["id"] for r in results] == MLX_BY_DOWNLOADS  # sorted by downloads, no non-MLX
    huge = next(r for r in results if r["id"] == HUGE)
    assert huge["size_bytes"] == 20 * 1024**3
    assert huge["size_gb"] == 20.0
    tiny = next(r for r in results if r["id"] == TINY)
    assert tiny["downloads"] == 1500
    assert tiny["likes"] == 12
    assert tiny["last_modified"].startswith("2025-03-01")
    assert "mlx" in tiny["tags"]
    assert tiny["downloaded"] is False
    assert next(r for r in results if r["id"] == GATED)["gated"] is True
    # Sizes came with the search itself: one hub call, not one per result.
    calls = [r for r in hub.requests() if r["path"].startswith("/api/")]
    assert len(calls) == 1
    assert "usedStorage" in calls[0]["query"]
    assert "filter=mlx" in calls[0]["query"]


async def test_sort_query_author_limit_and_size(
    hub: EmulatorProcess, client: httpx.AsyncClient, admin_token: str
) -> None:
    async def ids(**params: str | int | float) -> list[str]:
        response = await search(client, admin_token, **params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()]

    assert await ids(sort="likes") == [HUGE, BIG, TINY, WHISPER, GATED]
    assert await ids(sort="lastModified") == [HUGE, BIG, TINY, GATED, WHISPER]
    assert await ids(query="llama") == [TINY, GATED]
    assert await ids(author="other-org") == [HUGE]  # its non-MLX model stays out
    assert await ids(limit=2) == [WHISPER, TINY]
    assert await ids(sort="likes", max_size_gb=1) == [BIG, TINY, WHISPER, GATED]
    assert await ids(sort="likes", max_size_gb=1, limit=1) == [BIG]


async def test_bad_parameters_are_422(
    hub: EmulatorProcess, client: httpx.AsyncClient, admin_token: str
) -> None:
    for params in ({"sort": "stars"}, {"limit": 101}, {"limit": 0}, {"max_size_gb": -1}):
        response = await search(client, admin_token, **params)
        assert response.status_code == 422, params
        assert response.json()["code"] == "invalid_value"
    assert not hub.requests()  # refused before any hub call


async def test_default_author_from_settings_and_downloaded_flag(
    hub: EmulatorProcess, tmp_path: Path, cache_dir: Path
) -> None:
    snapshot_download(TINY, cache_dir=cache_dir, endpoint=hub.url)
    settings = make_settings(
        tmp_path / "home2", hf_cache_path=cache_dir, hf_organization="mlx-community"
    )
    async with (
        running_gateway(settings) as gateway,
        httpx.AsyncClient(base_url=gateway.url) as client,
    ):
        token = await register_and_login(client, "a@example.com", "a-password-123")
        results = (await search(client, token)).json()
        assert [r["id"] for r in results] == [WHISPER, TINY, BIG, GATED]
        assert [r["id"] for r in results if r["downloaded"]] == [TINY]
        # An explicit empty author searches everyone.
        everyone = (await search(client, token, author="")).json()
        assert HUGE in [r["id"] for r in everyone]
        assert NOT_MLX not in [r["id"] for r in everyone]


async def test_offline_mode_answers_503_without_calling_the_hub(
    hub: EmulatorProcess, tmp_path: Path, cache_dir: Path
) -> None:
    snapshot_download(TINY, cache_dir=cache_dir, endpoint=hub.url)
    hub.reset()
    settings = make_settings(tmp_path / "home2", hf_cache_path=cache_dir, offline_mode=True)
    async with (
        running_gateway(settings) as gateway,
        httpx.AsyncClient(base_url=gateway.url) as client,
    ):
        token = await register_and_login(client, "a@example.com", "a-password-123")
        response = await search(client, token, query="llama")
        assert response.status_code == 503
        assert response.json()["code"] == "offline_mode"
        assert "offline mode is on" in response.json()["detail"]
        download = await client.post(
            "/api/downloads", json={"model_id": BIG}, headers=bearer(token)
        )
        assert download.status_code == 503
        assert "offline mode is on" in download.json()["detail"]
        local = await client.get("/api/models/local", headers=bearer(token))
        assert [m["id"] for m in local.json()] == [TINY]  # the local cache still lists
    assert hub.requests() == []


async def test_hub_failure_is_a_clear_502(
    hub: EmulatorProcess, client: httpx.AsyncClient, admin_token: str
) -> None:
    hub.configure(api_status=400)
    response = await search(client, admin_token)
    assert response.status_code == 502
    assert response.json()["code"] == "hub_error"
    assert "answered 400" in response.json()["detail"]


async def test_unreachable_hub_is_a_clear_503(
    client: httpx.AsyncClient, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    response = await client.post(
        "/api/downloads", json={"model_id": TINY}, headers=bearer(admin_token)
    )
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "hub_unreachable"
    assert "cannot reach the hub at http://127.0.0.1:9" in body["detail"]
    assert "MLX_MANAGER_OFFLINE_MODE" in body["detail"]
