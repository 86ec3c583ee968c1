"""The /v1 proxy: routing by model and alias, model listing, auth, and what is forwarded.

One real gateway for the module (uvicorn on a real port), with `command` profiles running the
stub model server and the echo upstream (tests/support/echo_upstream.py) as real subprocesses.
What a test asserts about the upstream side it reads from what that upstream recorded.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
import pytest_asyncio
from sqlmodel import select

from gateway.tables import ApiKey
from tests.support.env import (
    Env,
    assert_openai_error,
    bearer,
    chat_body,
    gateway_env,
    multipart,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "route-model"
ALIAS = "route-alias"
SLASHED = "org/model"
ECHO = "echo"
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(64))
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    async with gateway_env(tmp_path_factory.mktemp("proxy")) as env:
        await env.add_stub(MODEL, "--chunks", "3", aliases=[ALIAS, "route-alias-2"])
        await env.add_stub(SLASHED, "--chunks", "3")
        await env.add_echo(ECHO)
        yield env


def rid() -> str:
    return f"req-{uuid.uuid4().hex}"


async def stub_request(env: Env, name: str, request_id: str) -> dict[str, Any]:
    """The stub's `request` event for the request sent with `request_id`."""
    [event] = env.events(name, "request", request_id=request_id)
    return event


async def echo_request(env: Env, request_id: str) -> dict[str, Any]:
    [event] = env.events(ECHO, "request", request_id=request_id)
    return event


# ---- routing ---------------------------------------------------------------------------------

JSON_ENDPOINTS: list[tuple[str, dict[str, Any], str | None]] = [
    ("/v1/chat/completions", chat_body(MODEL, "hi there"), "chat.completion"),
    ("/v1/completions", {"model": MODEL, "prompt": "once upon"}, "text_completion"),
    ("/v1/embeddings", {"model": MODEL, "input": ["a b", "c"]}, "list"),
    ("/v1/responses", {"model": MODEL, "input": "say hi"}, "response"),
    ("/v1/images/generations", {"model": MODEL, "prompt": "a cat", "n": 2}, None),
]


@pytest.mark.parametrize(("path", "body", "kind"), JSON_ENDPOINTS, ids=lambda v: str(v)[:24])
async def test_json_endpoint_reaches_the_model_server(
    env: Env, path: str, body: dict[str, Any], kind: str | None
):
    request_id = rid()
    response = await env.post(path, body, headers={"x-request-id": request_id})
    assert response.status_code == 200, response.text
    data = response.json()
    if kind is not None:
        assert data["object"] == kind
    else:
        assert len(data["data"]) == 2
    event = await stub_request(env, MODEL, request_id)
    assert event["path"] == path
    assert event["method"] == "POST"
    assert event["model"] == MODEL


async def test_audio_transcription_multipart_routes_by_the_model_form_field(env: Env):
    request_id = rid()
    response = await env.http.post(
        "/v1/audio/transcriptions",
        data={"model": MODEL, "response_format": "json"},
        files={"file": ("clip.wav", WAV, "audio/wav")},
        headers={**env.auth, "x-request-id": request_id},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"text": f"stub transcription of clip.wav ({len(WAV)} bytes)"}
    event = await stub_request(env, MODEL, request_id)
    assert (event["path"], event["model"]) == ("/v1/audio/transcriptions", MODEL)


async def test_image_edit_multipart_routes_by_the_model_form_field(env: Env):
    request_id = rid()
    response = await env.http.post(
        "/v1/images/edits",
        data={"model": MODEL, "prompt": "add a hat", "n": "1"},
        files={"image": ("cat.png", PNG, "image/png")},
        headers={**env.auth, "x-request-id": request_id},
    )
    assert response.status_code == 200, response.text
    [image] = response.json()["data"]
    assert image["revised_prompt"] == f"stub edit of cat.png ({len(PNG)} bytes): add a hat"
    event = await stub_request(env, MODEL, request_id)
    assert (event["path"], event["model"]) == ("/v1/images/edits", MODEL)


