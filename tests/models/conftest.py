"""Fixtures for the model tests: the hub emulator (one process per session), HF env, a cache.

`settings` overrides the root fixture so the root `gateway`, `client` and `admin_token`
fixtures run a gateway whose HF cache is this test's own folder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from tests.conftest import bearer, make_settings
from tests.support.hub_emulator import EmulatorProcess, start_emulator
from tests.support.hub_fixtures import GATE_TOKEN, build_hub


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hub(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="session")
def hub_server(
    hub_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatorProcess]:
    log = tmp_path_factory.mktemp("hub-log") / "requests.jsonl"
    emulator = start_emulator(hub_root, log, tokens=(GATE_TOKEN,))
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def hub(hub_server: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> EmulatorProcess:
    """The emulator, reset (log, throttle), with HF_ENDPOINT pointing at it and no token."""
    hub_server.reset()
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return hub_server


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


@pytest.fixture
def settings(tmp_path: Path, cache_dir: Path, database_url: str | None) -> Settings:
    return make_settings(tmp_path / "home", hf_cache_path=cache_dir, database_url=database_url)


async def wait_for_download(
    client: httpx.AsyncClient,
    token: str,
    download_id: int,
    statuses: tuple[str, ...] = ("completed", "failed", "cancelled"),
    timeout: float = 20.0,
    until: Any = None,
) -> dict[str, Any]:
    """Poll the download until its status is one of `statuses` (or `until(view)` holds)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/api/downloads/{download_id}", headers=bearer(token))
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        if (until is not None and until(view)) or (until is None and view["status"] in statuses):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"download did not get there in {timeout} s: {view}")
        await asyncio.sleep(0.05)
