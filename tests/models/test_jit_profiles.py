"""Download, then just call it: a model pulled with the CLI answers on /v1 with no profile made
by hand (the real mlx-openai-server, the tiny model served by the hub emulator)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import bearer, make_settings, register_and_login
from tests.support.backend import require_backend
from tests.support.gateway import running_gateway
from tests.support.hub_emulator import running_emulator
from tests.support.hub_fixtures import publish_folder
from tests.support.tiny_model import build_tiny_model

REPO = "mlx-community/Tiny-Chat-JIT"
ROOT = Path(__file__).resolve().parents[2]


def pull(env: dict[str, str], repo: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "model", "pull", repo],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """An HF cache holding REPO (the real tiny model), pulled by the CLI from the emulator."""
    cache = tmp_path / "hf-cache"
    root = tmp_path / "hub"
    publish_folder(root, REPO, build_tiny_model(tmp_path / "tiny"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLX_MANAGER_", "HF_"))}
    env.update(MLX_MANAGER_HOME=str(tmp_path / "cli-home"), MLX_MANAGER_HF_CACHE_PATH=str(cache))
    with running_emulator(root, tmp_path / "requests.jsonl") as hub:
        pulled = pull({**env, "HF_ENDPOINT": hub.url}, REPO)
    assert pulled.returncode == 0, pulled.stderr
    return cache


async def test_a_pulled_model_is_served_by_a_jit_profile(tmp_path: Path, cache: Path) -> None:
    settings = make_settings(
        tmp_path / "home", hf_cache_path=cache, backend_bin=require_backend(), start_timeout=180
    )
    async with (
        running_gateway(settings) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=180) as http,
    ):
        token = await register_and_login(http, "admin@example.com", "admin-password")
        local = await http.get("/api/models/local", headers=bearer(token))
        assert REPO in [m["id"] for m in local.json()]
        assert (await http.get("/api/profiles", headers=bearer(token))).json() == []

        async with openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key=token, max_retries=0, timeout=180
        ) as client:
            reply = await client.chat.completions.create(
                model=REPO, messages=[{"role": "user", "content": "hello"}], max_tokens=4
            )
            # A random-weight model may well say nothing; that the server answered is the point.
            assert reply.choices[0].finish_reason in ("stop", "length")
            assert reply.usage is not None
            assert reply.usage.prompt_tokens > 0

            # Another spelling reaches the same profile and server (no copy per capitalisation).
            again = await client.chat.completions.create(
                model=REPO.lower(), messages=[{"role": "user", "content": "again"}], max_tokens=2
            )
            assert again.choices
            profiles = (await http.get("/api/profiles", headers=bearer(token))).json()
            assert [(p["name"], p["model_path"], p["model_type"]) for p in profiles] == [
                (REPO, REPO, "lm")
            ]
            # A name that is not in the cache is still unknown, with no profile made for it.
            missing = await http.post(
                "/v1/chat/completions",
                json={"model": "mlx-community/not-pulled", "messages": []},
                headers=bearer(token),
            )
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "model_not_found"


async def test_jit_profiles_can_be_turned_off(tmp_path: Path, cache: Path) -> None:
    settings = make_settings(tmp_path / "home", hf_cache_path=cache, auto_profiles=False)
    async with (
        running_gateway(settings) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=30) as http,
    ):
        token = await register_and_login(http, "admin@example.com", "admin-password")
        response = await http.post(
            "/v1/chat/completions",
            json={"model": REPO, "messages": [{"role": "user", "content": "hi"}]},
            headers=bearer(token),
        )
        assert response.status_code == 404
        assert (await http.get("/api/profiles", headers=bearer(token))).json() == []