async def test_a_profile_name_with_a_slash_routes(env: Env):
    request_id = rid()
    response = await env.post(
        "/v1/chat/completions", chat_body(SLASHED), headers={"x-request-id": request_id}
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == SLASHED
    assert (await stub_request(env, SLASHED, request_id))["model"] == SLASHED


@pytest.mark.parametrize("alias", [ALIAS, "route-alias-2"])
async def test_json_alias_reaches_the_upstream_as_the_profile_name(env: Env, alias: str):
    request_id = rid()
    response = await env.post(
        "/v1/chat/completions", chat_body(alias, "via alias"), headers={"x-request-id": request_id}
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "stub reply to: via alias"
    assert (await stub_request(env, MODEL, request_id))["model"] == MODEL


async def test_multipart_alias_reaches_the_upstream_as_the_profile_name(env: Env):
    request_id = rid()
    response = await env.http.post(
        "/v1/audio/transcriptions",
        data={"model": ALIAS},
        files={"file": ("clip.wav", WAV, "audio/wav")},
        headers={**env.auth, "x-request-id": request_id},
    )
    assert response.status_code == 200, response.text
    assert (await stub_request(env, MODEL, request_id))["model"] == MODEL


async def test_openai_sdk_reaches_the_stub_through_an_alias(env: Env):
    key = await env.new_key()
    async with env.openai(key.secret) as client:
        completion = await client.chat.completions.create(
            model=ALIAS, messages=[{"role": "user", "content": "sdk says hi"}]
        )
        assert completion.choices[0].message.content == "stub reply to: sdk says hi"
        assert completion.model == MODEL  # the stub answers as the profile it serves
        embedding = await client.embeddings.create(model=MODEL, input="one two")
        assert len(embedding.data[0].embedding) == 8


# ---- model listing ---------------------------------------------------------------------------


async def test_models_lists_every_profile_and_alias_with_its_state(env: Env):
    response = await env.http.get("/v1/models", headers=env.auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    listed = {m["id"]: m for m in body["data"]}
    assert set(listed) == {MODEL, ALIAS, "route-alias-2", SLASHED, ECHO}
    servers = await env.http.get("/api/servers", headers=env.auth)
    states = {s["name"]: s["state"] for s in servers.json()}
    for model_id, entry in listed.items():
        assert entry["object"] == "model"
        assert isinstance(entry["created"], int)
        assert entry["owned_by"]
        assert entry["state"] in ("stopped", "starting", "ready", "stopping", "failed"), entry
        assert entry["state"] == states[entry["profile"]], model_id
    assert listed[ALIAS]["profile"] == MODEL


async def test_models_reports_a_ready_server_as_ready(env: Env):
    response = await env.post("/v1/chat/completions", chat_body(MODEL))
    assert response.status_code == 200, response.text
    listed = {
        m["id"]: m for m in (await env.http.get("/v1/models", headers=env.auth)).json()["data"]
    }
    assert listed[MODEL]["state"] == "ready"
    assert listed[ALIAS]["state"] == "ready"


async def test_models_for_a_key_with_an_allowlist_shows_only_the_allowed(env: Env):
    key = await env.new_key(models=[ALIAS, SLASHED])
    response = await env.http.get("/v1/models", headers=bearer(key.secret))
    assert response.status_code == 200, response.text
    assert {m["id"] for m in response.json()["data"]} == {ALIAS, SLASHED}
    async with env.openai(key.secret) as client:
        assert {m.id async for m in client.models.list()} == {ALIAS, SLASHED}


async def test_model_by_id_including_one_with_a_slash(env: Env):
    for model_id, profile in ((MODEL, MODEL), (ALIAS, MODEL), (SLASHED, SLASHED)):
        response = await env.http.get(f"/v1/models/{model_id}", headers=env.auth)
        assert response.status_code == 200, response.text
        entry = response.json()
        assert (entry["id"], entry["object"], entry["profile"]) == (model_id, "model", profile)
    async with env.openai((await env.new_key()).secret) as client:
        assert (await client.models.retrieve(SLASHED)).id == SLASHED


async def test_unknown_model_by_id_is_404_model_not_found(env: Env):
    response = await env.http.get("/v1/models/no-such/model", headers=env.auth)
    assert_openai_error(response, 404, "model_not_found", "invalid_request_error")


async def test_model_by_id_outside_the_allowlist_is_403(env: Env):
    key = await env.new_key(models=[SLASHED])
    response = await env.http.get(f"/v1/models/{MODEL}", headers=bearer(key.secret))
    assert_openai_error(response, 403, error_type="permission_error")


# ---- refusals --------------------------------------------------------------------------------


async def test_unknown_model_is_404_model_not_found(env: Env):
    response = await env.post("/v1/chat/completions", chat_body("no-such-model"))
    error = assert_openai_error(response, 404, "model_not_found", "invalid_request_error")
    assert error["param"] == "model"
    assert "no-such-model" in error["message"]
    async with env.openai((await env.new_key()).secret) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "x"}]
            )


