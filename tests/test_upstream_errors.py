"""Errors on the /v1 path: the model server's own, a dead one, bad requests, limits, starts.

Unit tests first (`to_openai_error`, `tokens_in`), then a real gateway with stub and echo
upstreams as subprocesses: each error comes back with its status in OpenAI's shape, and the
official SDK raises the matching exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from gateway.upstream_errors import to_openai_error
from gateway.usage import tokens_in
from tests.support.env import (
    Env,
    assert_openai_error,
    chat_body,
    gateway_env,
    multipart,
)

# ---- to_openai_error -------------------------------------------------------------------------


def error_of(status: int, body: bytes) -> dict[str, Any]:
    result = to_openai_error(status, body)
    assert set(result) == {"error"}
    assert set(result["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = result["error"]
    return error


def test_an_openai_error_body_passes_through():
    body = json.dumps(
        {
            "error": {
                "message": "context too long",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        }
    ).encode()
    assert error_of(400, body) == {
        "message": "context too long",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }


def test_an_openai_error_nested_in_detail_passes_through():
    """mlx-openai-server wraps its OpenAI errors: {"detail": {"error": {...}}}."""
    body = json.dumps(
        {"detail": {"error": {"message": "no such model", "type": "invalid_request_error"}}}
    ).encode()
    assert error_of(404, body) == {
        "message": "no such model",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_a_numeric_error_code_becomes_a_string():
    body = b'{"error": {"message": "m", "type": "server_error", "code": 500, "param": 3}}'
    error = error_of(500, body)
    assert (error["code"], error["param"]) == ("500", "3")


def test_an_openai_error_body_missing_fields_gets_defaults():
    error = error_of(503, b'{"error": {"message": ""}}')
    assert error["type"] == "server_error"
    assert "503" in error["message"]
    assert error["param"] is None
    assert error["code"] is None


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (400, "invalid_request_error", "invalid_request"),
        (404, "invalid_request_error", "not_found"),
        (500, "server_error", None),
        (503, "server_error", None),
    ],
)
def test_a_detail_string_becomes_the_message(status: int, error_type: str, code: str | None):
    error = error_of(status, b'{"detail": "Model is not loaded"}')
    assert error == {
        "message": "Model is not loaded",
        "type": error_type,
        "param": None,
        "code": code,
    }


def test_a_fastapi_validation_list_is_described_field_by_field():
    body = json.dumps(
        {
            "detail": [
                {"type": "missing", "loc": ["body", "messages"], "msg": "Field required"},
                {
                    "type": "float_type",
                    "loc": ["body", "temperature"],
                    "msg": "Input should be a valid number",
                },
                {"type": "value_error", "loc": ["body"], "msg": "Bad body"},
            ]
        }
    ).encode()
    error = error_of(422, body)
    assert error["message"] == (
        "messages: Field required; temperature: Input should be a valid number; Bad body"
    )
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_value"


def test_a_detail_object_is_kept_as_json():
    error = error_of(400, b'{"detail": {"reason": "bad", "n": 1}}')
    assert json.loads(error["message"]) == {"reason": "bad", "n": 1}


def test_a_message_field_is_used_when_there_is_no_detail():
    assert error_of(500, b'{"message": "out of memory"}')["message"] == "out of memory"


@pytest.mark.parametrize(
    "body", [b"Internal Server Error", b"<html><body>Bad Gateway</body></html>", b"\xff\xfeoops"]
)
def test_a_non_json_body_is_quoted_with_the_status(body: bytes):
    error = error_of(502, body)
    assert error["message"].startswith("model server answered 502: ")
    assert error["type"] == "server_error"


def test_a_long_non_json_body_is_not_copied():
    error = error_of(500, b"x" * 10_000)
    assert error["message"] == "model server answered 500"


@pytest.mark.parametrize("body", [b"", b"   ", b"null", b"[]", b'{"detail": ""}'])
def test_an_empty_or_useless_body_still_gives_a_message(body: bytes):
    error = error_of(500, body)
    assert "500" in error["message"]
    assert error["type"] == "server_error"


# ---- tokens_in -------------------------------------------------------------------------------


def test_tokens_from_a_json_body():
    body = json.dumps(
        {
            "id": "chatcmpl-1",
            "choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        }
    ).encode()
    assert tokens_in(body) == (12, 7)


def test_tokens_from_a_pretty_printed_json_body():
    body = b'{\n  "usage": {\n    "prompt_tokens" : 3,\n    "completion_tokens":  4\n  }\n}'
    assert tokens_in(body) == (3, 4)


def test_tokens_from_the_final_sse_chunk():
    chunks = [
        {"choices": [{"delta": {"content": "a"}}]},
        {"choices": [{"delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
    ]
    stream = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    assert tokens_in(stream + b"data: [DONE]\n\n") == (5, 2)


def test_tokens_from_the_responses_api():
    body = json.dumps(
        {
            "object": "response",
            "usage": {"input_tokens": 9, "output_tokens": 21, "total_tokens": 30},
        }
    ).encode()
    assert tokens_in(body) == (9, 21)


def test_tokens_from_a_responses_stream_take_the_last_usage():
    created = {
        "type": "response.created",
        "response": {"usage": {"input_tokens": 9, "output_tokens": 0}},
    }
    completed = {
        "type": "response.completed",
        "response": {"usage": {"input_tokens": 9, "output_tokens": 4}},
    }
    stream = (
        b"event: response.created\ndata: " + json.dumps(created).encode() + b"\n\n"
        b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n"
    )
    assert tokens_in(stream) == (9, 4)


def test_tokens_from_embeddings_have_no_completion():
    assert tokens_in(b'{"usage": {"prompt_tokens": 6, "total_tokens": 6}}') == (6, 0)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"choices": [{"message": {"content": "no usage here"}}]}',
        b"data: {}\n\ndata: [DONE]\n\n",
        b"not json at all",
        # usage words quoted inside content are escaped, so they do not count
        json.dumps({"choices": [{"message": {"content": '"prompt_tokens": 99'}}]}).encode(),
    ],
)
def test_no_usage_means_no_tokens(body: bytes):
    assert tokens_in(body) == (0, 0)


# ---- the gateway: upstream errors ------------------------------------------------------------

MODEL = "err-model"
CRASH = "err-crash"
KILL = "err-kill"
ECHO = "err-echo"
DYING = "err-dying"
STREAM_KILL = "err-stream-kill"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    async with gateway_env(tmp_path_factory.mktemp("errors")) as env:
        await env.add_stub(MODEL)
        await env.add_stub(CRASH)
        await env.add_stub(KILL)
        await env.add_echo(ECHO)
        await env.add_echo(DYING)
        await env.add_stub(STREAM_KILL, "--chunks", "200", "--chunk-delay", "0.05")
        yield env


def rid() -> str:
    return f"req-{uuid.uuid4().hex}"


@pytest.mark.asyncio(loop_scope="module")
async def test_upstream_500_detail_comes_back_in_openai_shape(env: Env):
    response = await env.post("/v1/chat/completions", chat_body(MODEL, "__error_500__"))
    error = assert_openai_error(response, 500, error_type="server_error")
    assert error["message"] == "simulated failure"
    assert response.headers.get_list("x-request-id")
    async with env.openai((await env.new_key()).secret) as client:
        with pytest.raises(openai.InternalServerError, match="simulated failure"):
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "__error_500__"}]
            )


@pytest.mark.asyncio(loop_scope="module")
async def test_upstream_422_validation_list_comes_back_as_openai_400(env: Env):
    # FastAPI's 422 is OpenAI's 400: SDKs raise BadRequestError, the message is kept.
    response = await env.post("/v1/chat/completions", {"model": MODEL, "temperature": 0.1})
    error = assert_openai_error(response, 400, "invalid_value", "invalid_request_error")
    assert error["message"] == "messages: Field required"
    assert error["param"] == "messages"
    wrong_type = await env.post("/v1/chat/completions", {"model": MODEL, "messages": "hi"})
    error = assert_openai_error(wrong_type, 400, "invalid_value", "invalid_request_error")
    assert error["message"] == "messages: Input should be a valid list"
    async with env.openai((await env.new_key()).secret) as client:
        with pytest.raises(openai.BadRequestError, match="messages: Input should be"):
            await client.chat.completions.create(
                model=MODEL, messages=[], extra_body={"messages": None}
            )


@pytest.mark.asyncio(loop_scope="module")
async def test_upstream_400_detail_string_comes_back_in_openai_shape(env: Env):
    response = await env.post(
        "/v1/chat/completions",
        chat_body(ECHO),
        headers={"x-echo-status": "400", "x-echo-body": '{"detail": "Prompt is too long"}'},
    )
    error = assert_openai_error(response, 400, "invalid_request", "invalid_request_error")
    assert error["message"] == "Prompt is too long"


@pytest.mark.asyncio(loop_scope="module")
async def test_upstream_openai_error_and_plain_text_errors(env: Env):
    own = {"error": {"message": "nope", "type": "invalid_request_error", "param": "n", "code": "x"}}
    response = await env.post(
        "/v1/embeddings",
        {"model": ECHO, "input": "a"},
        headers={"x-echo-status": "400", "x-echo-body": json.dumps(own)},
    )
    assert assert_openai_error(response, 400) == own["error"]
    response = await env.post(
        "/v1/embeddings",
        {"model": ECHO, "input": "a"},
        headers={
            "x-echo-status": "503",
            "x-echo-content-type": "text/plain",
            "x-echo-body": "busy",
        },
    )
    error = assert_openai_error(response, 503, error_type="server_error")
    assert error["message"] == "model server answered 503: busy"


@pytest.mark.asyncio(loop_scope="module")
async def test_a_model_server_that_dies_mid_request_is_502(env: Env):
    request_id = rid()
    response = await env.post(
        "/v1/chat/completions", chat_body(CRASH, "__crash__"), headers={"x-request-id": request_id}
    )
    error = assert_openai_error(response, 502, error_type="server_error")
    assert CRASH in error["message"]
    assert env.events(CRASH, "crash", request_id=request_id)
    await env.wait_server(CRASH, lambda s: s["state"] == "stopped", "seen as stopped")
    # The next request starts it again.
    again = await env.post("/v1/chat/completions", chat_body(CRASH))
    assert again.status_code == 200, again.text


@pytest.mark.asyncio(loop_scope="module")
async def test_a_model_server_killed_mid_request_is_502(env: Env):
    await env.post("/v1/chat/completions", chat_body(KILL))  # started
    request_id = rid()
    pending = asyncio.ensure_future(
        env.post(
            "/v1/chat/completions",
            chat_body(KILL, "__slow__"),
            headers={"x-request-id": request_id},
        )
    )
    try:
        event = await env.wait_event(KILL, "request", request_id=request_id)
        os.kill(event["pid"], signal.SIGKILL)
        response = await pending
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
    assert_openai_error(response, 502, error_type="server_error")
    await env.wait_idle(KILL)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_model_server_that_dies_after_its_headers_is_502(env: Env):
    """The model server answers 200 with a length, sends part of the body, and dies: the
    gateway has sent nothing yet (it reads a non-stream body whole), so it can say 502."""
    request_id = rid()
    response = await env.post(
        "/v1/chat/completions",
        chat_body(DYING),
        headers={"x-request-id": request_id, "x-echo-die": "mid-body"},
    )
    assert env.events(DYING, "dying", request_id=request_id)
    error = assert_openai_error(response, 502, error_type="server_error")
    assert DYING in error["message"]
    await env.wait_idle(DYING)
    row = await env.usage_row(request_id)
    assert (row.model, row.status) == (DYING, 502)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_model_server_killed_mid_stream_cuts_the_stream_short(env: Env):
    """Once a stream has begun its status is sent; the client must still see that it broke
    (no clean end, no `[DONE]`), and the server is released and seen as stopped."""
    request_id = rid()
    received = bytearray()

    async def drain(chunks: AsyncIterator[bytes]) -> None:
        async for chunk in chunks:
            received.extend(chunk)

    async with env.http.stream(
        "POST",
        "/v1/chat/completions",
        json=chat_body(STREAM_KILL, stream=True),
        headers={**env.auth, "x-request-id": request_id},
    ) as response:
        assert response.status_code == 200
        chunks = response.aiter_raw()
        async for chunk in chunks:
            received.extend(chunk)
            if b'"tok1 "' in received:
                break
        [event] = env.events(STREAM_KILL, "request", request_id=request_id)
        os.kill(event["pid"], signal.SIGKILL)
        with pytest.raises(httpx.RemoteProtocolError):
            await drain(chunks)
    assert b"[DONE]" not in received
    await env.wait_idle(STREAM_KILL)
    await env.wait_server(STREAM_KILL, lambda s: s["state"] == "stopped", "seen as stopped")
    assert (await env.usage_row(request_id)).model == STREAM_KILL


@pytest.mark.asyncio(loop_scope="module")
async def test_the_sdk_sees_a_dead_model_server_as_a_server_error(env: Env):
    async with env.openai((await env.new_key()).secret) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(
                model=CRASH, messages=[{"role": "user", "content": "__crash__"}]
            )
    assert caught.value.status_code == 502


# ---- the gateway: bad requests ---------------------------------------------------------------


async def raw_post(env: Env, content: bytes, content_type: str = "application/json"):
    return await env.http.post(
        "/v1/chat/completions",
        content=content,
        headers={**env.auth, "content-type": content_type},
    )


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    "content",
    [b'{"model": "err-model", "messages": [', b"", b"\xff\xfe{}", b"model=err-model"],
    ids=["truncated", "empty", "not-utf8", "form-like"],
)
async def test_malformed_json_is_400(env: Env, content: bytes):
    response = await raw_post(env, content)
    assert_openai_error(response, 400, error_type="invalid_request_error")


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    "body",
    [{"messages": []}, {"model": ""}, {"model": None}, {"model": 7}, {"model": ["err-model"]}],
    ids=["absent", "empty", "null", "number", "list"],
)
async def test_missing_model_is_400_naming_the_param(env: Env, body: dict[str, Any]):
    response = await env.post("/v1/chat/completions", body)
    error = assert_openai_error(response, 400, error_type="invalid_request_error")
    assert error["param"] == "model"


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("content", [b'[{"model": "err-model"}]', b'"err-model"', b"42", b"null"])
async def test_a_json_body_that_is_not_an_object_is_400(env: Env, content: bytes):
    response = await raw_post(env, content)
    assert_openai_error(response, 400, error_type="invalid_request_error")


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/images/edits"])
async def test_a_multipart_upload_without_model_is_400(env: Env, path: str):
    request_id = rid()
    body, content_type = multipart(
        {"prompt": "x"}, {"file": ("a.wav", b"RIFF"), "image": ("a.png", b"P")}
    )
    response = await env.http.post(
        path,
        content=body,
        headers={**env.auth, "content-type": content_type, "x-request-id": request_id},
    )
    error = assert_openai_error(response, 400, error_type="invalid_request_error")
    assert error["param"] == "model"
    assert not env.events(MODEL, "request", request_id=request_id)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_broken_multipart_upload_is_400(env: Env):
    response = await env.http.post(
        "/v1/audio/transcriptions",
        content=b"--nope\r\nnot a part",
        headers={**env.auth, "content-type": "multipart/form-data; boundary=zzz"},
    )
    assert_openai_error(response, 400, error_type="invalid_request_error")


# ---- limits: body size, failed starts, waiting for memory ------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def limits(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    async with gateway_env(
        tmp_path_factory.mktemp("limits"), max_body_mb=0.01, queue_timeout=1, max_memory_gb=1
    ) as env:
        await env.add_stub("small", memory_gb=0.01)
        await env.add_stub("broken", "--exit-on-start", "7", memory_gb=0.01)
        await env.add_echo("big-a", memory_gb=0.6)
        await env.add_stub("big-b", memory_gb=0.6)
        yield env


LIMIT = int(0.01 * 1024 * 1024)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_body_over_the_limit_is_413(limits: Env):
    big = json.dumps(chat_body("small", "x" * (LIMIT + 10))).encode()
    response = await limits.http.post(
        "/v1/chat/completions",
        content=big,
        headers={**limits.auth, "content-type": "application/json"},
    )
    assert_openai_error(response, 413, error_type="invalid_request_error")
    fits = json.dumps(chat_body("small", "x" * (LIMIT // 2))).encode()
    ok = await limits.http.post(
        "/v1/chat/completions",
        content=fits,
        headers={**limits.auth, "content-type": "application/json"},
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.asyncio(loop_scope="module")
async def test_a_chunked_body_over_the_limit_is_413(limits: Env):
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "small", "messages": [{"role": "user", "content": "'
        for _ in range(LIMIT // 1000 + 2):
            yield b"y" * 1000
        yield b'"}]}'

    response = await limits.http.post(
        "/v1/chat/completions",
        content=chunks(),
        headers={**limits.auth, "content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413, error_type="invalid_request_error")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_multipart_upload_over_the_limit_is_413(limits: Env):
    response = await limits.http.post(
        "/v1/audio/transcriptions",
        data={"model": "small"},
        files={"file": ("big.wav", b"\0" * (LIMIT + 1), "audio/wav")},
        headers=limits.auth,
    )
    assert_openai_error(response, 413, error_type="invalid_request_error")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_start_that_fails_is_424_with_the_cause(limits: Env):
    response = await limits.post("/v1/chat/completions", chat_body("broken"))
    error = assert_openai_error(response, 424, "server_start_failed", error_type="server_error")
    assert "simulated load failure" in error["message"]
    assert "code 7" in error["message"]
    server = await limits.server("broken")
    assert server["state"] == "failed"
    async with limits.openai((await limits.new_key()).secret) as client:
        with pytest.raises(openai.APIStatusError, match="simulated load failure") as raised:
            await client.chat.completions.create(
                model="broken", messages=[{"role": "user", "content": "x"}]
            )
    assert raised.value.status_code == 424  # not retried by SDKs, unlike a 5xx


@pytest.mark.asyncio(loop_scope="module")
async def test_waiting_for_memory_that_never_frees_is_503_with_retry_after(limits: Env):
    """big-a (0.6 GB) is busy with a slow answer; big-b (0.6 GB) cannot fit under the 1 GB cap
    until it ends, and the queue timeout (1 s) runs out first."""
    request_id = rid()
    busy = asyncio.ensure_future(
        limits.post(
            "/v1/chat/completions",
            chat_body("big-a"),
            headers={"x-request-id": request_id, "x-echo-delay": "60"},
        )
    )
    try:
        await limits.wait_event("big-a", "request", request_id=request_id)
        response = await limits.post("/v1/chat/completions", chat_body("big-b"))
        error = assert_openai_error(response, 503, error_type="server_error")
        assert "big-a" in error["message"]
        retry_after = int(response.headers["retry-after"])
        assert 1 <= retry_after <= 120
        assert (await limits.server("big-b"))["state"] == "stopped"
        assert (await limits.server("big-a"))["inflight"] == 1
    finally:
        busy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await busy
