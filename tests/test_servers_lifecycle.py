"""The supervisor for real: stub model servers as subprocesses behind a real gateway.

Covers one start per profile however many callers wait, a start that dies with its log tail,
crashes, a stop that never blocks the event loop, shutdown, idle TTL, the health checker,
auto_start, and the size-capped server logs.
"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
from sqlmodel import select

from gateway.serving.logfiles import log_path, open_for_child, rotate_if_large, tail
from gateway.tables import RunningInstance
from tests.support.env import (
    Env,
    count_events,
    env_settings,
    gateway_env,
    process_alive,
    process_gone,
    sse_data,
    stream_contents,
)
from tests.support.stub_server import CRASH_EXIT_CODE, FATAL_LINE, TRIGGER_CRASH, read_events
from tests.support.waiting import wait_until

# ---- one start per profile -----------------------------------------------------------------------


async def test_fifty_concurrent_acquires_on_a_cold_profile_launch_one_process(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("cold", "--startup-delay", "0.3")
        manager = env.manager
        server = env.managed("cold")

        leases = await asyncio.gather(*(manager.acquire(server) for _ in range(50)))

        assert env.started_events("cold") == 1
        assert manager.events.starts == 1
        assert {lease.port for lease in leases} == {server.port}
        assert server.state == "ready"
        assert server.inflight == 50
        for lease in leases:
            lease.release()
            lease.release()  # idempotent: a second release does not count twice
        assert server.inflight == 0


async def test_fifty_concurrent_requests_on_a_cold_profile_launch_one_process(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("cold", "--startup-delay", "0.3")

        responses = await asyncio.gather(*(env.chat("cold", f"n{i}") for i in range(50)))

        assert [r.status_code for r in responses] == [200] * 50, responses[0].text
        assert env.started_events("cold") == 1
        # every request really reached the one stub
        requests = [e for e in _events(env, "cold") if e["event"] == "request"]
        assert len(requests) == 50
        assert len({e["pid"] for e in requests}) == 1
        assert (await env.server("cold"))["inflight"] == 0


async def test_a_waiter_cancelled_during_the_start_holds_nothing(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("slow", "--startup-delay", "0.5")
        manager = env.manager
        server = env.managed("slow")
        cancelled = asyncio.create_task(manager.acquire(server))
        await wait_until(lambda: server.state == "starting")
        cancelled.cancel()
        lease = await manager.acquire(server)  # the start goes on for the others
        assert server.inflight == 1
        lease.release()
        assert server.inflight == 0
        assert cancelled.cancelled()
        assert env.started_events("slow") == 1


# ---- a start that fails --------------------------------------------------------------------------


async def test_a_server_that_exits_while_starting_fails_with_its_log_tail(tmp_path):
    async with gateway_env(tmp_path) as env:
        profile = await env.add_stub("broken", "--startup-delay", "0.3", "--exit-on-start", "3")

        response = await env.chat("broken")
        assert response.status_code == 424, response.text
        error = response.json()["error"]
        assert FATAL_LINE in error["message"]
        assert "code 3" in error["message"]
        assert error["code"] == "server_start_failed"

        # An explicit start forces a new launch, even during the failure's back-off.
        response = await env.control("broken", "start")
        assert response.status_code == 424, response.text
        assert FATAL_LINE in response.json()["detail"]

        server = await env.server("broken")
        assert server["state"] == "failed"
        assert FATAL_LINE in server["last_error"]

        log = log_path(env.settings.logs_dir, profile["name"]).read_text()
        assert log.count("[mlx-manager] starting:") == 2
        assert log.count(FATAL_LINE) == 2
        assert env.manager.events.start_failures == 2
        assert env.manager.events.starts == 0


async def test_a_failed_server_reports_no_pid_or_port(tmp_path):
    # The process is gone: its pid may be reused by anything, so it must not be shown.
    async with gateway_env(tmp_path) as env:
        await env.add_stub("broken", "--exit-on-start", "3")
        assert (await env.control("broken", "start")).status_code == 424
        server = await env.server("broken")
        assert server["state"] == "failed"
        assert (server["pid"], server["port"]) == (None, None)


async def test_a_failed_profile_starts_once_the_cause_is_fixed(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("flaky", "--exit-on-start", "3")
        assert (await env.chat("flaky")).status_code == 424
        # Saving the profile ends the failure's back-off: the next request tries the new settings.
        response = await env.http.patch(
            f"/api/profiles/{env.profile_id('flaky')}",
            json={"command": env.profiles["flaky"]["command"][:-2]},
            headers=env.auth,
        )
        assert response.status_code == 200, response.text
        response = await env.chat("flaky")
        assert response.status_code == 200, response.text
        assert (await env.server("flaky"))["state"] == "ready"


# ---- crashes -------------------------------------------------------------------------------------


async def test_a_killed_server_is_marked_stopped_and_restarts_on_the_next_request(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("victim")
        assert (await env.chat("victim")).status_code == 200
        old = await env.server("victim")
        assert old["state"] == "ready"

        os.kill(old["pid"], signal.SIGKILL)
        stopped = await env.wait_state("victim", "stopped")
        assert stopped["pid"] is None
        assert "exited unexpectedly" in stopped["last_error"]
        assert env.manager.events.crashes == 1
        assert await _running_instances(env) == []

        response = await env.chat("victim")
        assert response.status_code == 200, response.text
        new = await env.server("victim")
        assert new["state"] == "ready"
        assert new["pid"] != old["pid"]
        assert env.started_events("victim") == 2


async def test_a_request_in_flight_when_the_server_crashes_gets_502(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("crashy")
        response = await env.chat("crashy", TRIGGER_CRASH)
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "server_error"
        assert "crashy" in error["message"]
        assert response.headers["x-request-id"]

        await env.wait_state("crashy", "stopped")
        assert f"code {CRASH_EXIT_CODE}" in (await env.server("crashy"))["last_error"]
        assert (await env.server("crashy"))["inflight"] == 0

        response = await env.chat("crashy")
        assert response.status_code == 200, response.text
        assert env.started_events("crashy") == 2


async def test_a_stream_cut_by_a_crash_ends_without_done_and_the_server_comes_back(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("streamer", "--chunk-delay", "0.2", "--chunks", "30")
        pid = (await env.start("streamer"))["pid"]
        received: list[str] = []

        async def read_and_kill() -> None:
            async with env.stream("streamer") as response:
                assert response.status_code == 200
                async for text in response.aiter_text():
                    received.append(text)
                    if "tok1 " in "".join(received):
                        os.kill(pid, signal.SIGKILL)

        with pytest.raises(httpx.HTTPError):  # a truncated stream is an error for the client
            await read_and_kill()
        assert "tok1 " in "".join(received)
        assert "[DONE]" not in "".join(received)
        await env.wait_state("streamer", "stopped")
        assert (await env.server("streamer"))["inflight"] == 0
        assert (await env.chat("streamer")).status_code == 200


# ---- stopping ------------------------------------------------------------------------------------


async def test_health_answers_while_a_server_ignoring_sigterm_is_stopped(tmp_path):
    async with gateway_env(tmp_path, stop_timeout=2) as env:
        profile = await env.add_stub("stubborn", "--ignore-sigterm")
        pid = (await env.start("stubborn"))["pid"]

        stop = asyncio.create_task(env.control("stubborn", "stop"))
        await env.wait_state("stubborn", "stopping")
        for _ in range(5):
            health = await env.http.get("/health")
            assert health.status_code == 200
            assert health.json() == {"status": "ok"}
        servers = await env.servers()  # the API answers too
        assert [s["state"] for s in servers] == ["stopping"]
        assert not stop.done(), "the stop finished before /health was checked"
        assert process_alive(pid)

        response = await stop
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "stopped"
        assert process_gone(pid)
        log = log_path(env.settings.logs_dir, profile["name"]).read_text()
        assert "sending SIGKILL" in log


async def test_gateway_shutdown_stops_every_server(tmp_path):
    async with gateway_env(tmp_path, stop_timeout=1) as env:
        await env.add_stub("one")
        await env.add_stub("two", "--ignore-sigterm")
        pids = [(await env.start("one"))["pid"], (await env.start("two"))["pid"]]
        assert all(process_alive(pid) for pid in pids)
        settings = env.settings
    assert [process_gone(pid) for pid in pids] == [True, True]
    assert count_events(tmp_path / "events-one.jsonl", "stopped") == 1  # a graceful SIGTERM stop
    log = log_path(settings.logs_dir, "two").read_text()
    assert "stopping: gateway shutdown" in log
    assert "sending SIGKILL" in log  # the one ignoring SIGTERM was killed, not left behind


# ---- idle TTL ------------------------------------------------------------------------------------


async def test_profile_idle_ttl_stops_the_server_after_the_last_request(tmp_path):
    async with gateway_env(tmp_path, idle_ttl=0) as env:
        profile = await env.add_stub("brief", idle_ttl=1)
        assert (await env.chat("brief")).status_code == 200
        pid = (await env.server("brief"))["pid"]
        await env.wait_state("brief", "stopped", timeout=15)
        assert process_gone(pid)
        assert env.manager.events.idle_stops == 1
        log = log_path(env.settings.logs_dir, profile["name"]).read_text()
        assert "stopping: idle timeout" in log


async def test_idle_ttl_never_stops_a_server_with_an_open_stream(tmp_path):
    async with gateway_env(tmp_path) as env:
        await env.add_stub("long", "--chunk-delay", "0.2", "--chunks", "8", idle_ttl=0.5)
        pid = (await env.start("long"))["pid"]
        body = ""
        checked = False
        async with env.stream("long") as response:
            async for text in response.aiter_text():
                body += text
                if not checked and "tok5 " in body:  # >= 1.2 s into the stream: > 2x the TTL
                    server = await env.server("long")
                    assert server["state"] == "ready"
                    assert server["inflight"] == 1
                    assert server["pid"] == pid
                    checked = True
        assert checked
        payloads = sse_data(body)
        assert payloads[-1] == "[DONE]"
        assert stream_contents(payloads) == [f"tok{i} " for i in range(8)]
        # ... and once the stream has ended, the TTL runs out.
        await env.wait_state("long", "stopped")
        assert process_gone(pid)


async def test_global_idle_ttl_applies_and_zero_means_never(tmp_path):
    async with gateway_env(tmp_path, idle_ttl=1) as env:
        await env.add_stub("forever", idle_ttl=0)
        await env.add_stub("default")
        assert (await env.chat("forever")).status_code == 200  # used first: the older one
        assert (await env.chat("default")).status_code == 200
        await env.wait_state("default", "stopped")
        assert (await env.server("forever"))["state"] == "ready"


# ---- health checker and auto_start ---------------------------------------------------------------


async def test_a_server_failing_health_checks_in_a_row_is_restarted(tmp_path):
    async with gateway_env(tmp_path, health_check_interval=0.3, health_check_failures=2) as env:
        await env.add_stub("sick")
        old = await env.start("sick")
        checked = await wait_until(
            lambda: env.managed("sick").health_latency_ms is not None, message="a health check"
        )
        assert checked
        async with httpx.AsyncClient(trust_env=False) as http:
            response = await http.post(
                f"http://127.0.0.1:{old['port']}/_control/health", json={"status": 500}
            )
            assert response.status_code == 200

        async def restarted() -> dict | None:
            server = await env.server("sick")
            ok = server["state"] == "ready" and server["pid"] not in (None, old["pid"])
            return server if ok else None

        new = await wait_until(restarted, message="a restart with a new pid")
        assert process_gone(old["pid"])
        assert env.manager.events.health_restarts == 1
        assert env.started_events("sick") == 2
        assert new["health_latency_ms"] is None or new["health_latency_ms"] >= 0
        assert (await env.chat("sick")).status_code == 200


async def test_auto_start_profiles_start_in_the_background_when_the_gateway_starts(tmp_path):
    settings = env_settings(tmp_path)
    async with gateway_env(tmp_path, settings) as env:
        await env.add_stub("eager", "--startup-delay", "1.5", auto_start=True)
        await env.add_stub("lazy")
        assert (await env.server("eager"))["state"] == "stopped"  # not at creation
    assert env.started_events("eager") == 0

    async with gateway_env(tmp_path, settings) as env:
        health = await env.http.get("/health")
        assert health.status_code == 200  # at once, while the model server is still loading
        assert (await env.server("eager"))["state"] == "starting"
        ready = await env.wait_state("eager", "ready")
        assert ready["pid"] is not None
        assert (await env.server("lazy"))["state"] == "stopped"
        assert env.started_events("eager") == 1


# ---- log files -----------------------------------------------------------------------------------


def test_rotate_if_large_keeps_backups_and_the_writer_keeps_appending(tmp_path):
    path = log_path(tmp_path / "logs", "org/model name")
    assert path.name == "org_model_name.log"
    fd = open_for_child(path)  # what the model server holds: O_APPEND
    try:
        os.write(fd, b"first line\n" * 50)
        assert rotate_if_large(path, max_bytes=100, backups=2)
        assert path.with_name(path.name + ".1").read_bytes() == b"first line\n" * 50
        assert path.stat().st_size == 0

        os.write(fd, b"second line\n")  # lands at the new start, no hole of NULs
        assert path.read_bytes() == b"second line\n"

        os.write(fd, b"x" * 200 + b"\n")
        assert rotate_if_large(path, max_bytes=100, backups=2)
        assert path.with_name(path.name + ".2").read_bytes() == b"first line\n" * 50
        assert path.with_name(path.name + ".1").read_bytes().startswith(b"second line\n")
        os.write(fd, b"third line\n")
        assert tail(path, 5) == "third line"
    finally:
        os.close(fd)


def test_rotate_if_large_below_the_limit_or_missing_does_nothing(tmp_path):
    path = tmp_path / "server.log"
    assert not rotate_if_large(path, max_bytes=100, backups=3)
    path.write_text("short\n")
    assert not rotate_if_large(path, max_bytes=100, backups=3)
    assert not path.with_name("server.log.1").exists()
    path.write_text("y" * 500)
    assert rotate_if_large(path, max_bytes=100, backups=0)  # no backups: just truncated
    assert path.read_text() == ""
    assert not path.with_name("server.log.1").exists()


def test_tail_returns_the_last_lines(tmp_path):
    path = tmp_path / "server.log"
    assert tail(path, 3) == ""
    path.write_text("".join(f"line {i}\n" for i in range(10)))
    assert tail(path, 3) == "line 7\nline 8\nline 9"
    assert tail(path, 0) == ""


async def test_a_large_server_log_is_rotated_at_the_next_start(tmp_path):
    async with gateway_env(tmp_path, log_max_bytes=4096, log_backups=2) as env:
        await env.add_stub("chatty")
        log = log_path(env.settings.logs_dir, "chatty")
        await env.start("chatty")
        assert (await env.chat("chatty")).status_code == 200
        await wait_until(lambda: "POST /v1/chat/completions" in log.read_text())
        with log.open("a") as handle:  # as if the server had been talkative for a while
            handle.write("padding line\n" * 400)
        assert (await env.control("chatty", "restart")).status_code == 200
        backup = log.with_name(log.name + ".1")
        assert "POST /v1/chat/completions" in backup.read_text()
        assert "padding line" not in log.read_text()
        # the new process writes into the fresh file
        assert (await env.chat("chatty")).status_code == 200
        await wait_until(lambda: "POST /v1/chat/completions" in log.read_text())


# ---- helpers -------------------------------------------------------------------------------------


def _events(env: Env, name: str) -> list[dict]:
    return read_events(env.events_path(name))


async def _running_instances(env: Env) -> list[RunningInstance]:
    async with env.handle.core.sessions() as session:
        return list((await session.exec(select(RunningInstance))).all())
