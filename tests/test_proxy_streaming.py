"""Streams through the /v1 proxy: chunk by chunk, unchanged, and closed upstream on disconnect.

One real gateway for the module; each profile runs the stub model server (or the echo upstream)
as a real subprocess. Ordering claims ("the first chunk arrives before the last is sent", "the
upstream saw its stream closed") are read from what the stub recorded in its events file, never
from a clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.support.env import (
    Env,
    chat_body,
    gateway_env,
    normalized,
    sse_data,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

FAST = "sse-fast"  # 5 chunks, no delay
SLOW = "sse-slow"  # 5 chunks, 200 ms apart
HELD = "sse-held"  # a long stream to disconnect from
ECHO = "sse-echo"
CHUNKS = 5


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    async with gateway_env(tmp_path_factory.mktemp("streaming")) as env:
        await env.add_stub(FAST, "--chunks", str(CHUNKS))
        await env.add_stub(SLOW, "--chunks", str(CHUNKS), "--chunk-delay", "0.2")
        await env.add_stub(HELD, "--chunks", "200", "--chunk-delay", "0.05")
        await env.add_echo(ECHO)
        yield env


def rid() -> str:
    return f"req-{uuid.uuid4().hex}"


def stream_body(model: str, **extra: Any) -> dict[str, Any]:
    return chat_body(model, "tell me a story", stream=True, **extra)


async def direct(env: Env, name: str, path: str, body: dict[str, Any]) -> bytes:
    """The same request straight to the profile's model server, bypassing the gateway."""
    server = await env.wait_server(name, lambda s: s["state"] == "ready", "ready")
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        response = await http.post(f"http://127.0.0.1:{server['port']}{path}", json=body)
    assert response.status_code == 200, response.text
    return response.content


async def through(env: Env, path: str, body: dict[str, Any]) -> httpx.Response:
    response = await env.post(path, body)
    assert response.status_code == 200, response.text
    return response


# ---- chunk by chunk --------------------------------------------------------------------------


async def test_the_first_chunk_arrives_before_the_stub_sends_the_last(env: Env):
    """With a chunk every 200 ms, the first content chunk reaches the client while the stub
    has not finished: its events file has no `stream_done` for this request yet."""
    request_id = rid()
    headers = {**env.auth, "x-request-id": request_id}
    async with env.http.stream(
        "POST", "/v1/chat/completions", json=stream_body(SLOW), headers=headers
    ) as response:
        assert response.status_code == 200
        contents: list[str] = []
        done_when_first_arrived: list[dict[str, Any]] | None = None
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta:
                if done_when_first_arrived is None:
                    done_when_first_arrived = env.events(SLOW, "stream_done", request_id=request_id)
                contents.append(delta)
    assert done_when_first_arrived == [], "the first chunk only arrived after the last was sent"
    assert contents == [f"tok{i} " for i in range(CHUNKS)]
    done = await env.wait_event(SLOW, "stream_done", request_id=request_id)
    assert done["chunks_sent"] == CHUNKS


async def test_the_openai_sdk_streams_through_the_gateway(env: Env):
    key = await env.new_key()
    async with env.openai(key.secret) as client:
        stream = await client.chat.completions.create(
            model=FAST,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"tok{i} " for i in range(CHUNKS))
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == CHUNKS


# ---- nothing added, nothing removed ----------------------------------------------------------

STREAMS = [
    ("/v1/chat/completions", stream_body(FAST)),
    ("/v1/chat/completions", stream_body(FAST, stream_options={"include_usage": True})),
    ("/v1/completions", {"model": FAST, "prompt": "abc", "stream": True}),
    (
        "/v1/completions",
        {"model": FAST, "prompt": "abc", "stream": True, "stream_options": {"include_usage": True}},
    ),
    ("/v1/responses", {"model": FAST, "input": "abc", "stream": True}),
]


@pytest.mark.parametrize(
    ("path", "body"),
    STREAMS,
    ids=["chat", "chat-usage", "completions", "completions-usage", "responses"],
)
async def test_stream_bytes_equal_the_direct_stream(env: Env, path: str, body: dict[str, Any]):
    gateway = await through(env, path, body)
    upstream = await direct(env, FAST, path, body)
    assert normalized(gateway.content) == normalized(upstream)
    assert gateway.headers["content-type"] == "text/event-stream; charset=utf-8"
    if path != "/v1/responses":
        assert gateway.content.count(b"data: [DONE]") == 1
        assert gateway.content.endswith(b"data: [DONE]\n\n")
    else:
        assert b"[DONE]" not in gateway.content
        assert gateway.content.rstrip().splitlines()[-2] == b"event: response.completed"


async def test_stream_headers_are_set_exactly_once(env: Env):
    response = await through(env, "/v1/chat/completions", stream_body(FAST))
    assert response.headers.get_list("cache-control") == ["no-cache"]
    assert response.headers.get_list("x-accel-buffering") == ["no"]
    assert len(response.headers.get_list("x-request-id")) == 1
    assert response.headers["content-type"].startswith("text/event-stream")


