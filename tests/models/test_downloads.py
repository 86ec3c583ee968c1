"""/api/downloads and /api/models/local through the real gateway, against the hub emulator."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import scan_cache_dir, snapshot_download

from gateway.db import create_engine, session_factory
from gateway.settings import Settings
from gateway.tables import Download
from tests.conftest import bearer, login, register_and_login
from tests.models.conftest import wait_for_download
from tests.support.gateway import running_gateway
from tests.support.hub_emulator import EmulatorProcess
from tests.support.hub_fixtures import (
    BIG,
    BIG_SHARDS,
    GATE_TOKEN,
    GATED,
    TINY,
    repo_file_hashes,
    repo_size,
)
from tests.support.stub_server import STUB_SCRIPT
from tests.support.waiting import wait_until


def assert_matches_source(hub_root: Path, snapshot: Path, repo_id: str) -> None:
    for path, digest in repo_file_hashes(hub_root, repo_id).items():
        assert hashlib.sha256((snapshot / path).read_bytes()).hexdigest() == digest, path


def partial_files(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.incomplete"))


async def post_download(client: httpx.AsyncClient, token: str, **body: Any) -> httpx.Response:
    return await client.post("/api/downloads", json=body, headers=bearer(token))


@pytest.mark.both_databases
async def test_download_lands_in_the_hf_cache(
    hub: EmulatorProcess,
    hub_root: Path,
    cache_dir: Path,
    client: httpx.AsyncClient,
    admin_token: str,
) -> None:
    response = await post_download(client, admin_token, model_id=TINY)
    assert response.status_code == 202, response.text
    record = response.json()
    assert response.headers["location"] == f"/api/downloads/{record['id']}"
    assert record["status"] in ("pending", "downloading")
    assert record["bytes_total"] == repo_size(hub_root, TINY)
    assert record["revision"] == "main"
    assert len(record["commit_sha"]) == 40
    done = await wait_for_download(client, admin_token, record["id"])
    assert done["status"] == "completed", done
    assert done["bytes_done"] == done["bytes_total"]
    assert done["files_done"] == done["files_total"] == 5
    assert done["finished_at"] is not None

    # Exactly huggingface-hub's layout: its loader and its scanner both see the model.
    snapshot = Path(snapshot_download(TINY, cache_dir=cache_dir, local_files_only=True))
    assert snapshot.name == record["commit_sha"]
    assert_matches_source(hub_root, snapshot, TINY)
    assert (snapshot / "config.json").is_symlink()
    assert not Path((snapshot / "config.json").readlink()).is_absolute()
    (repo,) = scan_cache_dir(cache_dir).repos
    assert repo.repo_id == TINY
    assert next(iter(repo.revisions)).refs == frozenset({"main"})
    assert partial_files(cache_dir) == []

    local = (await client.get("/api/models/local", headers=bearer(admin_token))).json()
    assert [m["id"] for m in local] == [TINY]
    model = local[0]
    assert model["complete"] is True
    assert model["downloading"] is False
    assert model["revision"] == record["commit_sha"]
    assert model["size_bytes"] == repo_size(hub_root, TINY)
    chars = model["characteristics"]
    assert (chars["family"], chars["kind"], chars["quantization_bits"]) == ("llama", "lm", 4)
    assert (chars["context_length"], chars["is_mlx"]) == (2048, True)
    assert model["suggested_profile"]["model_type"] == "lm"

    detail = await client.get(f"/api/models/local/{TINY}", headers=bearer(admin_token))
    assert detail.status_code == 200
    files = {f["path"] for f in detail.json()["revisions"][0]["files"]}
    assert files == set(repo_file_hashes(hub_root, TINY))

    listed = (await client.get("/api/downloads", headers=bearer(admin_token))).json()
    assert [d["id"] for d in listed] == [record["id"]]
    finished = await client.delete(f"/api/downloads/{record['id']}", headers=bearer(admin_token))
    assert finished.status_code == 409
    assert finished.json()["code"] == "download_finished"


async def read_events(
    client: httpx.AsyncClient,
    token: str,
    into: list[dict[str, Any]],
    until_status: str,
    connected: asyncio.Event,
) -> None:
    """Collect the stream's events until one has `until_status`; `connected` is set once the
    stream's opening `: connected` comment arrives."""
    headers = {**bearer(token), "Accept": "text/event-stream"}
    async with client.stream("GET", "/api/downloads/events", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line == ": connected":
                connected.set()
            elif line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                into.append(event)
                if event["status"] == until_status:
                    return


async def test_progress_events_and_the_same_download_twice(
    hub: EmulatorProcess, hub_root: Path, client: httpx.AsyncClient, admin_token: str
) -> None:
    hub.configure(bytes_per_second=2_000_000)
    events: list[dict[str, Any]] = []
    connected = asyncio.Event()
    reader = asyncio.create_task(read_events(client, admin_token, events, "completed", connected))
    # Subscribed before the download starts (a reader that failed first shows its error).
    await wait_until(lambda: connected.is_set() or reader.done(), message="`: connected`")
    assert not reader.done(), reader.result()
    first = (await post_download(client, admin_token, model_id=BIG)).json()
    again = await post_download(client, admin_token, model_id=BIG)
    assert again.status_code == 202
    assert again.json()["id"] == first["id"]
    by_commit = await post_download(client, admin_token, model_id=BIG, revision=first["commit_sha"])
    assert by_commit.json()["id"] == first["id"]
    lowercase = await post_download(client, admin_token, model_id=BIG.lower())
    assert lowercase.json()["id"] == first["id"]
    await asyncio.wait_for(reader, timeout=20)

    assert {e["id"] for e in events} == {first["id"]}
    moving = [e for e in events if e["status"] == "downloading"]
    assert len(moving) >= 3, events
    done = [e["bytes_done"] for e in moving]
    assert done == sorted(done)
    assert done[0] < done[-1]
    assert any(e["rate_bytes_per_second"] and e["eta_seconds"] is not None for e in moving)
    rates = [e["rate_bytes_per_second"] for e in moving if e["rate_bytes_per_second"]]
    assert max(rates) < 4 * 2_000_000 * 2  # two throttled streams at most, plus smoothing
    last = events[-1]
    assert last["status"] == "completed"
    assert last["bytes_done"] == last["bytes_total"] == repo_size(hub_root, BIG)
    # At most one body transfer per file: joining the download fetched nothing twice.
    resolves = [r for r in hub.file_requests() if "/resolve/" in r["path"]]
    assert len(resolves) == len(repo_file_hashes(hub_root, BIG))


async def test_cancel_removes_the_unfinished_download(
    hub: EmulatorProcess, cache_dir: Path, client: httpx.AsyncClient, admin_token: str
) -> None:
    hub.configure(bytes_per_second=400_000)
    record = (await post_download(client, admin_token, model_id=BIG)).json()
    await wait_for_download(
        client, admin_token, record["id"], until=lambda v: v["bytes_done"] > 300_000
    )
    assert partial_files(cache_dir)
    response = await client.delete(f"/api/downloads/{record['id']}", headers=bearer(admin_token))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    # Nothing of it stays: no partial files, no half snapshot, no repo folder.
    assert not (cache_dir / "models--mlx-community--Qwen3-Big-8bit").exists()
    view = (await client.get(f"/api/downloads/{record['id']}", headers=bearer(admin_token))).json()
    assert view["status"] == "cancelled"
    assert view["finished_at"] is not None
    again = await client.delete(f"/api/downloads/{record['id']}", headers=bearer(admin_token))
    assert again.json()["status"] == "cancelled"
    # A new request is a new download, not the cancelled one.
    hub.configure(bytes_per_second=0)
    fresh = (await post_download(client, admin_token, model_id=BIG)).json()
    assert fresh["id"] != record["id"]
    assert (await wait_for_download(client, admin_token, fresh["id"]))["status"] == "completed"


@pytest.mark.parametrize("download_options", [{"retry_base_seconds": 0.05}])
async def test_a_cut_connection_resumes_with_range(
    hub: EmulatorProcess,
    hub_root: Path,
    cache_dir: Path,
    client: httpx.AsyncClient,
    admin_token: str,
) -> None:
    hub.configure(drop_after_bytes=1_000_000)  # every file body is cut after 1 MB
    record = (await post_download(client, admin_token, model_id=BIG)).json()
    done = await wait_for_download(client, admin_token, record["id"])
    assert done["status"] == "completed", done
    shard = next(iter(k for k in repo_file_hashes(hub_root, BIG) if k.startswith("model-00001")))
    ranges = [r["range"] for r in hub.file_requests(shard) if r["path"].startswith("/_cdn/")]
    assert ranges[0] is None
    assert ranges[1:] == ["bytes=1000000-", "bytes=2000000-", "bytes=3000000-"][: len(ranges) - 1]
    assert len(ranges) == -(-BIG_SHARDS[0] // 1_000_000)  # ceil: one request per megabyte
    snapshot = Path(snapshot_download(BIG, cache_dir=cache_dir, local_files_only=True))
    assert_matches_source(hub_root, snapshot, BIG)


async def test_gated_repo_needs_a_token(
    hub: EmulatorProcess,
    cache_dir: Path,
    client: httpx.AsyncClient,
    admin_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    response = await post_download(client, admin_token, model_id=GATED)
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "gated_repo"
    assert "accept its license" in body["detail"]
    assert "HF_TOKEN" in body["detail"]
    assert (await client.get("/api/downloads", headers=bearer(admin_token))).json() == []

    monkeypatch.setenv("HF_TOKEN", GATE_TOKEN)
    record = (await post_download(client, admin_token, model_id=GATED)).json()
    assert (await wait_for_download(client, admin_token, record["id"]))["status"] == "completed"
    snapshot_download(GATED, cache_dir=cache_dir, local_files_only=True)
    resolves = [r for r in hub.file_requests() if "/resolve/" in r["path"]]
    assert resolves
    assert all(r["authorization"] for r in resolves)
    assert not any(r["authorization"] for r in hub.file_requests() if "/_cdn/" in r["path"])


async def test_unknown_repo_revision_and_bad_ids(
    hub: EmulatorProcess, client: httpx.AsyncClient, admin_token: str
) -> None:
    missing = await post_download(client, admin_token, model_id="nobody/nothing")
    assert missing.status_code == 404
    assert missing.json()["code"] == "repo_not_found"
    assert "check the id" in missing.json()["detail"]
    revision = await post_download(client, admin_token, model_id=TINY, revision="v9")
    assert revision.status_code == 404
    assert revision.json()["code"] == "revision_not_found"
    for bad in ("just-a-name", "../../etc/passwd", "a/b/c"):
        response = await post_download(client, admin_token, model_id=bad)
        assert response.status_code == 422, bad
    assert (await client.get("/api/downloads/999", headers=bearer(admin_token))).status_code == 404


async def test_a_failed_download_says_which_file_failed_and_why(
    hub: EmulatorProcess, hub_root: Path, client: httpx.AsyncClient, admin_token: str
) -> None:
    shard = next(k for k in repo_file_hashes(hub_root, BIG) if k.startswith("model-00001"))
    hub.configure(corrupt_path=shard)  # served with a wrong byte on every attempt
    record = (await post_download(client, admin_token, model_id=BIG)).json()
    done = await wait_for_download(client, admin_token, record["id"])
    assert done["status"] == "failed", done
    assert done["error"] == (
        f"{shard} of {BIG} failed its checksum twice; the hub may be serving a broken file, "
        "try again later"
    )
    assert "TaskGroup" not in done["error"]


@pytest.mark.parametrize("download_options", [{"free_bytes": lambda path: 1024}])
async def test_not_enough_disk_is_507(
    hub: EmulatorProcess, client: httpx.AsyncClient, admin_token: str
) -> None:
    response = await post_download(client, admin_token, model_id=BIG)
    assert response.status_code == 507
    body = response.json()
    assert body["code"] == "insufficient_storage"
    assert "GiB is free" in body["detail"]
    assert "MLX_MANAGER_HF_CACHE_PATH" in body["detail"]


async def test_non_admins_read_but_cannot_download(
    hub: EmulatorProcess, client: httpx.AsyncClient, admin_token: str
) -> None:
    await client.post(
        "/api/auth/register", json={"email": "u@example.com", "password": "pw-123456"}
    )
    users = (await client.get("/api/users", headers=bearer(admin_token))).json()
    user = next(u for u in users if u["email"] == "u@example.com")
    await client.patch(
        f"/api/users/{user['id']}", json={"status": "approved"}, headers=bearer(admin_token)
    )
    token = await login(client, "u@example.com", "pw-123456")
    assert (await post_download(client, token, model_id=TINY)).status_code == 403
    assert (await client.get("/api/downloads", headers=bearer(token))).status_code == 200
    assert (await client.get("/api/models/local", headers=bearer(token))).status_code == 200
    assert (await client.get("/api/downloads")).status_code == 401


async def test_delete_local_model_refused_while_a_server_uses_it(
    hub: EmulatorProcess, cache_dir: Path, client: httpx.AsyncClient, admin_token: str
) -> None:
    snapshot_download(TINY, cache_dir=cache_dir, endpoint=hub.url)
    profile = await client.post(
        "/api/profiles",
        json={
            "name": "tiny",
            "model_path": TINY,
            "command": [sys.executable, str(STUB_SCRIPT), "--port", "{port}"],
        },
        headers=bearer(admin_token),
    )
    assert profile.status_code == 201, profile.text
    profile_id = profile.json()["id"]
    started = await client.post(f"/api/servers/{profile_id}/start", headers=bearer(admin_token))
    assert started.status_code == 200, started.text
    try:
        refused = await client.delete(f"/api/models/local/{TINY}", headers=bearer(admin_token))
        assert refused.status_code == 409
        assert refused.json()["code"] == "model_in_use"
        assert "tiny" in refused.json()["detail"]
    finally:
        await client.post(f"/api/servers/{profile_id}/stop", headers=bearer(admin_token))
    deleted = await client.delete(f"/api/models/local/{TINY}", headers=bearer(admin_token))
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["freed_bytes"] > 0
    assert not (cache_dir / "models--mlx-community--Tiny-Llama-4bit").exists()
    gone = await client.get(f"/api/models/local/{TINY}", headers=bearer(admin_token))
    assert gone.status_code == 404
    assert "POST /api/downloads" in gone.json()["detail"]
    with contextlib.suppress(Exception):
        await client.delete(f"/api/profiles/{profile_id}", headers=bearer(admin_token))


@pytest.mark.both_databases
async def test_graceful_restart_keeps_and_resumes_the_download(
    hub: EmulatorProcess, hub_root: Path, cache_dir: Path, settings: Settings
) -> None:
    """Stopping the gateway mid-download keeps the row unfinished and its partial files (the
    last buffer flushed), and the next start continues them with Range requests."""
    hub.configure(bytes_per_second=600_000)
    async with running_gateway(settings) as first, httpx.AsyncClient(base_url=first.url) as client:
        token = await register_and_login(client, "admin@example.com", "admin-password")
        record = (await post_download(client, token, model_id=BIG)).json()
        await wait_for_download(
            client, token, record["id"], until=lambda v: v["bytes_done"] > 500_000
        )
    kept = {p.name.removesuffix(".incomplete"): p.stat().st_size for p in partial_files(cache_dir)}
    assert kept
    assert max(kept.values()) > 0
    hub.configure(bytes_per_second=0)
    before = len(hub.requests())
    async with (
        running_gateway(settings) as second,
        httpx.AsyncClient(base_url=second.url) as client,
    ):
        from tests.conftest import login

        token = await login(client, "admin@example.com", "admin-password")
        done = await wait_for_download(client, token, record["id"])
        assert done["status"] == "completed", done
    ranges = {
        r["path"].removeprefix("/_cdn/"): r["range"]
        for r in hub.requests()[before:]
        if r["path"].startswith("/_cdn/")
    }
    for etag, size in kept.items():
        if size:
            assert ranges[etag] == f"bytes={size}-"
    snapshot = Path(snapshot_download(BIG, cache_dir=cache_dir, local_files_only=True))
    assert_matches_source(hub_root, snapshot, BIG)


@pytest.mark.both_databases
async def test_another_machines_download_is_left_to_it(
    hub: EmulatorProcess, settings: Settings
) -> None:
    """Replicas share the downloads table but not their disks: a row another machine is
    filling is not listed, resumed, read or cancelled here; a row from before rows said where
    (host '') still is this machine's."""
    async with running_gateway(settings) as gateway, httpx.AsyncClient(base_url=gateway.url) as c:
        await register_and_login(c, "admin@example.com", "admin-password")
    engine = create_engine(settings.sqlalchemy_url)
    try:
        async with session_factory(engine)() as session:
            theirs = Download(model_id=BIG, host="other-mac", status="downloading", bytes_done=7)
            legacy = Download(model_id=TINY, host="", status="failed", error="old")
            for row in (theirs, legacy):
                session.add(row)
            await session.commit()
            ids = {"theirs": theirs.id, "legacy": legacy.id}
    finally:
        await engine.dispose()
    async with running_gateway(settings) as gateway, httpx.AsyncClient(base_url=gateway.url) as c:
        token = await login(c, "admin@example.com", "admin-password")
        listed = (await c.get("/api/downloads", headers=bearer(token))).json()
        assert [d["id"] for d in listed] == [ids["legacy"]]
        url = f"/api/downloads/{ids['theirs']}"
        assert (await c.get(url, headers=bearer(token))).status_code == 404
        assert (await c.delete(url, headers=bearer(token))).status_code == 404
    assert hub.file_requests() == []  # nothing was resumed for the other machine
    engine = create_engine(settings.sqlalchemy_url)
    try:
        async with session_factory(engine)() as session:
            stored = await session.get(Download, ids["theirs"])
            assert stored is not None
            assert (stored.status, stored.bytes_done) == ("downloading", 7)
    finally:
        await engine.dispose()
