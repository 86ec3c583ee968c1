"""Issue 11, the control plane's share: profiles refused at save time when they could only fail
later, PATCH that masks and restarts only when it must, file names that cannot collide, private
files on disk, download errors that name their cause, and API key scopes.

Everything runs for real: a gateway under uvicorn, the stub model server for running profiles,
the hub emulator for downloads, a stand-in for mlx-openai-server 1.8.1's `launch --help`.
"""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.db import create_engine
from gateway.settings import Settings
from tests.conftest import make_settings, register_and_login
from tests.support.env import Env, env_settings, gateway_env
from tests.support.fake_backend import fake_backend, fake_hf_cache
from tests.support.gateway import running_gateway


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = env_settings(tmp_path, backend_bin=str(fake_backend(tmp_path / "bin")))
    async with gateway_env(tmp_path, settings) as env:
        yield env


def model_folder(root: Path, name: str, config: dict[str, Any], *extra: str) -> Path:
    """A local model folder holding `config` as its config.json (and empty `extra` files)."""
    folder = root / "models" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    for file_name in extra:
        (folder / file_name).write_text("{}")
    return folder


# ---- must-fix 8: an embeddings profile needs a model the embeddings loader can load ----------


LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
BERT = {"model_type": "bert", "architectures": ["BertModel"]}


async def test_embeddings_profile_for_a_chat_model_is_refused_at_save(env: Env) -> None:
    folder = model_folder(env.tmp, "llama", LLAMA)
    body = {"name": "emb", "model_path": str(folder), "model_type": "embeddings"}
    response = await env.post("/api/profiles", body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["param"] == "model_type"
    assert "'llama'" in error["detail"]
    assert "embeddings" in error["detail"]
    assert "fits: lm" in error["detail"]  # which kinds would load it
    # The same model as an lm profile is fine.
    body["model_type"] = "lm"
    assert (await env.post("/api/profiles", body)).status_code == 201


async def test_embeddings_profile_for_an_embedding_model_is_accepted(env: Env) -> None:
    bert = model_folder(env.tmp, "bert", BERT)
    body = {"name": "emb", "model_path": str(bert), "model_type": "embeddings"}
    response = await env.post("/api/profiles", body)
    assert response.status_code == 201, response.text
    # A sentence-transformers folder is an embedding model whatever its architecture says.
    qwen = model_folder(
        env.tmp,
        "qwen-embed",
        {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]},
        "modules.json",
    )
    body = {"name": "emb-2", "model_path": str(qwen), "model_type": "embeddings"}
    response = await env.post("/api/profiles", body)
    assert response.status_code == 201, response.text


async def test_embeddings_profile_without_a_config_is_accepted(env: Env) -> None:
    """Nothing says what the model is: the save cannot know, so the start will tell."""
    folder = env.tmp / "models" / "bare"
    folder.mkdir(parents=True)
    body = {"name": "emb", "model_path": str(folder), "model_type": "embeddings"}
    response = await env.post("/api/profiles", body)
    assert response.status_code == 201, response.text


async def test_patch_to_embeddings_on_a_chat_model_is_refused(env: Env) -> None:
    folder = model_folder(env.tmp, "llama", LLAMA)
    created = await env.post("/api/profiles", {"name": "chat", "model_path": str(folder)})
    assert created.status_code == 201, created.text
    profile_id = created.json()["id"]
    response = await env.http.patch(
        f"/api/profiles/{profile_id}", json={"model_type": "embeddings"}, headers=env.auth
    )
    assert response.status_code == 422, response.text
    assert response.json()["param"] == "model_type"
    stored = await env.http.get(f"/api/profiles/{profile_id}", headers=env.auth)
    assert stored.json()["model_type"] == "lm"


# ---- should-fix: PATCH masks env for keys and restarts only for launch fields -----------------


async def test_patch_masks_env_for_an_api_key_as_get_does(env: Env) -> None:
    profile = await env.add_stub("masked", env={"HF_TOKEN": "hf_secret_value"})
    key = await env.new_key(scopes=["admin"])
    url = f"/api/profiles/{profile['id']}"
    as_key = {"Authorization": f"Bearer {key.secret}"}
    got = await env.http.get(url, headers=as_key)
    assert got.json()["env"] == {"HF_TOKEN": "***"}
    patched = await env.http.patch(url, json={}, headers=as_key)
    assert patched.status_code == 200, patched.text
    assert patched.json()["env"] == {"HF_TOKEN": "***"}
    assert "hf_secret_value" not in patched.text
    # Sending the masked value back (a GET-edit-PATCH round trip) keeps the stored secret.
    patched = await env.http.patch(url, json={"env": got.json()["env"]}, headers=as_key)
    assert patched.status_code == 200, patched.text
    revealed = await env.http.get(url, headers=env.auth)
    assert revealed.json()["env"] == {"HF_TOKEN": "hf_secret_value"}


