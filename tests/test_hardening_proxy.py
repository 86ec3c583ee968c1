"""Issue 11 on the /v1 data plane: bounded model names, OpenAI's statuses for backend errors,
wrong base URLs, bodies that cannot be parsed or never arrive, and the multipart alias rewrite.

One real gateway for the module, with `command` profiles running the stub model server and
the echo upstream as real subprocesses.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from gateway.usage import tokens_in
from tests.support.env import Env, assert_openai_error, chat_body, gateway_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "harden-model"
ALIAS = "harden-alias"
CHAT_ONLY = "harden-chat-only"  # a server without /v1/completions, like mlx-openai-server
ECHO = "harden-echo"
ECHO_ALIAS = "harden-echo-alias"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    async with gateway_env(tmp_path_factory.mktemp("harden")) as env:
        await env.add_stub(MODEL, "--chunks", "2", aliases=[ALIAS])
        await env.add_stub(
            CHAT_ONLY, "--without", "/v1/completions", "--without", "/v1/images/edits"
        )
        await env.add_echo(ECHO, aliases=[ECHO_ALIAS])
        yield env


def rid() -> str:
    return f"req-{uuid.uuid4().hex}"


async def metrics_text(env: Env) -> str:
    response = await env.http.get("/metrics", headers=env.auth)
    assert response.status_code == 200, response.text
    return response.text


def requests_by_model(text: str) -> dict[str, float]:
    """mlx_manager_requests_total summed per `model` label."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mlx_manager_requests_total":
                model = sample.labels["model"]
                totals[model] = totals.get(model, 0.0) + sample.value
    return totals


# ---- model names are bounded (must-fix 1) ------------------------------------------------------


async def test_a_megabyte_model_name_is_400_and_recorded_nowhere(env: Env) -> None:
    huge = "m" * 1_000_000
    before = await metrics_text(env)
    request_id = rid()
    response = await env.post(
        "/v1/chat/completions", chat_body(huge), headers={"x-request-id": request_id}
    )
    error = assert_openai_error(response, 400, "invalid_model", "invalid_request_error")
    assert error["param"] == "model"
    assert "MLX_MANAGER_MAX_MODEL_NAME_BYTES" in error["message"]
    assert len(response.content) < 2000  # the answer does not echo the name either

    after = await metrics_text(env)
    assert "m" * 300 not in after
    # One new `unknown` series set at most (counter and histograms), not a megabyte.
    assert len(after) - len(before) < 16 * 1024
    row = await env.usage_row(request_id)
    assert row.status == 400
    assert row.model == ""


