"""Error answers and request ids: `/api` speaks `{"detail": ...}`, `/v1` speaks OpenAI."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import ControlPlane, create_app
from gateway.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    error_response,
    openai_error_response,
)
from gateway.settings import Settings

GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


async def test_every_response_carries_a_request_id(client):
    responses = [
        await client.get("/health"),
        await client.get("/api/auth/me"),
        await client.get("/api/nowhere"),
        await client.get("/v1/nowhere"),
        await client.post("/api/auth/register", content=b"{broken"),
        await client.post("/api/auth/register", json={"email": "x", "password": "y"}),
        await client.get("/api/auth/login"),
        await client.get("/"),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids), [(r.request.url.path, r.status_code) for r in responses]
    assert len(set(ids)) == len(ids)
    assert all(GENERATED_ID.match(i) for i in ids if i)


@pytest.mark.parametrize(
    "incoming",
    ["abc-123", "req_42.retry:1", "A" * 128, "0f0e0d0c-0b0a-4909-8807-060504030201"],
)
async def test_a_valid_incoming_request_id_is_echoed(client, incoming):
    for path in ("/health", "/api/auth/me", "/v1/nowhere"):
        response = await client.get(path, headers={"x-request-id": incoming})
        assert response.headers["x-request-id"] == incoming, path


@pytest.mark.parametrize(
    "incoming",
    ["A" * 129, "has space", "semi;colon", "<script>", "new\\nline", 'quo"te', "ünï"],
)
async def test_an_invalid_incoming_request_id_is_replaced(client, incoming):
    response = await client.get("/health", headers=[(b"x-request-id", incoming.encode("utf-8"))])
    assert response.status_code == 200
    replaced = response.headers["x-request-id"]
    assert replaced != incoming
    assert GENERATED_ID.match(replaced)


async def test_unknown_v1_path_answers_in_openai_shape(client):
    for path in ("/v1/nowhere", "/v1", "/v1/chat/completions/extra"):
        response = await client.get(path)
        assert response.status_code == 404, path
        body = response.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["code"] == "unknown_url"
        assert body["error"]["message"]


async def test_unknown_api_path_answers_detail(client):
    response = await client.get("/api/nowhere")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
    response = await client.get("/api/users/not-a-number")
    assert response.status_code == 404
    assert "detail" in response.json()
    assert "error" not in response.json()


async def test_wrong_method_is_405_json(client):
    response = await client.get("/api/auth/login")
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert "POST" in response.headers["allow"]


async def test_api_errors_are_json_with_detail_and_code(client):
    response = await client.get("/api/auth/me")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail", "code"}

    response = await client.post(
        "/api/auth/register", json={"email": "a@example.com", "password": "short"}
    )
    assert response.status_code == 422
    assert set(response.json()) == {"detail", "code", "param"}


async def test_oversized_body_is_413(client):
    payload = {"email": "a@example.com", "password": "x" * (2 * 1024 * 1024)}
    response = await client.post("/api/auth/register", json=payload)
    assert response.status_code == 413, response.text[:200]
    assert response.json()["code"] == "request_too_large"
    assert response.headers["x-request-id"]


async def test_unhandled_errors_become_json_500_with_the_request_id(settings: Settings):
    async def boom(request: Request) -> Response:
        raise RuntimeError("secret internals: password=hunter2")

    app = create_app(
        settings, ControlPlane(routes=[Route("/api/boom", boom), Route("/v1/boom", boom)])
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        response = await client.get("/api/boom", headers={"x-request-id": "trace-me"})
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "trace-me"
        body = response.json()
        assert body["code"] == "internal_error"
        assert "trace-me" in body["detail"]
        assert "hunter2" not in response.text

        response = await client.get("/v1/boom")
        assert response.status_code == 500
        request_id = response.headers["x-request-id"]
        error = response.json()["error"]
        assert error["type"] == "server_error"
        assert request_id in error["message"]
        assert "hunter2" not in response.text


@pytest.mark.parametrize(
    ("error", "status", "error_type", "code"),
    [
        (BadRequest("bad"), 400, "invalid_request_error", "invalid_request"),
        (Unauthorized("who"), 401, "authentication_error", "invalid_api_key"),
        (Forbidden("no"), 403, "permission_error", "forbidden"),
        (NotFound("gone", code="model_not_found"), 404, "invalid_request_error", "model_not_found"),
        (Conflict("dup"), 409, "invalid_request_error", "conflict"),
        (TooManyRequests("slow", headers={"Retry-After": "7"}), 429, "rate_limit_error", None),
    ],
)
def test_error_response_shapes(error, status, error_type, code):
    openai = error_response(error, openai_shape=True)
    assert openai.status_code == status
    body = json.loads(bytes(openai.body))
    assert body == {
        "error": {
            "message": error.message,
            "type": error_type,
            "param": None,
            "code": code or error.code,
        }
    }
    api = error_response(error, openai_shape=False)
    assert api.status_code == status
    assert json.loads(bytes(api.body)) == {"detail": error.message, "code": code or error.code}
    for response in (openai, api):
        for name, value in error.headers.items():
            assert response.headers[name] == value


def test_openai_error_response_defaults():
    response = openai_error_response(503, "busy")
    assert response.status_code == 503
    assert json.loads(bytes(response.body))["error"] == {
        "message": "busy",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    response = openai_error_response(429, "slow", headers={"Retry-After": "3"})
    assert json.loads(bytes(response.body))["error"]["type"] == "rate_limit_error"
    assert response.headers["retry-after"] == "3"
