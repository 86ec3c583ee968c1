"""A start that fails is not retried by clients, nor relaunched for each of their requests.

Real gateway, real stub model servers that exit while starting (tests/support/stub_server.py
`--exit-on-start`), and the real OpenAI Python SDK with its default retries. Launches are
counted in the server's log, where the gateway writes one `starting:` line per launch.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from pydantic import ValidationError

from gateway.serving.logfiles import log_path
from tests.conftest import make_settings
from tests.support.env import Env, assert_openai_error, gateway_env
from tests.support.stub_server import FATAL_LINE


def launches(env: Env, name: str) -> int:
    path = log_path(env.settings.logs_dir, name)
    return path.read_text().count("[mlx-manager] starting:") if path.exists() else 0


async def test_a_failed_start_is_424_and_not_relaunched_during_the_back_off(tmp_path: Path):
    async with gateway_env(tmp_path) as env:  # default back-off: 30 s
        await env.add_stub("broken", "--exit-on-start", "3")

        first = assert_openai_error(await env.chat("broken"), 424, "server_start_failed")
        assert FATAL_LINE in first["message"]  # the log tail says why
        assert "code 3" in first["message"]
        assert launches(env, "broken") == 1

        again = assert_openai_error(await env.chat("broken"), 424, "server_start_failed")
        assert launches(env, "broken") == 1  # answered from the remembered failure
        assert "tried again in" in again["message"]
        assert f"POST /api/servers/{env.profile_id('broken')}/start" in again["message"]
        assert FATAL_LINE in again["message"]
        assert env.manager.events.start_failures == 1

        # An explicit start is not held back: it launches again (and fails again here).
        forced = await env.control("broken", "start")
        assert forced.status_code == 424, forced.text
        assert forced.json()["code"] == "server_start_failed"
        assert launches(env, "broken") == 2


async def test_with_the_back_off_off_every_request_launches_again(tmp_path: Path):
    async with gateway_env(tmp_path, start_failure_backoff=0) as env:
        await env.add_stub("broken", "--exit-on-start", "3")
        for expected in (1, 2):
            assert_openai_error(await env.chat("broken"), 424, "server_start_failed")
            assert launches(env, "broken") == expected


async def test_the_openai_sdk_raises_once_without_retrying(tmp_path: Path):
    # Back-off off, so a retry would show as a second launch; and the SDK's own retries on.
    async with gateway_env(tmp_path, start_failure_backoff=0) as env:
        await env.add_stub("broken", "--exit-on-start", "3")
        key = await env.new_key()
        sent: list[object] = []

        async def count(request: object) -> None:
            sent.append(request)

        async with (
            openai.DefaultAsyncHttpxClient(event_hooks={"request": [count]}) as http,
            openai.AsyncOpenAI(
                base_url=f"{env.url}/v1", api_key=key.secret, http_client=http, timeout=60
            ) as client,
        ):
            assert client.max_retries == 2  # the SDK's default: it would retry a 5xx twice
            with pytest.raises(openai.APIStatusError, match=FATAL_LINE) as raised:
                await client.chat.completions.create(
                    model="broken", messages=[{"role": "user", "content": "x"}]
                )

        assert raised.value.status_code == 424
        assert raised.value.code == "server_start_failed"
        assert len(sent) == 1
        assert launches(env, "broken") == 1


async def test_a_queue_timeout_stays_503_with_retry_after(tmp_path: Path):
    # Waiting can help there, so SDKs may retry: the one start failure that is not a 424.
    async with gateway_env(tmp_path, queue_timeout=0.5) as env:
        await env.add_stub("slow", "--startup-delay", "30")
        response = await env.chat("slow")
        assert_openai_error(response, 503, "queue_timeout")
        assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize(("value", "valid"), [(-1, False), (0, True), (3600, True), (3601, False)])
def test_the_back_off_setting_is_bounded(tmp_path: Path, value: float, valid: bool):
    if valid:
        assert make_settings(tmp_path, start_failure_backoff=value).start_failure_backoff == value
    else:
        with pytest.raises(ValidationError, match="start_failure_backoff"):
            make_settings(tmp_path, start_failure_backoff=value)
