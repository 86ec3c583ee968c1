"""Usage accounting of /v1 requests and the `/api/usage` report.

One real gateway for the module with its own database. The `traffic` fixture sends a known set
of requests once (as a user with an API key, the same user with a JWT, and the admin) and notes
the token counts the stub model server itself reported in each answer; the tests then compare
the report with those numbers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlmodel import select

from gateway.tables import Usage
from tests.support.env import (
    Env,
    Key,
    User,
    bearer,
    chat_body,
    gateway_env,
    sse_data,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "usage-model"
ALIAS = "usage-alias"
CRASH = "usage-crash"


@dataclass
class Sent:
    """One request of the traffic, with the tokens the model server said it used."""

    request_id: str
    model: str
    endpoint: str
    user_id: int
    key_id: int | None
    status: int
    prompt: int
    completion: int


@dataclass
class Traffic:
    user: User
    key: Key
    idle_key: Key
    admin_id: int
    before: datetime
    after: datetime
    sent: list[Sent] = field(default_factory=list)

    def where(self, **match: Any) -> list[Sent]:
        return [s for s in self.sent if all(getattr(s, k) == v for k, v in match.items())]


def expected(sent: list[Sent]) -> dict[str, int]:
    return {
        "requests": len(sent),
        "prompt_tokens": sum(s.prompt for s in sent),
        "completion_tokens": sum(s.completion for s in sent),
        "total_tokens": sum(s.prompt + s.completion for s in sent),
        "errors": sum(s.status >= 400 for s in sent),
    }


def numbers(group: dict[str, Any]) -> dict[str, int]:
    return {
        k: group[k]
        for k in ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors")
    }


def rid() -> str:
    return f"req-{uuid.uuid4().hex}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    async with gateway_env(tmp_path_factory.mktemp("usage")) as env:
        await env.add_stub(MODEL, "--chunks", "4", aliases=[ALIAS])
        await env.add_stub(CRASH)
        yield env


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traffic(env: Env) -> Traffic:
    me = await env.http.get("/api/auth/me", headers=env.auth)
    user = await env.new_user("usage-user@example.com")
    key = await env.new_key(user.token, name="usage-key", scopes=["inference", "admin"])
    idle_key = await env.new_key(user.token, name="idle-key")
    # Start the servers first so the traffic below is all that is recorded for them.
    for name in (MODEL, CRASH):
        profile_id = env.profiles[name]["id"]
        started = await env.http.post(f"/api/servers/{profile_id}/start", headers=env.auth)
        assert started.status_code == 200, started.text
    traffic = Traffic(
        user=user,
        key=key,
        idle_key=idle_key,
        admin_id=me.json()["id"],
        before=datetime.now(UTC),
        after=datetime.now(UTC),
    )

    async def send(
        endpoint: str, body: dict[str, Any], token: str, user_id: int, key_id: int | None
    ) -> None:
        request_id = rid()
        response = await env.post(endpoint, body, token, headers={"x-request-id": request_id})
        usage: dict[str, Any] = {}
        if response.status_code == 200 and body.get("stream"):
            payloads = [json.loads(p) for p in sse_data(response.content) if p != "[DONE]"]
            usage = next((p["usage"] for p in reversed(payloads) if p.get("usage")), {})
        elif response.status_code == 200:
            usage = response.json().get("usage", {})
        traffic.sent.append(
            Sent(
                request_id=request_id,
                model=body["model"],
                endpoint=endpoint,
                user_id=user_id,
                key_id=key_id,
                status=response.status_code,
                prompt=usage.get("prompt_tokens", usage.get("input_tokens", 0)),
                completion=usage.get("completion_tokens", usage.get("output_tokens", 0)),
            )
        )

    by_key = (key.secret, user.id, key.id)
    by_jwt = (user.token, user.id, None)
    as_admin = (env.token, traffic.admin_id, None)
    chat_stream = chat_body(MODEL, "count these five words", stream=True)
    sends = [
        ("/v1/chat/completions", chat_body(MODEL, "alpha beta gamma"), *by_key),
        (
            "/v1/chat/completions",
            {**chat_stream, "stream_options": {"include_usage": True}},
            *by_key,
        ),
        ("/v1/embeddings", {"model": MODEL, "input": ["one two", "three"]}, *by_jwt),
        ("/v1/chat/completions", chat_body(ALIAS, "through the alias"), *by_jwt),
        ("/v1/chat/completions", chat_stream, *by_jwt),  # no usage asked: no tokens known
        ("/v1/chat/completions", chat_body(MODEL, "__error_500__"), *as_admin),
        ("/v1/responses", {"model": MODEL, "input": "four words of input"}, *as_admin),
        ("/v1/chat/completions", chat_body(CRASH, "__crash__"), *as_admin),
    ]
    for endpoint, body, token, user_id, key_id in sends:
        await send(endpoint, body, token, user_id, key_id)
    statuses = [s.status for s in traffic.sent]
    assert statuses == [200, 200, 200, 200, 200, 500, 200, 502], statuses
    unknown = traffic.sent[4]  # the stream that did not ask for usage
    assert all(s.prompt > 0 for s in traffic.sent if s.status == 200 and s is not unknown)
    assert (unknown.prompt, unknown.completion) == (0, 0)

    # Records are written when each answer is done, which the client may see a bit earlier.
    async def all_recorded() -> bool:
        report = await env.http.get("/api/usage?group_by=user", headers=env.auth)
        return sum(g["requests"] for g in report.json()["groups"]) == len(traffic.sent)

    await wait_until(all_recorded, message="every request recorded")
    traffic.after = datetime.now(UTC)
    return traffic


async def report(env: Env, token: str | None = None, **params: str) -> dict[str, Any]:
    response = await env.http.get("/api/usage", params=params, headers=bearer(token or env.token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_by_model(env: Env, traffic: Traffic):
    body = await report(env, group_by="model")
    assert body["group_by"] == "model"
    groups = {g["model"]: g for g in body["groups"]}
    assert numbers(groups[MODEL]) == expected(traffic.where(model=MODEL))
    assert numbers(groups[ALIAS]) == expected(traffic.where(model=ALIAS))
    assert groups[MODEL]["avg_latency_ms"] > 0
    assert groups[MODEL]["model_id"] == MODEL


async def test_by_model_counts_a_dead_model_server_under_its_model(env: Env, traffic: Traffic):
    body = await report(env, group_by="model")
    groups = {g["model"]: g for g in body["groups"]}
    assert "" not in groups, f"a request was recorded without its model: {groups.get('')}"
    assert numbers(groups[CRASH]) == expected(traffic.where(model=CRASH))


async def test_by_user(env: Env, traffic: Traffic):
    body = await report(env, group_by="user")
    groups = {g["user_id"]: g for g in body["groups"]}
    assert set(groups) == {traffic.user.id, traffic.admin_id}
    assert numbers(groups[traffic.user.id]) == expected(traffic.where(user_id=traffic.user.id))
    assert numbers(groups[traffic.admin_id]) == expected(traffic.where(user_id=traffic.admin_id))
    assert groups[traffic.user.id]["user"] == traffic.user.email


async def test_by_key(env: Env, traffic: Traffic):
    body = await report(env, group_by="key")
    groups = {g["key_id"]: g for g in body["groups"]}
    assert set(groups) == {traffic.key.id, None}
    assert numbers(groups[traffic.key.id]) == expected(traffic.where(key_id=traffic.key.id))
    assert numbers(groups[None]) == expected(traffic.where(key_id=None))
    assert groups[traffic.key.id]["key"].startswith("usage-key (sk-")
    assert traffic.key.secret not in json.dumps(body)


async def test_the_streamed_usage_is_counted(env: Env, traffic: Traffic):
    streamed = traffic.sent[1]
    assert (streamed.prompt, streamed.completion) == (4, 4)  # the stub's own numbers
    rows = await usage_rows(env)
    row = rows[streamed.request_id]
    assert (row.prompt_tokens, row.completion_tokens) == (4, 4)


async def usage_rows(env: Env) -> dict[str | None, Usage]:
    await report(env)  # flushes the write buffer
    async with env.handle.core.sessions() as session:
        rows = (await session.exec(select(Usage))).all()
    return {r.request_id: r for r in rows}


async def test_each_request_is_one_row_with_its_details(env: Env, traffic: Traffic):
    rows = await usage_rows(env)
    for sent in traffic.sent:
        row = rows[sent.request_id]
        seen = (row.model, row.endpoint, row.status, row.user_id, row.key_id)
        assert seen == (sent.model, sent.endpoint, sent.status, sent.user_id, sent.key_id), sent
        assert (row.prompt_tokens, row.completion_tokens) == (sent.prompt, sent.completion)
        assert row.latency_ms > 0
        if sent.status == 200:
            assert row.ttfb_ms is not None
            assert 0 <= row.ttfb_ms <= row.latency_ms


async def test_since_and_until(env: Env, traffic: Traffic):
    def total(body: dict[str, Any]) -> int:
        return sum(g["requests"] for g in body["groups"])

    everything = len(traffic.sent)
    assert total(await report(env, since=traffic.before.isoformat())) == everything
    assert total(await report(env, until=traffic.after.isoformat())) == everything
    window = await report(env, since=traffic.before.isoformat(), until=traffic.after.isoformat())
    assert total(window) == everything
    assert window["since"] == traffic.before.isoformat()
    assert total(await report(env, since=traffic.after.isoformat())) == 0
    assert total(await report(env, until=traffic.before.isoformat())) == 0
    zulu = (traffic.after + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert total(await report(env, since=zulu)) == 0
    assert total(await report(env, until=zulu)) == everything


async def test_a_user_sees_only_their_own(env: Env, traffic: Traffic):
    mine = traffic.where(user_id=traffic.user.id)
    by_user = await report(env, traffic.user.token, group_by="user")
    assert [g["user_id"] for g in by_user["groups"]] == [traffic.user.id]
    assert numbers(by_user["groups"][0]) == expected(mine)
    by_model = await report(env, traffic.user.token, group_by="model")
    groups = {g["model"]: g for g in by_model["groups"]}
    assert set(groups) == {MODEL, ALIAS}
    assert numbers(groups[MODEL]) == expected([s for s in mine if s.model == MODEL])
    by_key = await report(env, traffic.key.secret, group_by="key")
    assert {g["key_id"] for g in by_key["groups"]} == {traffic.key.id, None}
    assert sum(g["requests"] for g in by_key["groups"]) == len(mine)


async def test_bad_parameters_are_400(env: Env, traffic: Traffic):
    for params in ({"group_by": "endpoint"}, {"since": "yesterday"}, {"until": "2024-13-45"}):
        response = await env.http.get("/api/usage", params=params, headers=env.auth)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["param"] == next(iter(params))
    assert (await env.http.get("/api/usage")).status_code == 401


async def test_the_api_keys_last_used_at_is_set(env: Env, traffic: Traffic):
    async def keys() -> dict[int, dict[str, Any]] | None:
        response = await env.http.get("/api/keys", headers=bearer(traffic.user.token))
        assert response.status_code == 200, response.text
        listed = {k["id"]: k for k in response.json()}
        return listed if listed[traffic.key.id]["last_used_at"] else None

    listed = await wait_until(keys, message="last_used_at set")
    used = datetime.fromisoformat(listed[traffic.key.id]["last_used_at"])
    if used.tzinfo is None:
        used = used.replace(tzinfo=UTC)
    assert traffic.before - timedelta(seconds=1) <= used <= datetime.now(UTC)
    assert listed[traffic.idle_key.id]["last_used_at"] is None
