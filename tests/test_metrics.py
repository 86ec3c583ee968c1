"""/metrics after real traffic, and /api/system: the numbers must match what happened."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import bearer, make_settings, register_and_login
from tests.support import secrets
from tests.support.backend import require_backend
from tests.support.gateway import running_gateway
from tests.support.stub_server import STUB_SCRIPT

NODE_TOKEN = "metrics-node-token-for-the-tests-" + "m" * 24
GIB = 1024**3
MIB = 1024**2


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict, metric: str, **labels: str) -> float:
    return metrics.get((metric, tuple(sorted(labels.items()))), 0.0)


async def test_counters_move_by_the_right_amounts(client: httpx.AsyncClient, admin_token: str):
    headers = bearer(admin_token)
    command = [sys.executable, str(STUB_SCRIPT), "--port", "{port}", "--name", "{name}"]
    created = await client.post(
        "/api/profiles", json={"name": "stub", "command": command}, headers=headers
    )
    assert created.status_code == 201
    before = samples((await client.get("/metrics", headers=headers)).text)
    assert value(before, "mlx_manager_server_state", name="stub", state="stopped") == 1

    prompt = completion = 0
    for text in ("one", "two words", "three more words"):
        reply = await client.post(
            "/v1/chat/completions",
            json={"model": "stub", "messages": [{"role": "user", "content": text}]},
            headers=headers,
        )
        assert reply.status_code == 200
        prompt += reply.json()["usage"]["prompt_tokens"]
        completion += reply.json()["usage"]["completion_tokens"]
    async with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "stub",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "stream please"}],
        },
        headers=headers,
    ) as stream:
        body = b"".join([chunk async for chunk in stream.aiter_bytes()])
    assert b"[DONE]" in body
    missing = await client.post(
        "/v1/chat/completions", json={"model": "nope", "messages": []}, headers=headers
    )
    assert missing.status_code == 404

    after = samples((await client.get("/metrics", headers=headers)).text)
    chat = {"model": "stub", "endpoint": "/v1/chat/completions"}
    assert value(after, "mlx_manager_requests_total", status="200", **chat) == 4
    assert (
        value(
            after,
            "mlx_manager_requests_total",
            model="unknown",
            endpoint="/v1/chat/completions",
            status="404",
        )
        == 1
    )
    assert value(after, "mlx_manager_request_duration_seconds_count", **chat) == 4
    assert value(after, "mlx_manager_time_to_first_byte_seconds_count", **chat) == 4
    usage_line = [line for line in body.split(b"\n") if b'"usage"' in line][-1]
    usage = json.loads(usage_line.removeprefix(b"data: "))["usage"]
    prompt += usage["prompt_tokens"]
    completion += usage["completion_tokens"]
    assert value(after, "mlx_manager_prompt_tokens_total", model="stub") == prompt
    assert value(after, "mlx_manager_completion_tokens_total", model="stub") == completion
    assert value(after, "mlx_manager_server_starts_total") == 1
    assert value(after, "mlx_manager_server_state", name="stub", state="ready") == 1
    assert value(after, "mlx_manager_open_streams") == 0

    stopped = await client.post(f"/api/servers/{created.json()['id']}/stop", headers=headers)
    assert stopped.status_code == 200
    final = samples((await client.get("/metrics", headers=headers)).text)
    assert value(final, "mlx_manager_server_stops_total") == 1
    assert value(final, "mlx_manager_server_state", name="stub", state="stopped") == 1


async def test_metrics_need_an_admin_unless_public(client: httpx.AsyncClient, tmp_path: Path):
    assert (await client.get("/metrics")).status_code == 401
    admin = await register_and_login(client, "root@example.com", "root-password")
    user_reply = await client.post(
        "/api/auth/register", json={"email": "user@example.com", "password": "user-password"}
    )
    user_id = user_reply.json()["id"]
    await client.patch(f"/api/users/{user_id}", json={"status": "approved"}, headers=bearer(admin))
    login = await client.post(
        "/api/auth/login", json={"email": "user@example.com", "password": "user-password"}
    )
    user = login.json()["access_token"]
    assert (await client.get("/metrics", headers=bearer(user))).status_code == 403
    async with (
        running_gateway(make_settings(tmp_path / "public", metrics_public=True)) as public,
        httpx.AsyncClient(base_url=public.url) as http,
    ):
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "mlx_manager_memory_cap_bytes" in response.text


async def test_system_memory_and_info(tmp_path: Path):
    settings = make_settings(tmp_path / "home", max_memory_gb=3, backend_bin=require_backend())
    async with (
        running_gateway(settings) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=60) as http,
    ):
        token = await register_and_login(http, "root@example.com", "root-password")
        memory = (await http.get("/api/system/memory", headers=bearer(token))).json()
        assert memory["cap_bytes"] == 3 * 1024**3
        assert memory["total_bytes"] >= memory["available_bytes"] > 0
        assert memory["servers_bytes"] == 0
        info = (await http.get("/api/system/info", headers=bearer(token))).json()
        assert info["python"].count(".") == 2
        assert info["total_memory_bytes"] == memory["total_bytes"]
        packages = info["backend"]["packages"]
        assert packages["mlx-openai-server"] == "1.8.1"
        assert packages["mlx"]
        assert packages["mlx-lm"]


async def test_a_heartbeat_shows_up_as_node_gauges(tmp_path: Path) -> None:
    secrets.SEEN.add(NODE_TOKEN)  # the secret scan (test_zz_secret_scan) checks every log
    # A node timeout far longer than the test: "up" must not depend on how fast the machine is.
    settings = make_settings(tmp_path / "home", node_token=NODE_TOKEN, node_timeout=3600)
    async with (
        running_gateway(settings) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=30, event_hooks=secrets.HOOKS) as http,
    ):
        admin = bearer(await register_and_login(http, "root@example.com", "root-password"))
        beats = {
            "alpha": {"cap": 8 * GIB, "used": 3 * GIB, "in_flight": 2, "queued": 1},
            "beta": {"cap": 16 * GIB, "used": 0, "in_flight": 0, "queued": 0},
        }
        for name, beat in beats.items():
            response = await http.post(
                "/api/nodes/heartbeat",
                json={
                    "name": name,
                    "url": "http://127.0.0.1:1",
                    "memory": {
                        "cap_bytes": beat["cap"],
                        "used_bytes": beat["used"],
                        "free_bytes": beat["cap"] - beat["used"],
                    },
                    "in_flight": beat["in_flight"],
                    "queued": beat["queued"],
                },
                headers=bearer(NODE_TOKEN),
            )
            assert response.status_code == 200, response.text

        scraped = samples((await http.get("/metrics", headers=admin)).text)
        for name, beat in beats.items():
            node = {"node": name}
            assert scraped[("mlx_manager_node_up", (("node", name),))] == 1
            assert value(scraped, "mlx_manager_node_memory_cap_bytes", **node) == beat["cap"]
            assert value(scraped, "mlx_manager_node_memory_used_bytes", **node) == beat["used"]
            free = beat["cap"] - beat["used"]
            assert value(scraped, "mlx_manager_node_memory_free_bytes", **node) == free
            assert value(scraped, "mlx_manager_node_inflight", **node) == beat["in_flight"]
            assert value(scraped, "mlx_manager_node_queued", **node) == beat["queued"]
            age = scraped[("mlx_manager_node_heartbeat_age_seconds", (("node", name),))]
            assert 0 <= age < settings.node_timeout  # it is up, so it was heard within that

        # A node the gateway could not reach (as the proxy reports a refused connection) is
        # out of rotation until its next heartbeat: its gauge says 0, the other's stays 1.
        gateway.core.fleet.refused("alpha", "connection refused")
        scraped = samples((await http.get("/metrics", headers=admin)).text)
        assert scraped[("mlx_manager_node_up", (("node", "alpha"),))] == 0
        assert scraped[("mlx_manager_node_up", (("node", "beta"),))] == 1


def spooled_on_disk(home: Path) -> int:
    """What the spool folder holds: the files the gauge must agree with."""
    return sum(path.stat().st_size for path in (home / "usage-spool").glob("*") if path.is_file())


async def test_the_usage_spool_gauges_follow_the_spool(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # No background flush during the test: records stay spooled until it flushes them itself.
    settings = make_settings(home, usage_flush_interval=3600, usage_spool_max_bytes=MIB)
    async with (
        running_gateway(settings) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=30, event_hooks=secrets.HOOKS) as http,
    ):
        admin = bearer(await register_and_login(http, "root@example.com", "root-password"))

        async def spool_gauges() -> tuple[float, float, float]:
            scraped = samples((await http.get("/metrics", headers=admin)).text)
            return (
                scraped[("mlx_manager_usage_spool_bytes", ())],
                scraped[("mlx_manager_usage_spool_max_bytes", ())],
                scraped[("mlx_manager_usage_spool_full", ())],
            )

        assert await spool_gauges() == (0, MIB, 0)
        # Every /v1 request is accounted, a refused one too: one spooled record.
        missing = await http.post(
            "/v1/chat/completions", json={"model": "nope", "messages": []}, headers=admin
        )
        assert missing.status_code == 404
        spooled, _, full = await spool_gauges()
        assert spooled == spooled_on_disk(home) > 0
        assert full == 0

        usage = gateway.core.usage
        filled = 0
        while not usage.spool.full:  # no await: nothing is flushed in between
            usage.record(request_id=f"fill-{filled:06d}", model="stub", status=200)
            filled += 1
        spooled, _, full = await spool_gauges()
        assert spooled == spooled_on_disk(home) >= MIB
        assert full == 1
        refused = await http.post(
            "/v1/chat/completions", json={"model": "nope", "messages": []}, headers=admin
        )
        assert refused.status_code == 503  # what the gauge announced
        assert refused.json()["error"]["code"] == "usage_spool_full"

        await usage.flush()
        assert await spool_gauges() == (0, MIB, 0)
        assert spooled_on_disk(home) == 0
