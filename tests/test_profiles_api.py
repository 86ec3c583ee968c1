"""`/api/profiles`: validation at write time, admin-only writes, and what a change does to a
running server (restart on PATCH, stop on DELETE).

mlx-openai-server profiles are checked against a stand-in for the installed 1.8.1 (its real
`launch --help`) and a Hugging Face cache built in the test's folder; `command` profiles run
the stub model server for real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.env import (
    Env,
    env_settings,
    gateway_env,
    process_gone,
    sse_data,
    stream_contents,
    stub_command,
)
from tests.support.fake_backend import BACKEND_VERSION, fake_backend, fake_hf_cache
from tests.support.waiting import wait_until

CACHED_REPO = "acme/tiny-chat"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = env_settings(
        tmp_path,
        backend_bin=str(fake_backend(tmp_path / "bin")),
        hf_cache_path=fake_hf_cache(tmp_path / "hf-cache", CACHED_REPO),
    )
    async with gateway_env(tmp_path, settings) as env:
        yield env


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "local-llama"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


async def post(env: Env, body: dict, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else env.auth
    return await env.http.post("/api/profiles", json=body, headers=headers)


async def patch(env: Env, profile_id: int, body: dict, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else env.auth
    return await env.http.patch(f"/api/profiles/{profile_id}", json=body, headers=headers)


# ---- create and validate ---------------------------------------------------------------------


async def test_create_a_command_profile(env):
    command = stub_command("--quiet")
    response = await post(env, {"name": "stub-1", "command": command, "aliases": ["s1"]})
    assert response.status_code == 201, response.text
    profile = response.json()
    assert profile["name"] == "stub-1"
    assert profile["command"] == command
    assert profile["aliases"] == ["s1"]
    assert profile["model_type"] == "lm"
    assert profile["health_path"] == "/health"
    assert profile["idle_ttl"] is None
    assert profile["memory_gb"] is None
    assert profile["pinned"] is False
    assert profile["state"] == "stopped"
    assert isinstance(profile["id"], int)

    listed = (await env.http.get("/api/profiles", headers=env.auth)).json()
    assert [p["name"] for p in listed] == ["stub-1"]
    one = await env.http.get(f"/api/profiles/{profile['id']}", headers=env.auth)
    assert one.status_code == 200
    assert one.json()["command"] == command


async def test_a_command_profile_may_point_anywhere(env):
    body = {"name": "elsewhere", "command": stub_command(), "model_path": "/not/a/folder"}
    response = await post(env, body)
    assert response.status_code == 201, response.text


async def test_create_a_profile_on_a_local_folder(env, model_folder):
    body = {
        "name": "local",
        "model_path": str(model_folder),
        "model_type": "lm",
        "context_length": 4096,
        "tool_call_parser": "hermes",
        "extra_args": ["--max-tokens", "256"],
        "env": {"MLX_EXTRA": "1"},
    }
    response = await post(env, body)
    assert response.status_code == 201, response.text
    profile = response.json()
    assert profile["model_path"] == str(model_folder)
    assert profile["extra_args"] == ["--max-tokens", "256"]
    assert profile["env"] == {"MLX_EXTRA": "1"}


async def test_create_a_profile_on_a_repo_in_the_hf_cache(env):
    response = await post(env, {"name": "cached", "model_path": CACHED_REPO})
    assert response.status_code == 201, response.text
    assert response.json()["model_path"] == CACHED_REPO


async def test_a_repo_missing_from_the_cache_is_refused_naming_it(env):
    response = await post(env, {"name": "missing", "model_path": "acme/not-downloaded"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert "acme/not-downloaded" in body["detail"]
    assert "Hugging Face cache" in body["detail"]
    assert body["param"] == "model_path"


async def test_a_missing_local_folder_is_refused(env, tmp_path):
    response = await post(env, {"name": "gone", "model_path": str(tmp_path / "no-such-folder")})
    assert response.status_code == 422, response.text
    assert "no-such-folder" in response.json()["detail"]


async def test_model_path_is_required_without_a_command(env):
    response = await post(env, {"name": "nothing"})
    assert response.status_code == 422, response.text
    assert response.json()["param"] == "model_path"


async def test_names_are_unique_also_against_aliases(env):
    first = await post(env, {"name": "alpha", "command": stub_command(), "aliases": ["a1"]})
    assert first.status_code == 201, first.text

    for body in (
        {"name": "alpha", "command": stub_command()},  # same name
        {"name": "a1", "command": stub_command()},  # another profile's alias
        {"name": "beta", "command": stub_command(), "aliases": ["alpha"]},  # alias = a name
        {"name": "gamma", "command": stub_command(), "aliases": ["a1"]},  # alias = an alias
    ):
        response = await post(env, body)
        assert response.status_code == 409, (body, response.text)
        assert response.json()["code"] == "name_taken"

    response = await post(env, {"name": "delta", "command": stub_command(), "aliases": ["delta"]})
    assert response.status_code == 422, response.text

    second = await post(env, {"name": "beta", "command": stub_command()})
    assert second.status_code == 201
    response = await patch(env, second.json()["id"], {"aliases": ["a1"]})
    assert response.status_code == 409, response.text
    response = await patch(env, second.json()["id"], {"name": "alpha"})
    assert response.status_code == 409, response.text
    # a profile may keep its own name
    response = await patch(env, second.json()["id"], {"name": "beta", "aliases": ["b1"]})
    assert response.status_code == 200, response.text


INVALID_FIELDS = [
    ("extra_args", "--max-tokens 512"),  # a shell string, never
    ("extra_args", ["--max-tokens", 512]),
    ("model_type", "llm"),
    ("port", 80),
    ("port", 70000),
    ("idle_ttl", -1),
    ("memory_gb", 0),
    ("env", {"A=B": "1"}),
    ("command", []),
    ("command", "python stub.py"),
    ("health_path", "health"),
    ("name", "has space"),
    ("aliases", "one-alias"),
]


async def test_invalid_fields_are_refused_with_422_naming_the_field(env):
    # One gateway for every case: each is an independent POST that must not create anything.
    for field, value in INVALID_FIELDS:
        body = {"name": "bad", "command": stub_command(), field: value}
        response = await post(env, body)
        assert response.status_code == 422, (field, value, response.text)
        assert field in response.json()["detail"], (field, value, response.text)
    assert (await env.http.get("/api/profiles", headers=env.auth)).json() == []


async def test_the_gateways_own_port_is_refused(env):
    body = {"name": "clash", "command": stub_command(), "port": env.settings.port}
    response = await post(env, body)
    assert response.status_code == 422, response.text
    assert response.json()["param"] == "port"


async def test_an_option_the_installed_server_lacks_is_refused_naming_flag_and_version(
    env, model_folder
):
    body = {"name": "m", "model_path": str(model_folder), "extra_args": ["--turbo-mode"]}
    response = await post(env, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "--turbo-mode" in detail
    assert f"mlx-openai-server {BACKEND_VERSION}" in detail


async def test_a_choice_the_installed_server_lacks_is_refused(env, model_folder):
    body = {"name": "m", "model_path": str(model_folder), "reasoning_parser": "deepseek_r1"}
    response = await post(env, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "--reasoning-parser" in detail
    assert "deepseek_r1" in detail


# ---- who may write -----------------------------------------------------------------------------


async def test_a_non_admin_can_read_but_not_write(env):
    created = await post(env, {"name": "shared", "command": stub_command()})
    profile_id = created.json()["id"]
    token = (await env.new_user()).token

    listed = await env.http.get("/api/profiles", headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200
    assert [p["name"] for p in listed.json()] == ["shared"]
    one = await env.http.get(
        f"/api/profiles/{profile_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert one.status_code == 200

    body = {"name": "mine", "command": stub_command(), "trust_remote_code": True}
    assert (await post(env, body, token)).status_code == 403
    assert (await patch(env, profile_id, {"trust_remote_code": True}, token)).status_code == 403
    deleted = await env.http.delete(
        f"/api/profiles/{profile_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert deleted.status_code == 403
    assert (await env.http.get("/api/profiles")).status_code == 401
    profile = (await env.http.get(f"/api/profiles/{profile_id}", headers=env.auth)).json()
    assert profile["trust_remote_code"] is False


async def test_unknown_profile_ids_are_404(env):
    assert (await env.http.get("/api/profiles/999", headers=env.auth)).status_code == 404
    assert (await patch(env, 999, {"pinned": True})).status_code == 404
    assert (await env.http.delete("/api/profiles/999", headers=env.auth)).status_code == 404


# ---- changes to a running server ------------------------------------------------------------


async def test_patching_a_running_profile_restarts_its_server_with_the_new_settings(env):
    await env.add_stub("live", "--chunks", "2")
    old = await env.start("live")

    command = [*env.profiles["live"]["command"][:-2], "--chunks", "3"]
    response = await patch(env, env.profile_id("live"), {"command": command, "idle_ttl": 300})
    assert response.status_code == 200, response.text
    assert response.json()["idle_ttl"] == 300

    async def restarted():
        server = await env.server("live")
        return server["state"] == "ready" and server["pid"] not in (None, old["pid"])

    await wait_until(restarted, message="a restart with a new pid")
    assert process_gone(old["pid"])
    async with env.stream("live") as stream:
        body = (await stream.aread()).decode()
    assert stream_contents(sse_data(body)) == ["tok0 ", "tok1 ", "tok2 "]


async def test_patching_a_stopped_profile_does_not_start_it(env):
    await env.add_stub("idle")
    response = await patch(env, env.profile_id("idle"), {"pinned": True})
    assert response.status_code == 200, response.text
    assert response.json()["pinned"] is True
    assert (await env.server("idle"))["state"] == "stopped"
    assert env.started_events("idle") == 0


async def test_deleting_a_running_profile_stops_its_server_and_removes_the_model(env):
    await env.add_stub("doomed", aliases=["doomed-alias"])
    await env.add_stub("kept")
    pid = (await env.start("doomed"))["pid"]
    models = (await env.http.get("/v1/models", headers=env.auth)).json()["data"]
    assert {m["id"] for m in models} == {"doomed", "doomed-alias", "kept"}

    response = await env.http.delete(f"/api/profiles/{env.profile_id('doomed')}", headers=env.auth)
    assert response.status_code == 204, response.text
    assert process_gone(pid)

    models = (await env.http.get("/v1/models", headers=env.auth)).json()["data"]
    assert {m["id"] for m in models} == {"kept"}
    response = await env.chat("doomed")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert (
        await env.http.get(f"/api/profiles/{env.profile_id('doomed')}", headers=env.auth)
    ).status_code == 404
    assert [s["name"] for s in await env.servers()] == ["kept"]
    # the name is free again
    response = await post(env, {"name": "doomed", "command": stub_command()})
    assert response.status_code == 201, response.text


async def test_models_lists_names_and_aliases_with_their_state(env):
    await env.add_stub("m1", aliases=["m1-fast"])
    await env.start("m1")
    response = await env.http.get("/v1/models", headers=env.auth)
    assert response.status_code == 200
    data = {m["id"]: m for m in response.json()["data"]}
    assert data["m1"]["state"] == "ready"
    assert data["m1-fast"]["state"] == "ready"
    assert data["m1"]["object"] == "model"
    response = await env.http.get("/v1/models/m1-fast", headers=env.auth)
    assert response.status_code == 200
    assert response.json()["id"] == "m1-fast"
    # an alias routes to the profile's server
    assert (await env.chat("m1-fast")).status_code == 200
    assert env.started_events("m1") == 1
