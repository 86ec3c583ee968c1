"""A download interrupted by killing the gateway resumes after a restart, from where it stopped.

The gateway runs as a real subprocess (`python -m gateway serve`) so it can be SIGKILLed with
no chance to clean up, while the hub emulator is throttled so the kill lands mid-file.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import snapshot_download

from tests.conftest import TEST_SECRET
from tests.support.gateway import free_port
from tests.support.hub_emulator import EmulatorProcess
from tests.support.hub_fixtures import BIG, repo_file_hashes

ROOT = Path(__file__).resolve().parents[2]


class GatewayProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def gateway_env(hub: EmulatorProcess, tmp_path: Path, cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLX_MANAGER_", "HF_"))}
    env.update(
        MLX_MANAGER_HOME=str(tmp_path / "home"),
        MLX_MANAGER_HF_CACHE_PATH=str(cache_dir),
        MLX_MANAGER_JWT_SECRET=TEST_SECRET,
        MLX_MANAGER_HEALTH_CHECK_INTERVAL="3600",
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    return env


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    processes: list[GatewayProcess] = []
    yield processes
    for process in processes:
        process.stop()


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
    first = GatewayProcess(gateway_env, tmp_path / "gateway.log")
    launched.append(first)
    credentials = {"email": "admin@example.com", "password": "admin-password"}
    with httpx.Client(base_url=first.url, timeout=30) as client:
        assert client.post("/api/auth/register", json=credentials).status_code == 201
        token = client.post("/api/auth/login", json=credentials).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        started = client.post("/api/downloads", json={"model_id": BIG}, headers=headers)
        assert started.status_code == 202, started.text
        download_id = started.json()["id"]
        # Kill once a shard is partly on disk (not just in flight).
        deadline = time.monotonic() + 15
        while max(partial_sizes(cache_dir).values(), default=0) < 600_000:
            assert time.monotonic() < deadline, partial_sizes(cache_dir)
            time.sleep(0.05)
    first.kill()

    at_kill = partial_sizes(cache_dir)
    assert at_kill, "the kill left partial files"
    requests_before = len(hub.requests())
    hub.configure(bytes_per_second=0)

    second = GatewayProcess(gateway_env, tmp_path / "gateway.log")
    launched.append(second)
    with httpx.Client(base_url=second.url, timeout=30, headers=headers) as client:
        deadline = time.monotonic() + 20
        while (view := client.get(f"/api/downloads/{download_id}").json())["status"] != "completed":
            assert view["status"] in ("pending", "downloading"), view
            assert time.monotonic() < deadline, view
            time.sleep(0.05)
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