async def test_model_outside_the_keys_allowlist_is_403(env: Env):
    key = await env.new_key(models=[ALIAS])
    allowed = await env.post("/v1/chat/completions", chat_body(ALIAS), key.secret)
    assert allowed.status_code == 200, allowed.text
    for model in (SLASHED, ECHO):
        response = await env.post("/v1/chat/completions", chat_body(model), key.secret)
        error = assert_openai_error(response, 403, error_type="permission_error")
        assert error["param"] == "model"
    async with env.openai(key.secret) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(
                model=SLASHED, messages=[{"role": "user", "content": "x"}]
            )


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("sk-not-a-real-key"), bearer("not.a.jwt"), {"Authorization": "Basic abc"}],
    ids=["no-token", "bad-key", "bad-jwt", "not-bearer"],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models"])
async def test_missing_or_bad_credentials_are_401_in_openai_shape(
    env: Env, headers: dict[str, str], path: str
):
    request_id = rid()
    if path == "/v1/models":
        response = await env.http.get(path, headers=headers)
    else:
        response = await env.http.post(
            path, json=chat_body(MODEL), headers={**headers, "x-request-id": request_id}
        )
    assert_openai_error(response, 401, error_type="authentication_error")
    assert not env.events(MODEL, "request", request_id=request_id)