@pytest.mark.parametrize("unit", ["a", "é"], ids=["ascii", "two-byte"])
async def test_a_name_of_exactly_the_limit_passes_and_one_byte_more_does_not(
    env: Env, unit: str
) -> None:
    limit = env.settings.max_model_name_bytes
    width = len(unit.encode())
    at_limit = unit * (limit // width) + "b" * (limit % width)
    assert len(at_limit.encode()) == limit
    response = await env.chat(at_limit)
    assert_openai_error(response, 404, "model_not_found")
    over = at_limit + "b"
    error = assert_openai_error(await env.chat(over), 400, "invalid_model")
    assert error["param"] == "model"


@pytest.mark.parametrize("name", ["bad\nname", "tab\tname", "nul\x00name", "bidi\u202ename"])
async def test_a_name_with_control_characters_is_400(env: Env, name: str) -> None:
    error = assert_openai_error(await env.chat(name), 400, "invalid_model")
    assert error["param"] == "model"


async def test_metrics_are_labelled_by_profile_and_unknown_models_share_one_label(
    env: Env,
) -> None:
    before = requests_by_model(await metrics_text(env))
    names = [f"no-such-model-{uuid.uuid4().hex}" for _ in range(3)]
    for name in names:
        assert_openai_error(await env.chat(name), 404, "model_not_found")
    served = await env.chat(ALIAS, "through the alias")
    assert served.status_code == 200, served.text

    text = await metrics_text(env)
    after = requests_by_model(text)
    assert not any(name in text for name in names)
    assert ALIAS not in after  # counted under its profile
    assert after["unknown"] - before.get("unknown", 0.0) == 3
    assert after[MODEL] - before.get(MODEL, 0.0) == 1


async def test_usage_rows_keep_the_requested_name_once_it_is_bounded(env: Env) -> None:
    unknown = f"no-such-model-{uuid.uuid4().hex}"
    request_id = rid()
    response = await env.post(
        "/v1/chat/completions", chat_body(unknown), headers={"x-request-id": request_id}
    )
    assert response.status_code == 404
    assert (await env.usage_row(request_id)).model == unknown

    request_id = rid()
    response = await env.post(
        "/v1/chat/completions", chat_body(ALIAS), headers={"x-request-id": request_id}
    )
    assert response.status_code == 200, response.text
    assert (await env.usage_row(request_id)).model == ALIAS


# ---- backend errors in OpenAI's statuses, endpoints a server lacks, wrong base URLs (must-fix 7)


async def test_a_backend_422_reaches_a_streaming_client_as_400_with_its_message(env: Env) -> None:
    response = await env.post("/v1/chat/completions", {"model": MODEL, "stream": True})
    error = assert_openai_error(response, 400, "invalid_value", "invalid_request_error")
    assert error["message"] == "messages: Field required"
    assert error["param"] == "messages"


async def test_completions_on_a_server_without_it_is_404_unsupported_endpoint(env: Env) -> None:
    for _ in range(2):  # the second answer comes from what the first one learnt
        response = await env.post("/v1/completions", {"model": CHAT_ONLY, "prompt": "once"})
        error = assert_openai_error(response, 404, "unsupported_endpoint", "invalid_request_error")
        message = error["message"]
        assert CHAT_ONLY in message
        assert "has no POST /v1/completions" in message
        offered = message.split("it serves ", 1)[1]
        assert "/v1/chat/completions" in offered
        assert "/v1/embeddings" in offered
        assert "/v1/completions," not in offered
        assert "/v1/images/edits" not in offered
    # What it does serve still works, and the SDK raises NotFoundError with the code.
    assert (await env.chat(CHAT_ONLY)).status_code == 200
    async with env.openai((await env.new_key()).secret) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.completions.create(model=CHAT_ONLY, prompt="once")
    assert caught.value.code == "unsupported_endpoint"


async def test_a_404_from_a_server_without_an_openapi_document_is_relayed(env: Env) -> None:
    body = b'{"detail": "no such thing"}'
    response = await env.post(
        "/v1/completions",
        {"model": ECHO, "prompt": "x"},
        headers={"x-echo-status": "404", "x-echo-body": body.decode()},
    )
    error = assert_openai_error(response, 404, "not_found")
    assert error["message"] == "no such thing"


@pytest.mark.parametrize(
    ("method", "path", "right"),
    [
        ("POST", "/chat/completions", "/v1/chat/completions"),
        ("POST", "/completions", "/v1/completions"),
        ("POST", "/embeddings", "/v1/embeddings"),
        ("POST", "/responses", "/v1/responses"),
        ("POST", "/audio/transcriptions", "/v1/audio/transcriptions"),
        ("GET", "/models", "/v1/models"),
        ("GET", "/models/org/name", "/v1/models/org/name"),
        ("POST", "/v1/v1/chat/completions", "/v1/chat/completions"),
        ("GET", "/v1/v1/models", "/v1/models"),
    ],
)
async def test_openai_paths_outside_v1_say_to_use_v1(
    env: Env, method: str, path: str, right: str
) -> None:
    response = await env.http.request(method, path, json={"model": MODEL})
    error = assert_openai_error(response, 404, "wrong_base_url", "invalid_request_error")
    assert f"goes to {right}" in error["message"]
    assert "/v1" in error["message"]


async def test_an_sdk_without_v1_in_its_base_url_gets_wrong_base_url(env: Env) -> None:
    key = await env.new_key()
    async with openai.AsyncOpenAI(base_url=env.url, api_key=key.secret, max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.code == "wrong_base_url"


# ---- bodies that cannot be parsed or never arrive (should-fix) ---------------------------------


async def post_raw(env: Env, path: str, body: bytes) -> httpx.Response:
    """POST bytes as JSON without the harness's hooks (which parse what they send)."""
    async with httpx.AsyncClient(base_url=env.url, timeout=60, trust_env=False) as http:
        return await http.post(
            path, content=body, headers={**env.auth, "content-type": "application/json"}
        )


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/api/keys"])
@pytest.mark.parametrize("depth", [100_000, 300_000], ids=["inline", "in-a-thread"])
async def test_deeply_nested_json_is_400(env: Env, path: str, depth: int) -> None:
    body = b'{"model": "%s", "name": "k", "x": ' % MODEL.encode()
    body += b"[" * depth + b"]" * depth + b"}"
    response = await post_raw(env, path, body)
    assert response.status_code == 400, response.text[:500]
    assert "nested too deeply" in response.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/keys"])
async def test_an_integer_of_5000_digits_is_400(env: Env, path: str) -> None:
    body = b'{"model": "%s", "name": "k", "n": %s}' % (MODEL.encode(), b"7" * 5000)
    response = await post_raw(env, path, body)
    assert response.status_code == 400, response.text[:500]
    assert "not valid JSON" in response.text


async def test_a_huge_token_count_from_a_server_is_ignored_not_an_error() -> None:
    tail = b'{"usage": {"prompt_tokens": 12, "completion_tokens": ' + b"9" * 5000 + b"}}"
    assert tokens_in(tail) == (12, 0)


async def _send_half_a_body(env: Env, path: str) -> None:
    """Headers that promise 1000 bytes, then 500 of them, then the connection closes."""
    host, port = env.url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {env.token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    writer.write(head.encode() + b'{"model": "' + b"x" * 489)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/keys"])
async def test_a_client_leaving_mid_body_logs_no_error_and_counts_as_499(
    env: Env, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    def access_499() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "mlx_manager.access"
            and getattr(r, "path", None) == path
            and getattr(r, "status", None) == 499
        ]

    with caplog.at_level(logging.INFO):
        await _send_half_a_body(env, path)
        await wait_until(access_499, message=f"a 499 access line for {path}")
        # A request sent after it is answered, so the gateway is done with the first one.
        assert (await env.http.get("/health")).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]
    if path.startswith("/v1"):
        text = await metrics_text(env)
        assert 'endpoint="/v1/chat/completions",model="unknown",status="499"' in text


# ---- the multipart alias rewrite touches the model field only (should-fix) ---------------------

BOUNDARY = "hardenb0undary"


def form_part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename:
        head += "Content-Type: application/octet-stream\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


# A file whose bytes contain exactly what the old rewrite searched for: the model field of a
# multipart body naming the alias.
TRAP = (
    b"RIFF\x00\x01"
    + b'Content-Disposition: form-data; name="model"\r\n\r\n'
    + ECHO_ALIAS.encode()
    + b"\r\n"
    + ECHO_ALIAS.encode()
    + bytes(range(256))
)


@pytest.mark.parametrize("file_first", [True, False], ids=["file-first", "model-first"])
async def test_multipart_alias_rewrite_leaves_an_uploaded_file_byte_identical(
    env: Env, file_first: bool
) -> None:
    file_part = form_part("file", TRAP, filename="trap.wav")
    fields = [form_part("language", b"fr")]

    def body(model: str) -> bytes:
        model_part = form_part("model", model.encode())
        ordered = [file_part, *fields, model_part] if file_first else [model_part, file_part]
        return form(*ordered)

    request_id = rid()
    response = await env.http.post(
        "/v1/audio/transcriptions",
        content=body(ECHO_ALIAS),
        headers={
            **env.auth,
            "content-type": f"multipart/form-data; boundary={BOUNDARY}",
            "x-request-id": request_id,
        },
    )
    assert response.status_code == 200, response.text
    [event] = env.events(ECHO, "request", request_id=request_id)
    assert base64.b64decode(event["body_b64"]) == body(ECHO)
