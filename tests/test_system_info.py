"""`GET /api/system/info` carries the shared vocabulary the admin page builds its controls
from: the model kinds (the profile form's choices) and the server states (which count as
running). The page keeps no copy of its own, so these lists must be what the API accepts."""

from __future__ import annotations

import sys

import httpx

from gateway.types import MODEL_TYPES, RUNNING, SERVER_STATES
from tests.conftest import approved_user, bearer
from tests.support.stub_server import STUB_SCRIPT

# Spelled out: CONTRACT.md names these, so a change here is a change of the contract.
CONTRACT_MODEL_TYPES = [
    "lm",
    "multimodal",
    "embeddings",
    "whisper",
    "image-generation",
    "image-edit",
]
CONTRACT_STATES = ["stopped", "starting", "ready", "stopping", "failed"]


async def test_info_lists_model_types_and_server_states(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    _, token = await approved_user(client, admin_token)  # any user: the page needs it too
    response = await client.get("/api/system/info", headers=bearer(token))
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["model_types"] == CONTRACT_MODEL_TYPES == list(MODEL_TYPES)
    assert info["server_states"] == CONTRACT_STATES == list(SERVER_STATES)
    assert info["running_states"] == ["starting", "ready"]
    assert set(info["running_states"]) == RUNNING


async def test_info_needs_a_user(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/system/info")
    assert response.status_code == 401


async def test_every_listed_model_type_is_accepted_and_no_other(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    auth = bearer(admin_token)
    info = (await client.get("/api/system/info", headers=auth)).json()
    command = [sys.executable, str(STUB_SCRIPT), "--port", "{port}"]
    for kind in info["model_types"]:
        body = {"name": f"kind-{kind}", "model_type": kind, "command": command}
        response = await client.post("/api/profiles", json=body, headers=auth)
        assert response.status_code == 201, (kind, response.text)
        assert response.json()["model_type"] == kind
    body = {"name": "kind-other", "model_type": "text-to-speech", "command": command}
    response = await client.post("/api/profiles", json=body, headers=auth)
    assert response.status_code == 422, response.text
    assert "model_type" in response.json()["detail"]