async def test_stream_headers_are_added_when_the_upstream_does_not_send_them(env: Env):
    response = await env.post(
        "/v1/chat/completions",
        {"model": ECHO, "stream": True},
        headers={
            "x-echo-content-type": "text/event-stream",
            "x-echo-body-b64": base64.b64encode(b'data: {"a": 1}\n\ndata: [DONE]\n\n').decode(),
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers.get_list("cache-control") == ["no-cache"]
    assert response.headers.get_list("x-accel-buffering") == ["no"]
    assert response.content == b'data: {"a": 1}\n\ndata: [DONE]\n\n'


async def test_include_usage_passes_through(env: Env):
    body = stream_body(FAST, stream_options={"include_usage": True})
    response = await through(env, "/v1/chat/completions", body)
    payloads = sse_data(response.content)
    assert payloads[-1] == "[DONE]"
    usage_chunk = json.loads(payloads[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 4,  # "tell me a story"
        "completion_tokens": CHUNKS,
        "total_tokens": 4 + CHUNKS,
    }
    without = await through(env, "/v1/chat/completions", stream_body(FAST))
    assert b'"usage"' not in without.content


# ---- in flight -------------------------------------------------------------------------------


async def test_inflight_counts_an_open_stream_and_last_used_moves_at_its_end(env: Env):
    warm = await through(env, "/v1/chat/completions", chat_body(SLOW))  # start it, set last_used_at
    assert warm.status_code == 200
    before = await env.wait_idle(SLOW)
    assert before["last_used_at"] is not None
    async with env.http.stream(
        "POST", "/v1/chat/completions", json=stream_body(SLOW), headers=env.auth
    ) as response:
        lines = response.aiter_lines()
        async for line in lines:
            if '"tok0 "' in line:
                break
        first_chunk_at = datetime.now(UTC)
        during = await env.server(SLOW)
        assert during["inflight"] == 1
        assert during["last_used_at"] == before["last_used_at"]
        rest = [line async for line in lines]
    assert [line for line in rest if line][-1] == "data: [DONE]"
    after = await env.wait_idle(SLOW)
    assert datetime.fromisoformat(after["last_used_at"]) > first_chunk_at


# ---- the client goes away --------------------------------------------------------------------


async def test_a_client_leaving_mid_stream_closes_the_upstream_stream(env: Env):
    request_id = rid()
    headers = {**env.auth, "x-request-id": request_id}
    async with (
        httpx.AsyncClient(base_url=env.url, timeout=30, trust_env=False) as http,
        http.stream(
            "POST", "/v1/chat/completions", json=stream_body(HELD), headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()  # kept referenced: dropping it would close the stream
        received = 0
        async for line in lines:
            received += '"tok' in line
            if received == 2:
                break
        assert (await env.server(HELD))["inflight"] == 1
        # Leaving the block without reading the rest closes the connection.
    closed = await env.wait_event(HELD, "stream_closed_by_client", request_id=request_id)
    assert 2 <= closed["chunks_sent"] < 200
    assert not env.events(HELD, "stream_done", request_id=request_id)
    await env.wait_idle(HELD)


async def test_the_sdk_closing_a_stream_early_closes_the_upstream_stream(env: Env):
    key = await env.new_key()
    request_id = rid()
    async with env.openai(key.secret) as client:
        stream = await client.chat.completions.create(
            model=HELD,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-request-id": request_id},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()
    await env.wait_event(HELD, "stream_closed_by_client", request_id=request_id)
    await env.wait_idle(HELD)


async def test_a_client_abandoning_a_slow_answer_closes_the_upstream_request(env: Env):
    """Non-streaming: the client leaves while the model server is still working on it."""
    request_id = rid()
    client = httpx.AsyncClient(base_url=env.url, timeout=60, trust_env=False)
    pending = asyncio.ensure_future(
        client.post(
            "/v1/chat/completions",
            json=chat_body(ECHO),
            headers={**env.auth, "x-request-id": request_id, "x-echo-delay": "30"},
        )
    )
    try:
        await env.wait_event(ECHO, "request", request_id=request_id)
        assert (await env.server(ECHO))["inflight"] == 1
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
    finally:
        await client.aclose()  # closes the abandoned connection
    await env.wait_event(ECHO, "cancelled", request_id=request_id)
    assert not env.events(ECHO, "answered", request_id=request_id)
    await env.wait_idle(ECHO)
    assert (await env.usage_row(request_id)).status == 499  # nothing was sent: client gone


async def test_concurrent_streams_each_count_in_flight(env: Env):
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(
                env.http.stream(
                    "POST", "/v1/chat/completions", json=stream_body(SLOW), headers=env.auth
                )
            )
            for _ in range(3)
        ]
        assert [r.status_code for r in streams] == [200, 200, 200]
        assert (await env.server(SLOW))["inflight"] == 3
        bodies = [await r.aread() for r in streams]
    for body in bodies:
        assert body.count(b"data: [DONE]") == 1
    await env.wait_idle(SLOW)