async def test_patch_without_launch_changes_keeps_the_server_running(env: Env) -> None:
    profile = await env.add_stub("steady", quiet=True)
    started = await env.start("steady")
    url = f"/api/profiles/{profile['id']}"
    for change in ({}, {"idle_ttl": 300}, {"pinned": True}, {"aliases": ["steady-2"]}):
        response = await env.http.patch(url, json=change, headers=env.auth)
        assert response.status_code == 200, response.text
        server = await env.server("steady")
        assert (server["state"], server["pid"]) == ("ready", started["pid"]), change
    assert env.started_events("steady") == 1
    # An unchanged launch field is no change either.
    response = await env.http.patch(url, json={"command": profile["command"]}, headers=env.auth)
    assert response.status_code == 200, response.text
    assert (await env.server("steady"))["pid"] == started["pid"]


async def test_patch_of_a_launch_field_restarts_the_server(env: Env) -> None:
    profile = await env.add_stub("moving", quiet=True)
    started = await env.start("moving")
    url = f"/api/profiles/{profile['id']}"
    response = await env.http.patch(url, json={"env": {"MODE": "b"}}, headers=env.auth)
    assert response.status_code == 200, response.text
    server = await env.wait_server(
        "moving",
        lambda s: s["state"] == "ready" and s["pid"] != started["pid"],
        "restarted with a new process",
    )
    assert server["pid"] != started["pid"]
    assert env.started_events("moving") == 2


# ---- should-fix: names that share a log file and prompt cache are refused --------------------


async def test_a_name_that_maps_to_another_profiles_files_is_refused(env: Env) -> None:
    await env.add_stub("sec/TinyModel", quiet=True)
    for clashing in ("sec_TinyModel", "sec:TinyModel", "SEC_tinymodel", "sec/TinyModel."):
        response = await env.post("/api/profiles", {"name": clashing, "command": ["true"]})
        assert response.status_code == 409, (clashing, response.text)
        error = response.json()
        assert error["code"] == "name_clash"
        assert "'sec/TinyModel'" in error["detail"]  # names the other profile
    # A rename onto the same file name is refused too; the profile keeps its name.
    other = await env.add_stub("other", quiet=True)
    url = f"/api/profiles/{other['id']}"
    response = await env.http.patch(url, json={"name": "sec_TinyModel"}, headers=env.auth)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "name_clash"
    assert (await env.http.get(url, headers=env.auth)).json()["name"] == "other"
    # A profile renamed to its own file name's other spelling is not a clash with itself.
    response = await env.http.patch(url, json={"name": "Other"}, headers=env.auth)
    assert response.status_code == 200, response.text


async def test_a_jit_profile_does_not_take_another_profiles_files(tmp_path: Path) -> None:
    repo = "mlx-community/TinyModel"
    cache = fake_hf_cache(tmp_path / "hf-cache", repo, {"config.json": b'{"model_type": "llama"}'})
    settings = env_settings(
        tmp_path, backend_bin=str(fake_backend(tmp_path / "bin")), hf_cache_path=cache
    )
    async with gateway_env(tmp_path, settings) as env:
        await env.add_stub("mlx-community_TinyModel", quiet=True)
        # The fake backend cannot serve it; only the profile made on the way matters here.
        await env.chat(repo)
        listed = (await env.http.get("/api/profiles", headers=env.auth)).json()
        made = [p for p in listed if p["model_path"] == repo]
        assert len(made) == 1, listed
        assert made[0]["name"] == f"{repo}-2"
        assert made[0]["aliases"] == [repo]
        # A second request finds that profile instead of making another.
        await env.chat(repo)
        listed = (await env.http.get("/api/profiles", headers=env.auth)).json()
        assert [p["name"] for p in listed if p["model_path"] == repo] == [f"{repo}-2"]


# ---- should-fix: HOME and the database are private to the gateway's user ---------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def database_files(settings: Settings) -> list[Path]:
    assert settings.database_path is not None
    db = settings.database_path
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


async def test_a_new_home_and_database_are_private(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", jwt_secret=None)
    async with running_gateway(settings) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
            await register_and_login(http, "admin@example.com", "admin-password")
        assert mode(settings.home) == 0o700
        assert mode(settings.logs_dir) == 0o700
        assert mode(settings.home / "jwt-secret") == 0o600
        files = database_files(settings)
        assert all(path.exists() for path in files)  # WAL mode, open: all three are there
        assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}


async def test_an_existing_install_is_tightened_at_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    async with running_gateway(settings) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
            await register_and_login(http, "admin@example.com", "admin-password")
        # What an older version left: world-readable files in a world-readable folder.
        for path in database_files(settings):
            path.chmod(0o644)
        settings.home.chmod(0o755)
        settings.logs_dir.chmod(0o755)
        # Another process opening the same database (the CLI, a second start) tightens it.
        assert settings.database_path is not None
        engine = create_engine(settings.sqlalchemy_url)
        await engine.dispose()
        assert {p.name: mode(p) for p in database_files(settings)} == {
            p.name: 0o600 for p in database_files(settings)
        }
    settings.home.chmod(0o755)
    assert settings.database_path.exists()
    settings.database_path.chmod(0o644)
    async with running_gateway(settings):
        assert mode(settings.home) == 0o700
        assert mode(settings.logs_dir) == 0o700
        assert mode(settings.database_path) == 0o600
