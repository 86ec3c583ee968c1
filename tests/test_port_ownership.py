"""A server is ready only if *our* process answers on its port, never a stranger that took it.

The gateway picks a free port, then the model server loads for seconds before binding it; in
between another program can take the port and answer the health check. Real processes here:
the gateway launches stubs (tests/support/stub_server.py) that load slowly (`--startup-delay`),
and the test starts a "stranger" stub on the same port while they load. The stranger's events
file shows whether any request reached it.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from gateway.serving.logfiles import log_path
from gateway.serving.process import PortOwner, port_owner
from tests.support.env import (
    Env,
    assert_openai_error,
    gateway_env,
    process_gone,
    read_events,
    stub_command,
    wait_until,
)
from tests.support.stub_server import StubProcess, free_port, start_stub

LOADING = ("--startup-delay", "600")  # "loads" far longer than any test runs: killed by us


@contextmanager
def stranger_on(port: int, tmp_path: Path) -> Iterator[tuple[StubProcess, Path]]:
    """Another program's OpenAI server on `port` (not a child of the gateway), and its events."""
    events = tmp_path / f"stranger-{port}.jsonl"
    stub = start_stub(tmp_path / "stranger", "--events", str(events), port=port)
    try:
        yield stub, events
    finally:
        stub.stop()


async def launched(env: Env, name: str, before: int | None = None) -> tuple[int, int]:
    """(pid, port) of `name`'s process once it is launched (and is not the pid `before`)."""
    server = env.managed(name)

    def current() -> tuple[int, int] | None:
        process = server.process
        if process is None or process.pid == before or server.port is None:
            return None
        return process.pid, server.port

    return await wait_until(current, message=f"{name} launched")


def requests_to(events: Path) -> list[dict[str, object]]:
    return [e for e in read_events(events) if e["event"] == "request"]


def slow_first_launch(tmp_path: Path, name: str, launches: int = 1) -> list[str]:
    """A `command` whose first `launches` launches load "forever"; later ones start at once.

    Each launch appends a line to a counter file, so the shell knows which launch it is.
    """
    counter = tmp_path / f"{name}.launches"
    events = tmp_path / f"events-{name}.jsonl"
    fast = shlex.join(stub_command("--events", str(events)))
    slow = shlex.join(stub_command("--events", str(events), *LOADING))
    script = (
        f"echo launch >> {shlex.quote(str(counter))}; "
        f'if [ "$(wc -l < {shlex.quote(str(counter))})" -le {launches} ]; '
        f"then exec {slow}; else exec {fast}; fi"
    )
    return ["/bin/sh", "-c", script]


# ---- a fixed port taken while the server loads ---------------------------------------------


async def test_a_fixed_port_taken_while_loading_fails_the_start_and_nothing_reaches_it(
    tmp_path: Path,
):
    port = free_port()
    async with gateway_env(tmp_path) as env:
        await env.add_stub("fixed", *LOADING, port=port)
        request = asyncio.create_task(env.chat("fixed"))
        ours, _ = await launched(env, "fixed")
        with stranger_on(port, tmp_path) as (stranger, stranger_events):
            response = await request

            error = assert_openai_error(response, 424, "server_start_failed")
            message = error["message"]
            assert f"port {port} is answered by another process (pid {stranger.pid}" in message
            assert f"not by the model server this gateway launched (pid {ours})" in message
            assert "change the profile's port" in message
            assert "last log lines:" in message  # the log tail, as every failed start
            assert requests_to(stranger_events) == []
            assert stranger.proc.poll() is None  # the stranger is not ours to stop

            await wait_until(lambda: process_gone(ours), message="our loading server stopped")
            server = await env.server("fixed")
            assert server["state"] == "failed"
            assert f"port {port} is answered by another process" in server["last_error"]
            log = log_path(env.settings.logs_dir, "fixed").read_text()
            assert f"port {port} is answered by another process (pid {stranger.pid}" in log
            assert env.manager.events.starts == 0
            assert env.manager.events.start_failures == 1


async def test_an_explicit_start_gets_the_same_clear_424(tmp_path: Path):
    port = free_port()
    async with gateway_env(tmp_path) as env:
        await env.add_stub("fixed", *LOADING, port=port)
        start = asyncio.create_task(env.control("fixed", "start"))
        await launched(env, "fixed")
        with stranger_on(port, tmp_path) as (stranger, stranger_events):
            response = await start
            assert response.status_code == 424, response.text
            body = response.json()
            assert body["code"] == "server_start_failed"
            assert (
                f"port {port} is answered by another process (pid {stranger.pid}"
                in (body["detail"])
            )
            assert requests_to(stranger_events) == []


# ---- a picked port taken while the server loads ---------------------------------------------


