"""Races and leaks around profiles and starts, each found in review and pinned here."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.errors import Unprocessable
from gateway.serving.launch import build_command, parse_help
from gateway.tables import ServerProfile
from tests.conftest import bearer
from tests.support.env import gateway_env, stub_command

HELP = """Usage: mlx-openai-server launch [OPTIONS]
  --model-path TEXT
  --model-type [lm|multimodal|image-generation|image-edit|embeddings|whisper]
  --served-model-name TEXT
  --port INTEGER
  --host TEXT
  --max-tokens INTEGER
"""


async def test_two_starts_at_once_never_share_a_port(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env:
        await env.add_stub("a", "--name", "a")
        await env.add_stub("b", "--name", "b", "--startup-delay", "1")
        a, b = env.managed("a"), env.managed("b")
        await asyncio.gather(env.manager.start(a), env.manager.start(b))
        assert a.port != b.port
        reply = await env.chat("b")
        assert reply.status_code == 200
        assert reply.json()["model"] == "b"  # answered by b's own server, not a's


async def test_concurrent_creates_of_one_name_give_one_profile_and_a_409(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env:
        body = {"name": "twin", "command": stub_command(), "aliases": ["shared"]}
        other = {"name": "other", "command": stub_command(), "aliases": ["shared"]}
        replies = await asyncio.gather(
            env.http.post("/api/profiles", json=body, headers=env.auth),
            env.http.post("/api/profiles", json=body, headers=env.auth),
            env.http.post("/api/profiles", json=other, headers=env.auth),
        )
        assert sorted(r.status_code for r in replies) == [201, 409, 409]
        listed = (await env.http.get("/api/profiles", headers=env.auth)).json()
        assert len(listed) == 1


async def test_profile_env_values_are_hidden_from_non_admins_and_keys(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env:
        await env.add_stub("secretive", env={"HF_TOKEN": "hf_supersecret"})
        user = (await env.new_user()).token
        for token in (user,):
            listed = (await env.http.get("/api/profiles", headers=bearer(token))).json()
            assert listed[0]["env"] == {"HF_TOKEN": "***"}
        body = {"name": "k", "scopes": ["admin"]}
        key = await env.http.post("/api/keys", json=body, headers=env.auth)
        as_key = await env.http.get("/api/profiles", headers=bearer(key.json()["key"]))
        assert as_key.json()[0]["env"] == {"HF_TOKEN": "***"}
        as_admin = (await env.http.get("/api/profiles", headers=env.auth)).json()
        assert as_admin[0]["env"] == {"HF_TOKEN": "hf_supersecret"}


@pytest.mark.parametrize("extra", [["--host", "0.0.0.0"], ["--port=9999"], ["--model-path", "x"]])
def test_extra_args_cannot_take_over_flags_the_gateway_owns(extra: list[str]) -> None:
    backend = parse_help("/bin/mlx-openai-server", HELP)
    profile = ServerProfile(name="p", model_path="/m", extra_args=extra)
    with pytest.raises(Unprocessable) as info:
        build_command(profile, port=10240, model_folder="/m", backend=backend)
    assert info.value.code == "reserved_option"
    allowed = ServerProfile(name="p", model_path="/m", extra_args=["--max-tokens", "5"])
    argv = build_command(allowed, port=10240, model_folder="/m", backend=backend)
    assert argv[-2:] == ["--max-tokens", "5"]
