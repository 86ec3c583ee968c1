"""A gateway that dies leaves model servers behind; the next one must clean them up.

The main test runs the gateway as a real subprocess (`python -m gateway serve`) so it can be
killed with SIGKILL; the model server it started outlives it as an orphan holding its port, and
the next gateway on the same home must kill it, while never touching a process whose pid
merely matches a recorded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db import create_engine, session_factory
from gateway.serving.process import kill_recorded_process
from gateway.tables import RunningInstance
from tests.support.env import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    env_settings,
    gateway_env,
    process_alive,
    process_gone,
    stub_command,
)
from tests.support.gateway_process import GatewayProcess, serve_environment
from tests.support.stub_server import free_port, read_events
from tests.support.waiting import wait_until

SECRET = "orphan-test-secret-" + "s" * 40


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    """Pids to SIGKILL at the end whatever happens (orphans must not outlive a failed test)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def gateway_environment(home: Path, port_start: int) -> dict[str, str]:
    return serve_environment(
        home, SECRET, default_port_start=str(port_start), stop_timeout="2", log_level="info"
    )


async def test_a_gateway_killed_with_sigkill_leaves_no_unknown_server_running(tmp_path, cleanup):
    home = tmp_path / "home"
    events = tmp_path / "events.jsonl"
    gateway_port = free_port()
    with socket.socket() as busy:  # the first model-server port is taken by someone else
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        env = gateway_environment(home, busy_port)

        async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
            first = GatewayProcess(
                env, tmp_path / "gateway-1.log", port=gateway_port, cwd=home.parent
            )
            cleanup.append(first.proc.pid)
            try:
                await first.wait_healthy()
                credentials = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
                response = await http.post(f"{first.url}/api/auth/register", json=credentials)
                assert response.status_code == 201, response.text
                token = await _login(http, first.url, credentials)
                auth = {"Authorization": f"Bearer {token}"}
                body = {"name": "orphan", "command": stub_command("--events", str(events))}
                response = await http.post(f"{first.url}/api/profiles", json=body, headers=auth)
                assert response.status_code == 201, response.text

                response = await http.post(
                    f"{first.url}/v1/chat/completions",
                    json={"model": "orphan", "messages": [{"role": "user", "content": "hi"}]},
                    headers=auth,
                )
                assert response.status_code == 200, response.text
                (server,) = (await http.get(f"{first.url}/api/servers", headers=auth)).json()
                stub_pid, stub_port = server["pid"], server["port"]
                cleanup.append(stub_pid)
                assert stub_port != busy_port  # the busy port was skipped
                assert stub_port > busy_port
                assert [e["pid"] for e in read_events(events) if e["event"] == "started"] == [
                    stub_pid
                ]
            finally:
                first.kill()  # SIGKILL: no shutdown, no cleanup

            # The model server outlived its gateway and still holds its port.
            assert process_alive(stub_pid)
            assert (await http.get(f"http://127.0.0.1:{stub_port}/health")).status_code == 200
            assert _running_instances(home) == [stub_pid]

            second = GatewayProcess(
                env, tmp_path / "gateway-2.log", port=gateway_port, cwd=home.parent
            )
            cleanup.append(second.proc.pid)
            try:
                await second.wait_healthy()
                await wait_until(lambda: process_gone(stub_pid), message="the orphan killed")
                assert _running_instances(home) == []
                token = await _login(http, second.url, credentials)
                auth = {"Authorization": f"Bearer {token}"}
                (server,) = (await http.get(f"{second.url}/api/servers", headers=auth)).json()
                assert (server["state"], server["pid"]) == ("stopped", None)
                log = (tmp_path / "gateway-2.log").read_text()
                assert f"killed orphaned model server pid {stub_pid}" in log

                # The new gateway serves the model again, with a process it knows about.
                response = await http.post(
                    f"{second.url}/v1/chat/completions",
                    json={"model": "orphan", "messages": [{"role": "user", "content": "hi"}]},
                    headers=auth,
                )
                assert response.status_code == 200, response.text
                (server,) = (await http.get(f"{second.url}/api/servers", headers=auth)).json()
                new_pid = server["pid"]
                cleanup.append(new_pid)
                assert new_pid != stub_pid
                assert server["port"] != busy_port
                assert _running_instances(home) == [new_pid]
            finally:
                second.terminate()  # an orderly shutdown stops its model server
            assert process_gone(new_pid)
            assert _running_instances(home) == []


async def test_a_recorded_pid_with_another_start_time_is_not_killed(tmp_path, cleanup):
    settings = env_settings(tmp_path)
    async with gateway_env(tmp_path, settings) as env:
        profile_id = (await env.add_stub("ghost"))["id"]

    # A process that happens to have a recorded pid (reused), and a real orphan.
    unrelated = subprocess.Popen(["sleep", "60"], start_new_session=True)
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    cleanup.extend([unrelated.pid, orphan.pid])
    real_start = psutil.Process(unrelated.pid).create_time()
    engine = create_engine(settings.sqlalchemy_url)
    try:
        await _record(engine, profile_id, unrelated.pid, real_start - 3600)
        await _record(engine, profile_id, orphan.pid, psutil.Process(orphan.pid).create_time())
    finally:
        await engine.dispose()

    async with gateway_env(tmp_path, settings) as env:
        assert process_gone(orphan.pid) or orphan.poll() is not None
        assert unrelated.poll() is None  # untouched
        assert process_alive(unrelated.pid)
        assert (await env.server("ghost"))["state"] == "stopped"
    assert _running_instances(settings.home) == []
    unrelated.kill()
    unrelated.wait()
    orphan.wait(timeout=10)  # killed by the gateway; reaped here (no ResourceWarning)


