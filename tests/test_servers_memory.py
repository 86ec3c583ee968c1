"""The memory cap for real: eviction, waiting, open streams, and models that can never fit.

Profiles declare `memory_gb`, the gateway's cap is `max_memory_gb`, and the model servers are
real stub processes, so every decision the scheduler makes is carried out on real processes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.serving.logfiles import log_path
from gateway.serving.manager import MAX_RETRY_AFTER
from gateway.types import GIB
from tests.support.env import gateway_env, process_alive, process_gone, sse_data, stream_contents
from tests.support.waiting import wait_until

CAP_FITS_ONE: dict[str, Any] = {"max_memory_gb": 1, "queue_timeout": 1.2}


async def test_an_open_stream_protects_its_server_and_the_other_request_gets_503(tmp_path):
    async with gateway_env(tmp_path, **CAP_FITS_ONE) as env:
        # The stream lasts about 3 s: well past b's queue timeout.
        await env.add_stub("a", "--chunk-delay", "0.2", "--chunks", "15", memory_gb=0.7)
        await env.add_stub("b", memory_gb=0.7)
        a_pid = (await env.start("a"))["pid"]

        body = ""
        async with env.stream("a") as stream:
            assert stream.status_code == 200
            chunks = stream.aiter_text()
            while "tok0 " not in body:
                body += await anext(chunks)

            response = await env.chat("b")  # waits for memory held by the open stream
            assert "[DONE]" not in body

            assert response.status_code == 503, response.text
            retry_after = int(response.headers["retry-after"])
            assert 1 <= retry_after <= MAX_RETRY_AFTER
            error = response.json()["error"]
            assert error["code"] == "queue_timeout"
            assert "busy servers (a)" in error["message"]  # names what it waits for
            assert (await env.server("a"))["inflight"] == 1

            async for text in chunks:
                body += text

        payloads = sse_data(body)
        assert payloads[-1] == "[DONE]"
        assert stream_contents(payloads) == [f"tok{i} " for i in range(15)]
        server_a = await env.server("a")
        assert (server_a["state"], server_a["pid"]) == ("ready", a_pid)
        assert (await env.server("b"))["state"] in ("stopped", "failed")
        assert env.started_events("b") == 0

        # Once the stream is over, A is idle and makes room for B.
        response = await env.chat("b")
        assert response.status_code == 200, response.text
        assert process_gone(a_pid)


async def test_a_ready_server_answers_while_another_request_waits_for_memory(tmp_path):
    async with gateway_env(tmp_path, max_memory_gb=1, queue_timeout=1.5) as env:
        await env.add_stub("a", "--chunk-delay", "0.2", "--chunks", "15", memory_gb=0.7)
        await env.add_stub("b", memory_gb=0.7)
        await env.start("a")
        async with env.stream("a") as stream:
            chunks = stream.aiter_text()
            body = await anext(chunks)
            waiting = asyncio.create_task(env.chat("b"))
            await wait_until(lambda: env.manager.events.waiting == 1, message="b waiting")

            response = await env.chat("a")  # never queued behind b's pending start
            assert response.status_code == 200, response.text
            assert not waiting.done()

            assert (await waiting).status_code == 503
            async for text in chunks:
                body += text
        assert sse_data(body)[-1] == "[DONE]"


async def test_an_idle_server_is_evicted_to_make_room(tmp_path):
    async with gateway_env(tmp_path, **CAP_FITS_ONE) as env:
        await env.add_stub("a", memory_gb=0.6)
        await env.add_stub("b", memory_gb=0.6)
        assert (await env.chat("a")).status_code == 200
        a_pid = (await env.server("a"))["pid"]

        response = await env.chat("b")
        assert response.status_code == 200, response.text
        assert (await env.server("a"))["state"] == "stopped"
        assert process_gone(a_pid)
        assert (await env.server("b"))["state"] == "ready"
        assert env.manager.events.evictions == 1
        log = log_path(env.settings.logs_dir, "a").read_text()
        assert "evicted to make room for b" in log


async def test_the_least_recently_used_server_is_evicted_first(tmp_path):
    async with gateway_env(tmp_path, max_memory_gb=1) as env:
        for name in ("a", "b", "c"):
            await env.add_stub(name, memory_gb=0.45)
        for name in ("a", "b", "a"):  # b is now the least recently used
            assert (await env.chat(name)).status_code == 200

        assert (await env.chat("c")).status_code == 200
        assert "evicted to make room for c" in log_path(env.settings.logs_dir, "b").read_text()
        assert (await env.server("c"))["state"] == "ready"


async def test_only_as_many_servers_as_needed_are_evicted(tmp_path):
    # Two of the three fit: making room for c takes one eviction, not every idle server.
    async with gateway_env(tmp_path, max_memory_gb=1) as env:
        for name in ("a", "b", "c"):
            await env.add_stub(name, memory_gb=0.45)
        for name in ("a", "b", "a"):
            assert (await env.chat(name)).status_code == 200

        assert (await env.chat("c")).status_code == 200
        states = {s["name"]: s["state"] for s in await env.servers()}
        assert states == {"a": "ready", "b": "stopped", "c": "ready"}
        assert env.manager.events.evictions == 1


async def test_concurrent_requests_for_a_cold_model_evict_one_server(tmp_path):
    async with gateway_env(tmp_path, max_memory_gb=1) as env:
        for name in ("a", "b", "c"):
            await env.add_stub(name, memory_gb=0.45)
        for name in ("a", "b"):
            assert (await env.chat(name)).status_code == 200

        responses = await asyncio.gather(*(env.chat("c") for _ in range(10)))
        assert [r.status_code for r in responses] == [200] * 10
        assert env.started_events("c") == 1
        states = {s["name"]: s["state"] for s in await env.servers()}
        assert states == {"a": "stopped", "b": "ready", "c": "ready"}
        assert env.manager.events.evictions == 1


async def test_a_pinned_idle_server_is_never_evicted(tmp_path):
    async with gateway_env(tmp_path, **CAP_FITS_ONE) as env:
        await env.add_stub("keeper", memory_gb=0.6, pinned=True)
        await env.add_stub("other", memory_gb=0.6)
        assert (await env.chat("keeper")).status_code == 200
        keeper = await env.server("keeper")
        assert keeper["inflight"] == 0

        response = await env.chat("other")
        assert response.status_code == 503, response.text
        assert 1 <= int(response.headers["retry-after"]) <= MAX_RETRY_AFTER
        assert response.json()["error"]["code"] == "queue_timeout"
        after = await env.server("keeper")
        assert (after["state"], after["pid"]) == ("ready", keeper["pid"])
        assert env.started_events("other") == 0
        assert env.manager.events.evictions == 0


async def test_a_model_larger_than_the_cap_fails_at_once(tmp_path):
    # The queue timeout is long: a request that waited for it would time the client out.
    async with gateway_env(tmp_path, max_memory_gb=1, queue_timeout=120) as env:
        await env.add_stub("huge", memory_gb=2)
        env.http.timeout = 20
        response = await env.chat("huge")
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "model_too_large"
        assert "2.00 GB" in error["message"]
        assert "1.00 GB" in error["message"]
        assert error["param"] == "model"

        response = await env.control("huge", "start")
        assert response.status_code == 400
        assert response.json()["code"] == "model_too_large"
        assert env.started_events("huge") == 0
        assert env.manager.events.waiting == 0


async def test_the_need_is_estimated_from_the_weight_files(tmp_path):
    weights = tmp_path / "model"
    weights.mkdir()
    with (weights / "model.safetensors").open("wb") as handle:
        handle.truncate(GIB)  # sparse: 1 GiB by size, nothing on disk
    (weights / "README.md").write_text("not a weight file\n")
    async with gateway_env(tmp_path, max_memory_gb=1, queue_timeout=120) as env:
        await env.add_stub("estimated", model_path=str(weights))
        assert (await env.server("estimated"))["need_bytes"] == int(GIB * 1.2)
        response = await env.chat("estimated")
        assert response.status_code == 400, response.text
        assert "1.20 GB" in response.json()["error"]["message"]

        # The operator's memory_gb is the floor that replaces the estimate.
        response = await env.http.patch(
            f"/api/profiles/{env.profile_id('estimated')}",
            json={"memory_gb": 0.5},
            headers=env.auth,
        )
        assert response.status_code == 200, response.text
        assert (await env.server("estimated"))["need_bytes"] == GIB // 2
        assert (await env.chat("estimated")).status_code == 200


async def test_memory_is_the_measured_rss_of_the_process_tree(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("heavy", "--memory-mb", "64", memory_gb=0.01)
        server = await env.start("heavy")
        assert server["memory_bytes"] >= 64 * 1024 * 1024
        # Once measured, the larger of the estimate and the measurement counts.
        assert server["need_bytes"] == max(server["memory_bytes"], int(0.01 * GIB))
        assert process_alive(server["pid"])
