"""Issue 11 against the real mlx-openai-server: what the stub imitates holds for the real thing.

mlx-openai-server 1.8 has no /v1/completions and answers validation errors with FastAPI's 422;
through the gateway a client sees `404 unsupported_endpoint` naming what the server offers (read
from its /openapi.json) and OpenAI's `400`. One server start (about 5-15 s on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import bearer, make_settings, register_and_login
from tests.support.backend import require_backend, tiny_model
from tests.support.env import assert_openai_error
from tests.support.gateway import running_gateway

pytestmark = pytest.mark.backend


async def test_real_server_lacking_completions_and_its_422(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", backend_bin=require_backend(), start_timeout=180)
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, timeout=180) as http,
    ):
        token = await register_and_login(http, "admin@example.com", "admin-password")
        profile = {"name": "tiny", "model_path": str(tiny_model()), "model_type": "lm"}
        created = await http.post("/api/profiles", json=profile, headers=bearer(token))
        assert created.status_code == 201, created.text

        response = await http.post(
            "/v1/completions", json={"model": "tiny", "prompt": "once"}, headers=bearer(token)
        )
        error = assert_openai_error(response, 404, "unsupported_endpoint")
        offered = error["message"].split("it serves ", 1)[1]
        assert "/v1/chat/completions" in offered
        assert "/v1/responses" in offered
        assert "/v1/completions," not in offered

        response = await http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": "not a list"},
            headers=bearer(token),
        )
        error = assert_openai_error(response, 400, error_type="invalid_request_error")
        assert "messages" in error["message"]
