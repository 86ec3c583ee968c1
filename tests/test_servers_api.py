"""`/api/servers`: what each model server is doing, start/stop/restart, and its log.

Also the proxy's small internal interface (`acquire` -> `Lease.release`), driven directly.
"""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import datetime

from tests.support.env import gateway_env, process_alive, process_gone
from tests.support.stub_server import free_port
from tests.support.waiting import wait_until

CONTRACT_FIELDS = {
    "profile_id",
    "name",
    "state",
    "pid",
    "port",
    "started_at",
    "last_used_at",
    "inflight",
    "memory_bytes",
    "cpu_percent",
}


async def test_servers_list_every_profile_with_the_contract_fields(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("first")
        await env.add_stub("second")
        servers = await env.servers()
        assert [s["name"] for s in servers] == ["first", "second"]
        for server in servers:
            assert set(server) >= CONTRACT_FIELDS
            assert server["profile_id"] == env.profile_id(server["name"])
            assert server["state"] == "stopped"
            assert (server["pid"], server["port"], server["started_at"]) == (None, None, None)
            assert server["inflight"] == 0

        started = await env.start("first")
        assert set(started) >= CONTRACT_FIELDS
        assert isinstance(started["pid"], int)
        assert process_alive(started["pid"])
        assert started["port"] >= env.settings.default_port_start
        datetime.fromisoformat(started["started_at"])
        assert started["last_used_at"] is None
        assert started["memory_bytes"] > 0  # the RSS of the process tree
        assert isinstance(started["cpu_percent"], int | float)

        assert (await env.chat("first")).status_code == 200
        first, second = await env.servers()
        assert first["state"] == "ready"
        assert first["pid"] == started["pid"]
        assert datetime.fromisoformat(first["last_used_at"]) >= datetime.fromisoformat(
            first["started_at"]
        )
        assert second["state"] == "stopped"

        one = await env.http.get(f"/api/servers/{env.profile_id('first')}", headers=env.auth)
        assert one.status_code == 200
        assert one.json()["pid"] == started["pid"]


async def test_inflight_counts_an_open_stream(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("s", "--chunk-delay", "0.1", "--chunks", "8")
        await env.start("s")
        async with env.stream("s") as stream:
            chunks = stream.aiter_text()
            await anext(chunks)
            assert (await env.server("s"))["inflight"] == 1
            async for _ in chunks:
                pass
        assert (await env.server("s"))["inflight"] == 0


async def test_start_stop_and_restart(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("svc")
        first = await env.start("svc")
        again = await env.start("svc")  # already ready: same process
        assert again["pid"] == first["pid"]

        response = await env.control("svc", "restart")
        assert response.status_code == 200, response.text
        restarted = response.json()
        assert restarted["state"] == "ready"
        assert restarted["pid"] != first["pid"]
        assert process_gone(first["pid"])

        response = await env.control("svc", "stop")
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "stopped"
        assert response.json()["pid"] is None
        assert process_gone(restarted["pid"])
        response = await env.control("svc", "stop")  # stopping a stopped server is fine
        assert response.status_code == 200
        assert env.started_events("svc") == 2

        response = await env.control("svc", "restart")  # restart of a stopped one starts it
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "ready"


async def test_unknown_server_ids_are_404(tmp_path):
    async with gateway_env(tmp_path) as env:
        for method, path in (
            ("GET", "/api/servers/77"),
            ("POST", "/api/servers/77/start"),
            ("POST", "/api/servers/77/stop"),
            ("POST", "/api/servers/77/restart"),
            ("GET", "/api/servers/77/logs"),
        ):
            response = await env.http.request(method, path, headers=env.auth)
            assert response.status_code == 404, (method, path)


async def test_a_non_admin_reads_servers_but_cannot_start_or_stop_them(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("guarded")
        token = (await env.new_user()).token
        headers = {"Authorization": f"Bearer {token}"}
        profile_id = env.profile_id("guarded")
        for action in ("start", "stop", "restart"):
            response = await env.http.post(f"/api/servers/{profile_id}/{action}", headers=headers)
            assert response.status_code == 403, action
        assert env.started_events("guarded") == 0

        await env.start("guarded")
        response = await env.http.get("/api/servers", headers=headers)
        assert response.status_code == 200
        assert response.json()[0]["state"] == "ready"
        response = await env.http.get(f"/api/servers/{profile_id}/logs", headers=headers)
        assert response.status_code == 200
        response = await env.http.post(f"/api/servers/{profile_id}/stop", headers=headers)
        assert response.status_code == 403
        assert (await env.server("guarded"))["state"] == "ready"
        assert (await env.http.get("/api/servers")).status_code == 401


async def test_logs_tail_holds_the_servers_own_lines(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("talker")
        await env.start("talker")
        for _ in range(3):
            assert (await env.chat("talker")).status_code == 200
        url = f"/api/servers/{env.profile_id('talker')}/logs"

        async def logged() -> list[str] | None:
            lines: list[str] = (await env.http.get(url, headers=env.auth)).json()["lines"]
            hits = [line for line in lines if "POST /v1/chat/completions -> 200" in line]
            return lines if len(hits) == 3 else None

        lines = await wait_until(logged, message="three request lines in the log")
        assert any(line.startswith("[mlx-manager] starting:") for line in lines)
        assert any("stub: listening on" in line for line in lines)

        response = await env.http.get(url, params={"tail": 2}, headers=env.auth)
        body = response.json()
        assert body["name"] == "talker"
        assert body["profile_id"] == env.profile_id("talker")
        assert body["lines"] == lines[-2:]


async def test_logs_followed_over_sse_deliver_new_lines(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("followed")
        await env.start("followed")
        url = f"/api/servers/{env.profile_id('followed')}/logs"
        headers = {**env.auth, "Accept": "text/event-stream"}
        async with env.http.stream("GET", url, params={"tail": 1}, headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            first = await _next_event(lines)
            assert "POST /v1/chat/completions" not in first  # the tail of one line

            # A line produced after the follow began is delivered.
            assert (await env.chat("followed", "after the follow began")).status_code == 200

            async def until_request_line() -> str:
                while True:
                    line = await _next_event(lines)
                    if "POST /v1/chat/completions -> 200" in line:
                        return line

            line = await asyncio.wait_for(until_request_line(), timeout=15)
            assert line.startswith("stub: POST /v1/chat/completions -> 200")


async def test_a_profile_port_is_used_and_a_busy_one_fails_the_start(tmp_path):
    async with gateway_env(tmp_path) as env:
        port = free_port()
        await env.add_stub("fixed", port=port)
        assert (await env.start("fixed"))["port"] == port
        await env.control("fixed", "stop")

        with socket.socket() as holder:
            # (SO_REUSEADDR: the stopped server's closed connections may linger in TIME_WAIT)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("127.0.0.1", port))
            holder.listen()
            response = await env.control("fixed", "start")
            assert response.status_code == 424, response.text
            assert f"port {port}" in response.json()["detail"]


async def test_a_fixed_port_profile_restarts_on_its_port(tmp_path):
    # The old server's connections linger in TIME_WAIT on that port: that is not "in use".
    async with gateway_env(tmp_path) as env:
        port = free_port()
        await env.add_stub("fixed", port=port)
        first = await env.start("fixed")
        assert (await env.chat("fixed")).status_code == 200
        response = await env.control("fixed", "restart")
        assert response.status_code == 200, response.text
        assert response.json()["port"] == port
        assert response.json()["pid"] != first["pid"]
        assert (await env.chat("fixed")).status_code == 200


async def test_busy_ports_are_skipped(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        async with gateway_env(tmp_path, default_port_start=busy) as env:
            await env.add_stub("one")
            await env.add_stub("two")
            one = await env.start("one")
            two = await env.start("two")
            assert busy not in (one["port"], two["port"])
            assert one["port"] != two["port"]
            assert min(one["port"], two["port"]) > busy


async def test_acquire_and_release_are_the_proxys_interface(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("direct")
        manager = env.manager
        server = env.managed("direct")
        lease = await manager.acquire(server)
        assert server.state == "ready"
        assert lease.server is server
        assert lease.port == server.port
        assert (await env.server("direct"))["inflight"] == 1
        second = await manager.acquire(server)
        assert server.inflight == 2
        lease.release()
        second.release()
        assert server.inflight == 0
        assert (await env.server("direct"))["last_used_at"] is not None
        await manager.ensure_ready(server)  # ready already: returns at once
        assert env.started_events("direct") == 1


async def _next_event(lines) -> str:
    """The `line` of the next SSE event."""
    async for raw in lines:
        if raw.startswith("data:"):
            line: str = json.loads(raw.removeprefix("data:").strip())["line"]
            return line
    raise AssertionError("the log stream ended")