async def test_killing_a_recorded_process_does_not_wait_out_the_grace_for_a_zombie(
    tmp_path, cleanup
):
    # An orphan's new parent may not reap it at once (a container's PID 1 without an init):
    # once killed it is a zombie. It has exited; the gateway's start must not wait the whole
    # grace period (and 5 s more) for its pid to vanish.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, time\n"
            "p = subprocess.Popen(['sleep', '60'], start_new_session=True,"
            " stdout=subprocess.DEVNULL)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(60)  # alive, and never reaps its child\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    cleanup.append(parent.pid)
    try:
        assert parent.stdout is not None
        pid = int(await asyncio.to_thread(parent.stdout.readline))
        cleanup.append(pid)
        created = psutil.Process(pid).create_time()
        grace = 8.0
        done = threading.Event()
        result: list[bool] = []

        def kill() -> None:
            result.append(kill_recorded_process(pid, created, grace))
            done.set()

        threading.Thread(target=kill, daemon=True).start()  # daemon: never blocks the exit
        await wait_until(lambda: process_gone(pid), message="the recorded process exited")
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        finished = await asyncio.to_thread(done.wait, grace / 2)
        assert finished, "kill_recorded_process waits out the grace period for a zombie"
        assert result == [True]
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


# ---- helpers ----------------------------------------------------------------------------------


async def _login(http: httpx.AsyncClient, url: str, credentials: dict[str, str]) -> str:
    response = await http.post(f"{url}/api/auth/login", json=credentials)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def _record(engine: AsyncEngine, profile_id: int, pid: int, create_time: float) -> None:
    async with session_factory(engine)() as session:
        session.add(
            RunningInstance(
                profile_id=profile_id,
                pid=pid,
                create_time=create_time,
                port=1,
                gateway_pid=_dead_pid(),
            )
        )
        await session.commit()


def _dead_pid() -> int:
    """A pid that is not this process (reconcile skips rows of the gateway's own process)."""
    pid = 4_000_000
    while psutil.pid_exists(pid):
        pid -= 1
    return pid


def _running_instances(home: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(home / "mlx-manager.db")) as db:
        return [row[0] for row in db.execute("SELECT pid FROM running_instances ORDER BY id")]


async def test_replicas_on_one_database_never_reap_each_others_servers(tmp_path, cleanup):
    """Two gateways share one home (one database): the second's start leaves the first's
    server alone, each records its own; when the first is SIGKILLed, a third reaps only the
    dead gateway's server, not the live replica's."""
    home = tmp_path / "home"
    env = gateway_environment(home, free_port())
    chat = {"model": "shared", "messages": [{"role": "user", "content": "hi"}]}
    credentials = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}

    async def server_pid(http: httpx.AsyncClient, gateway: GatewayProcess) -> int:
        auth = {"Authorization": f"Bearer {await _login(http, gateway.url, credentials)}"}
        response = await http.post(f"{gateway.url}/v1/chat/completions", json=chat, headers=auth)
        assert response.status_code == 200, response.text
        (server,) = (await http.get(f"{gateway.url}/api/servers", headers=auth)).json()
        pid: int = server["pid"]
        cleanup.append(pid)
        return pid

    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
        first = GatewayProcess(env, tmp_path / "gateway-1.log", cwd=home.parent)
        cleanup.append(first.proc.pid)
        second = third = None
        try:
            await first.wait_healthy()
            response = await http.post(f"{first.url}/api/auth/register", json=credentials)
            assert response.status_code == 201, response.text
            auth = {"Authorization": f"Bearer {await _login(http, first.url, credentials)}"}
            body = {"name": "shared", "command": stub_command()}
            response = await http.post(f"{first.url}/api/profiles", json=body, headers=auth)
            assert response.status_code == 201, response.text
            first_server = await server_pid(http, first)

            second = GatewayProcess(
                env, tmp_path / "gateway-2.log", port=free_port(), cwd=home.parent
            )
            cleanup.append(second.proc.pid)
            await second.wait_healthy()
            assert process_alive(first_server)  # the replica's start reaped nothing
            second_server = await server_pid(http, second)
            assert sorted(_running_instances(home)) == sorted([first_server, second_server])

            first.kill()  # SIGKILL: its server is now an orphan, the second's is not
            third = GatewayProcess(
                env, tmp_path / "gateway-3.log", port=free_port(), cwd=home.parent
            )
            cleanup.append(third.proc.pid)
            await third.wait_healthy()
            await wait_until(lambda: process_gone(first_server), message="the orphan killed")
            assert process_alive(second_server)
            assert _running_instances(home) == [second_server]
        finally:
            for gateway in (first, second, third):
                if gateway is not None:
                    gateway.terminate()
