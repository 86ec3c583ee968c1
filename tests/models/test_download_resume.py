"""A download interrupted by killing the gateway resumes after a restart, from where it stopped.

The gateway runs as a real subprocess (`python -m gateway serve`) so it can be SIGKILLed with
no chance to clean up, while the hub emulator is throttled so the kill lands mid-file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import snapshot_download

from tests.conftest import TEST_SECRET
from tests.support.gateway_process import GatewayProcess, serve_environment
from tests.support.hub_emulator import EmulatorProcess
from tests.support.hub_fixtures import BIG, repo_file_hashes
from tests.support.waiting import wait_until_sync

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gateway_env(hub: EmulatorProcess, tmp_path: Path, cache_dir: Path) -> dict[str, str]:
    env = serve_environment(tmp_path / "home", TEST_SECRET, hf_cache_path=str(cache_dir))
    env = {k: v for k, v in env.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_TELEMETRY="1")
    return env


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    processes: list[GatewayProcess] = []
    yield processes
    for process in processes:
        process.terminate()


def partial_sizes(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in cache.rglob("*.incomplete")}


def test_killed_gateway_resumes_download_after_restart(
    hub: EmulatorProcess,
    hub_root: Path,
    cache_dir: Path,
    tmp_path: Path,
    gateway_env: dict[str, str],
    launched: list[GatewayProcess],
) -> None:
    hub.configure(bytes_per_second=700_000)
    first = GatewayProcess(gateway_env, tmp_path / "gateway.log", cwd=ROOT)
    launched.append(first)
    first.wait_healthy_sync()
    credentials = {"email": "admin@example.com", "password": "admin-password"}
    with httpx.Client(base_url=first.url, timeout=30) as client:
        assert client.post("/api/auth/register", json=credentials).status_code == 201
        token = client.post("/api/auth/login", json=credentials).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        started = client.post("/api/downloads", json={"model_id": BIG}, headers=headers)
        assert started.status_code == 202, started.text
        download_id = started.json()["id"]
        # Kill once a shard is partly on disk (not just in flight).
        wait_until_sync(
            lambda: max(partial_sizes(cache_dir).values(), default=0) >= 600_000,
            message="600 kB of a shard on disk",
        )
    first.kill()

    at_kill = partial_sizes(cache_dir)
    assert at_kill, "the kill left partial files"
    requests_before = len(hub.requests())
    hub.configure(bytes_per_second=0)

    second = GatewayProcess(gateway_env, tmp_path / "gateway.log", cwd=ROOT)
    launched.append(second)
    second.wait_healthy_sync()
    with httpx.Client(base_url=second.url, timeout=30, headers=headers) as client:

        def finished() -> dict[str, Any] | None:
            view: dict[str, Any] = client.get(f"/api/downloads/{download_id}").json()
            assert view["status"] in ("pending", "downloading", "completed"), view
            return view if view["status"] == "completed" else None

        view = wait_until_sync(finished, timeout=60, message="the resumed download completed")
        assert view["bytes_done"] == view["bytes_total"]
        local = client.get("/api/models/local").json()
        assert [m["id"] for m in local] == [BIG]

    # Each partial file continued from its size on disk: Range requests, not full downloads.
    resumed = [r for r in hub.requests()[requests_before:] if r["path"].startswith("/_cdn/")]
    by_blob = {r["path"].removeprefix("/_cdn/"): r["range"] for r in resumed}
    for name, size in at_kill.items():
        etag = name.removesuffix(".incomplete")
        if size:
            assert by_blob[etag] == f"bytes={size}-", (by_blob, at_kill)
    assert any(size > 0 for size in at_kill.values())

    snapshot = Path(snapshot_download(BIG, cache_dir=cache_dir, local_files_only=True))
    for path, digest in repo_file_hashes(hub_root, BIG).items():
        assert hashlib.sha256((snapshot / path).read_bytes()).hexdigest() == digest, path
    assert partial_sizes(cache_dir) == {}
