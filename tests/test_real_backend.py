"""The real mlx-openai-server with a generated tiny model, driven through the gateway.

These start real model servers (about 5-15 s each on 2 cores), so each module-level gateway is
shared by the tests that only read; tests that kill or evict get their own.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import bearer, make_settings
from tests.support.backend import require_backend, tiny_model, without_end_tokens
from tests.support.gateway import GatewayHandle, running_gateway
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.backend, pytest.mark.asyncio(loop_scope="module")]


class Deployment:
    def __init__(self, handle: GatewayHandle, http: httpx.AsyncClient, admin: str, key: str):
        self.handle = handle
        self.http = http
        self.admin = admin
        self.key = key
        self.profile_id = 0
        self.clients: list[openai.AsyncOpenAI] = []

    def sdk(self, key: str | None = None) -> openai.AsyncOpenAI:
        """An SDK client, closed when the deployment ends (an unclosed one is a warning)."""
        client = openai.AsyncOpenAI(
            base_url=self.handle.url + "/v1", api_key=key or self.key, max_retries=0, timeout=120
        )
        self.clients.append(client)
        return client

    async def create_profile(self, **fields: object) -> dict:
        body = {"model_path": str(tiny_model()), "model_type": "lm", **fields}
        response = await self.http.post("/api/profiles", json=body, headers=bearer(self.admin))
        assert response.status_code == 201, response.text
        return response.json()

    async def server(self, profile_id: int) -> dict:
        response = await self.http.get(f"/api/servers/{profile_id}", headers=bearer(self.admin))
        assert response.status_code == 200, response.text
        return response.json()


@asynccontextmanager
async def deploy(home: Path, **settings: object) -> AsyncIterator[Deployment]:
    backend = require_backend()
    config = make_settings(home, backend_bin=backend, start_timeout=180, **settings)
    async with (
        running_gateway(config) as handle,
        httpx.AsyncClient(base_url=handle.url, timeout=180) as http,
    ):
        creds = {"email": "admin@example.com", "password": "admin-password"}
        assert (await http.post("/api/auth/register", json=creds)).status_code == 201
        token = (await http.post("/api/auth/login", json=creds)).json()["access_token"]
        key = await http.post("/api/keys", json={"name": "sdk"}, headers=bearer(token))
        deployment = Deployment(handle, http, token, key.json()["key"])
        try:
            yield deployment
        finally:
            for client in deployment.clients:
                await client.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    async with deploy(tmp_path_factory.mktemp("real")) as deployment:
        profile = await deployment.create_profile(name="tiny", aliases=["tiny-alias"])
        deployment.profile_id = profile["id"]
        yield deployment


async def test_first_request_starts_the_server_and_chat_works(shared: Deployment) -> None:
    before = await shared.server(shared.profile_id)
    assert before["state"] == "stopped"
    client = shared.sdk()
    completion = await client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello there"}],
        max_tokens=8,
    )
    assert completion.choices[0].message.content is not None
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    after = await shared.server(shared.profile_id)
    assert after["state"] == "ready"
    assert psutil.pid_exists(after["pid"])
    assert after["memory_bytes"] > 50 * 1024 * 1024  # the whole process tree is measured


async def test_models_list_shows_names_aliases_and_state(shared: Deployment) -> None:
    models = await shared.sdk().models.list()
    ids = {m.id for m in models.data}
    assert {"tiny", "tiny-alias"} <= ids


async def test_streaming_chat_arrives_in_chunks_with_usage(shared: Deployment) -> None:
    stream = await shared.sdk().chat.completions.create(
        model="tiny-alias",
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        logit_bias=without_end_tokens(),  # twelve tokens, never fewer
    )
    # Random weights: the words (even whether bytes decode into text) vary from run to run,
    # so this checks the protocol: several chunks, usage at the end.
    chunks = 0
    usage = None
    async for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
    assert chunks > 2
    assert usage is not None
    assert usage.completion_tokens == 12


async def test_tools_are_passed_through(shared: Deployment) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    plain = await shared.sdk().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather?"}], max_tokens=4
    )
    with_tools = await shared.sdk().chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Weather?"}],
        max_tokens=4,
        tools=tools,  # type: ignore[arg-type]
    )
    # The chat template renders the tools into the prompt: proof they reached the server.
    assert plain.usage is not None
    assert with_tools.usage is not None
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens


async def test_responses_api(shared: Deployment) -> None:
    response = await shared.sdk().responses.create(
        model="tiny", input="Say hi", max_output_tokens=8
    )
    assert response.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens > 0


async def test_bad_key_and_unknown_model_raise_the_sdk_errors(shared: Deployment) -> None:
    with pytest.raises(openai.AuthenticationError):
        await shared.sdk(key="sk-not-a-real-key").models.list()
    with pytest.raises(openai.NotFoundError) as info:
        await shared.sdk().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.code == "model_not_found"


async def test_usage_is_recorded_for_sdk_calls(shared: Deployment) -> None:
    response = await shared.http.get("/api/usage?group_by=model", headers=bearer(shared.admin))
    groups = {g["model"]: g for g in response.json()["groups"]}
    assert groups["tiny"]["completion_tokens"] > 0
    assert groups["tiny"]["prompt_tokens"] > 0


async def test_stop_start_and_health(shared: Deployment) -> None:
    pid = shared.profile_id
    headers = bearer(shared.admin)
    ready = (await shared.http.post(f"/api/servers/{pid}/start", headers=headers)).json()
    assert ready["state"] == "ready"
    health = httpx.get(f"http://127.0.0.1:{ready['port']}/health", timeout=10)
    assert health.status_code == 200
    stopped = (await shared.http.post(f"/api/servers/{pid}/stop", headers=headers)).json()
    assert stopped["state"] == "stopped"
    assert not psutil.pid_exists(ready["pid"]) or psutil.Process(ready["pid"]).status() == "zombie"
    started = await shared.http.post(f"/api/servers/{pid}/start", headers=headers)
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "ready"
    assert started.json()["pid"] != ready["pid"]


async def test_killed_server_comes_back_on_the_next_request(shared: Deployment) -> None:
    pid = shared.profile_id
    await shared.http.post(f"/api/servers/{pid}/start", headers=bearer(shared.admin))
    victim = (await shared.server(pid))["pid"]
    os.kill(victim, signal.SIGKILL)

    async def marked_stopped() -> bool:
        state: str = (await shared.server(pid))["state"]
        return state == "stopped"

    await wait_until(marked_stopped, timeout=30)
    completion = await shared.sdk().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "again"}], max_tokens=4
    )
    assert completion.choices
    now = await shared.server(pid)
    assert now["state"] == "ready"
    assert now["pid"] != victim


async def test_idle_server_is_evicted_for_another_and_ttl_stops_it(tmp_path: Path) -> None:
    # Each profile claims 1 GB; the cap holds one (the real tree measures ~0.5 GB).
    async with deploy(tmp_path / "evict", max_memory_gb=1.5) as deployment:
        first = await deployment.create_profile(name="first", memory_gb=1.0)
        second = await deployment.create_profile(name="second", memory_gb=1.0, idle_ttl=2)
        client = deployment.sdk()
        message: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
        await client.chat.completions.create(model="first", messages=message, max_tokens=2)
        first_pid = (await deployment.server(first["id"]))["pid"]
        await client.chat.completions.create(model="second", messages=message, max_tokens=2)

        evicted = await deployment.server(first["id"])
        assert evicted["state"] == "stopped"
        assert not psutil.pid_exists(first_pid) or (psutil.Process(first_pid).status() == "zombie")
        assert (await deployment.server(second["id"]))["state"] == "ready"

        async def second_stopped() -> bool:
            state: str = (await deployment.server(second["id"]))["state"]
            return state == "stopped"

        await wait_until(second_stopped, timeout=30)  # the 2 s TTL, counted from the end