async def test_a_picked_port_taken_while_loading_moves_to_another_port(tmp_path: Path):
    async with gateway_env(tmp_path) as env:
        await env.add_profile("auto", slow_first_launch(tmp_path, "auto"))
        request = asyncio.create_task(env.chat("auto"))
        first_pid, first_port = await launched(env, "auto")
        with stranger_on(first_port, tmp_path) as (stranger, stranger_events):
            response = await request

            assert response.status_code == 200, response.text
            assert requests_to(stranger_events) == []
            assert stranger.proc.poll() is None
            assert process_gone(first_pid)  # reaped before the relaunch

            server = await env.server("auto")
            assert server["state"] == "ready"
            assert server["port"] != first_port
            assert server["pid"] != first_pid
            ours = env.events("auto", "request")
            assert len(ours) == 1
            assert ours[0]["pid"] == server["pid"]
            assert [e["port"] for e in env.events("auto", "started")] == [server["port"]]
            log = log_path(env.settings.logs_dir, "auto").read_text()
            assert f"relaunching on another port: {first_port} is taken" in log
            assert env.manager.events.start_failures == 0


async def test_a_second_picked_port_taken_too_fails_naming_both(tmp_path: Path):
    async with gateway_env(tmp_path) as env:
        await env.add_profile("unlucky", slow_first_launch(tmp_path, "unlucky", launches=2))
        request = asyncio.create_task(env.chat("unlucky"))
        first_pid, first_port = await launched(env, "unlucky")
        with stranger_on(first_port, tmp_path) as (_, first_events):
            second_pid, second_port = await launched(env, "unlucky", before=first_pid)
            assert second_port != first_port
            with stranger_on(second_port, tmp_path) as (second, second_events):
                error = assert_openai_error(await request, 424, "server_start_failed")
                message = error["message"]
                assert f"port {second_port} is answered by another process (pid {second.pid}" in (
                    message
                )
                assert f"port {first_port} was taken the same way before it" in message
                assert "MLX_MANAGER_DEFAULT_PORT_START" in message
                assert requests_to(first_events) == requests_to(second_events) == []
                await wait_until(lambda: process_gone(second_pid), message="second one stopped")
                assert (await env.server("unlucky"))["state"] == "failed"


# ---- what counts as ours ---------------------------------------------------------------------


async def test_a_server_run_by_a_wrapper_script_is_ours(tmp_path: Path):
    # The listening process is a child of the launched shell, not the launched pid itself.
    async with gateway_env(tmp_path) as env:
        events = env.events_path("wrapped")
        stub = shlex.join(stub_command("--events", str(events)))
        await env.add_profile("wrapped", ["/bin/sh", "-c", f"{stub}; exit $?"])

        response = await env.chat("wrapped")

        assert response.status_code == 200, response.text
        server = await env.server("wrapped")
        listener = env.events("wrapped", "started")[0]["pid"]
        assert listener != server["pid"]  # a descendant answered, and it was accepted


def test_port_owner_tells_ours_from_a_strangers(tmp_path: Path):
    with stranger_on(free_port(), tmp_path) as (stranger, _):
        # This test's process is the stub's parent: the stub is a descendant, so ours.
        assert port_owner(os.getpid(), stranger.port) == PortOwner(True)
        assert port_owner(stranger.pid, stranger.port) == PortOwner(True)
        unrelated = subprocess.Popen(["sleep", "600"])
        try:
            other = port_owner(unrelated.pid, stranger.port)
            assert other.ours is False
            assert f"pid {stranger.pid}" in other.holder
        finally:
            unrelated.kill()
            unrelated.wait()
        # Our server gone, and nobody on its port at all: not ours either.
        assert port_owner(unrelated.pid, free_port()).ours is False


def test_a_process_we_may_not_inspect_leaves_the_answer_unknown(tmp_path: Path):
    """psutil refused (another user's process): unknown, and the start trusts its health check
    (`ServerProcess._check_port_owner` logs it) instead of refusing to serve."""
    if os.geteuid() == 0:  # root may look everywhere: look as `nobody` at our stranger
        with stranger_on(free_port(), tmp_path) as (stranger, _):
            target = stranger.pid
            owner = _port_owner_as_nobody(stranger.pid, stranger.port)
    else:  # look, as ourselves, at a process of another user (init, say)
        target = _another_users_process()
        owner = port_owner(target, free_port())
    assert owner.ours is None
    assert f"pid {target}" in owner.holder


def _another_users_process() -> int:
    """A process of another user with no children (so the refusal names that very pid)."""
    mine = os.getuid()
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        try:
            if uids is not None and uids.real != mine and not proc.children():
                return proc.pid
        except psutil.Error:
            continue
    raise AssertionError("no process of another user on this machine to look at")


def _port_owner_as_nobody(pid: int, port: int) -> PortOwner:
    """`port_owner` as seen by an unprivileged user: in a forked child that drops to `nobody`
    (the interpreter may not be readable by nobody, so no exec)."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked child
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            result: object = port_owner(pid, port)
        except BaseException as exc:
            result = repr(exc)
        with os.fdopen(write, "wb") as out:
            pickle.dump(result, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as source:
        result = pickle.load(source)
    os.waitpid(child, 0)
    assert isinstance(result, PortOwner), result
    return result