async def test_openai_sdk_raises_authentication_error_for_a_bad_key(env: Env):
    async with env.openai("sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()


async def test_unknown_paths_and_methods_answer_in_openai_shape(env: Env):
    missing = await env.http.get("/v1/no-such-endpoint", headers=env.auth)
    assert_openai_error(missing, 404, "unknown_url")
    wrong_method = await env.http.get("/v1/chat/completions", headers=env.auth)
    assert_openai_error(wrong_method, 405)


# ---- forwarding ------------------------------------------------------------------------------


async def test_json_body_is_forwarded_byte_for_byte(env: Env):
    raw = (
        '{ "zeta" :1,\n\t"model":   "echo" , "text": "h\u00e9llo \\u00e9 \u2713 \U0001f600",'
        ' "nested": {"b": [1 , 2.50, 1e3], "a": null}  ,"dup": 1, "dup": 2 }\n'
    ).encode()
    request_id = rid()
    response = await env.http.post(
        "/v1/chat/completions",
        content=raw,
        headers={**env.auth, "content-type": "application/json", "x-request-id": request_id},
    )
    assert response.status_code == 200, response.text
    event = await echo_request(env, request_id)
    assert base64.b64decode(event["body_b64"]) == raw
    assert event["path"] == "/v1/chat/completions"
    assert event["headers"]["content-type"] == "application/json"


async def test_multipart_body_is_forwarded_byte_for_byte(env: Env):
    raw, content_type = multipart(
        {"model": ECHO, "language": "fr"}, {"file": ("voix \u00e9.wav", WAV)}
    )
    request_id = rid()
    response = await env.http.post(
        "/v1/audio/transcriptions",
        content=raw,
        headers={**env.auth, "content-type": content_type, "x-request-id": request_id},
    )
    assert response.status_code == 200, response.text
    event = await echo_request(env, request_id)
    assert base64.b64decode(event["body_b64"]) == raw
    assert event["headers"]["content-type"] == content_type


async def test_credentials_and_cookies_never_reach_the_upstream(env: Env):
    key = await env.new_key()
    request_id = rid()
    response = await env.http.post(
        "/v1/chat/completions",
        json=chat_body(ECHO),
        headers={
            **bearer(key.secret),
            "Cookie": "session=secret-cookie; other=1",
            "X-Api-Key": key.secret,
            "x-request-id": request_id,
        },
    )
    assert response.status_code == 200, response.text
    event = await echo_request(env, request_id)
    headers = event["headers"]
    assert "authorization" not in headers
    assert "cookie" not in headers
    assert "x-api-key" not in headers
    assert key.secret not in json.dumps(event)
    assert "secret-cookie" not in json.dumps(event)
    # The stub model server sees the same: no Authorization, no Cookie.
    stub_id = rid()
    response = await env.http.post(
        "/v1/chat/completions",
        json=chat_body(MODEL),
        headers={**bearer(key.secret), "Cookie": "session=x", "x-request-id": stub_id},
    )
    assert response.status_code == 200, response.text
    stub_event = await stub_request(env, MODEL, stub_id)
    assert stub_event["authorization"] is None
    assert stub_event["cookie"] is None


async def test_request_id_goes_upstream_and_comes_back(env: Env):
    request_id = rid()
    response = await env.post(
        "/v1/chat/completions", chat_body(MODEL), headers={"X-Request-Id": request_id}
    )
    assert response.status_code == 200, response.text
    assert response.headers.get_list("x-request-id") == [request_id]
    assert (await stub_request(env, MODEL, request_id))["request_id"] == request_id


async def test_invalid_request_id_is_replaced_by_one_that_goes_upstream_and_back(env: Env):
    marker = rid()
    response = await env.post(
        "/v1/chat/completions",
        chat_body(ECHO),
        headers={"x-request-id": "not valid!", "x-marker": marker},
    )
    assert response.status_code == 200, response.text
    [returned] = response.headers.get_list("x-request-id")
    assert returned != "not valid!"
    [event] = [e for e in env.events(ECHO, "request") if e["headers"].get("x-marker") == marker]
    assert event["request_id"] == returned


async def test_a_request_without_an_id_gets_one_upstream_and_back(env: Env):
    marker = rid()
    response = await env.post(
        "/v1/embeddings", {"model": ECHO, "input": "x"}, headers={"x-marker": marker}
    )
    assert response.status_code == 200, response.text
    [returned] = response.headers.get_list("x-request-id")
    [event] = [e for e in env.events(ECHO, "request") if e["headers"].get("x-marker") == marker]
    assert event["request_id"] == returned


async def test_status_and_content_type_are_kept(env: Env):
    created = await env.post(
        "/v1/images/generations",
        {"model": ECHO, "prompt": "x"},
        headers={"x-echo-status": "201", "x-echo-body": '{"created": 1, "data": []}'},
    )
    assert created.status_code == 201, created.text
    assert created.json() == {"created": 1, "data": []}
    assert created.headers["content-type"] == "application/json"

    text = await env.post(
        "/v1/audio/transcriptions",
        {"model": ECHO},
        headers={"x-echo-content-type": "text/plain; charset=utf-8", "x-echo-body": "bonjour"},
    )
    assert text.status_code == 200, text.text
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert text.content == b"bonjour"


async def test_a_plain_text_transcription_from_the_model_server_stays_plain_text(env: Env):
    response = await env.http.post(
        "/v1/audio/transcriptions",
        data={"model": MODEL, "response_format": "text"},
        files={"file": ("a.wav", WAV, "audio/wav")},
        headers=env.auth,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == f"stub transcription of a.wav ({len(WAV)} bytes)"


async def test_query_string_and_path_go_upstream(env: Env):
    request_id = rid()
    response = await env.post(
        "/v1/responses?stream=false&x=1",
        {"model": ECHO, "input": "q"},
        headers={"x-request-id": request_id},
    )
    assert response.status_code == 200, response.text
    event = await echo_request(env, request_id)
    assert (event["path"], event["query"]) == ("/v1/responses", "stream=false&x=1")


# ---- revocation on the hot path --------------------------------------------------------------


async def test_deleting_a_key_makes_the_very_next_request_401(env: Env):
    user = await env.new_user(f"del-{uuid.uuid4().hex[:8]}@example.com")
    key = await env.new_key(user.token)
    assert (await env.post("/v1/chat/completions", chat_body(MODEL), key.secret)).status_code == 200
    deleted = await env.http.delete(f"/api/keys/{key.id}", headers=bearer(user.token))
    assert deleted.status_code == 204, deleted.text
    response = await env.post("/v1/chat/completions", chat_body(MODEL), key.secret)
    assert_openai_error(response, 401, error_type="authentication_error")
    assert_openai_error(await env.http.get("/v1/models", headers=bearer(key.secret)), 401)


async def test_disabling_the_owner_makes_the_very_next_request_401(env: Env):
    user = await env.new_user(f"off-{uuid.uuid4().hex[:8]}@example.com")
    key = await env.new_key(user.token)
    for token in (key.secret, user.token):
        assert (await env.post("/v1/chat/completions", chat_body(MODEL), token)).status_code == 200
    patched = await env.http.patch(
        f"/api/users/{user.id}", json={"status": "disabled"}, headers=env.auth
    )
    assert patched.status_code == 200, patched.text
    for token in (key.secret, user.token):
        response = await env.post("/v1/chat/completions", chat_body(MODEL), token)
        assert_openai_error(response, 401, error_type="authentication_error")


async def test_an_expired_key_is_refused(env: Env):
    user = await env.new_user(f"exp-{uuid.uuid4().hex[:8]}@example.com")
    key = await env.new_key(user.token, expires_in_days=1)
    assert (await env.post("/v1/chat/completions", chat_body(MODEL), key.secret)).status_code == 200

    async with env.handle.core.sessions() as session:
        row = (await session.exec(select(ApiKey).where(ApiKey.id == key.id))).one()
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
        await session.commit()

    # Changed behind the gateway's back (like the CLI would): honoured within the cache TTL.
    async def refused() -> bool:
        response = await env.post("/v1/chat/completions", chat_body(MODEL), key.secret)
        return response.status_code == 401

    await wait_until(refused, timeout=10, interval=0.1, message="expired key refused")
    response = await env.post("/v1/chat/completions", chat_body(MODEL), key.secret)
    error = assert_openai_error(response, 401, error_type="authentication_error")
    assert "expired" in error["message"]


async def test_a_key_expired_before_its_first_use_is_refused(env: Env):
    key = await env.new_key(expires_in_days=1)
    async with env.handle.core.sessions() as session:
        row = (await session.exec(select(ApiKey).where(ApiKey.id == key.id))).one()
        row.expires_at = datetime.now(UTC) - timedelta(minutes=1)
        session.add(row)
        await session.commit()
    response = await env.post("/v1/chat/completions", chat_body(MODEL), key.secret)
    assert_openai_error(response, 401, error_type="authentication_error")
