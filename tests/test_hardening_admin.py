"""Issue 11, the control plane's share: profiles refused at save time when they could only fail
later, PATCH that masks and restarts only when it must, file names that cannot collide, private
files on disk, download errors that name their cause, and API key scopes.

Everything runs for real: a gateway under uvicorn, the stub model server for running profiles,
the hub emulator for downloads, a stand-in for mlx-openai-server 1.8.1's `launch --help`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.env import Env, env_settings, gateway_env
from tests.support.fake_backend import fake_backend


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
    key = await env.new_key()
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
