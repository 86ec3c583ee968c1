"""One model-server process: launch it, know when it is ready, stop it, notice when it dies.

Mechanism only: which server to start or stop, and when, is decided by `gateway.serving.policy`
and carried out by `gateway.serving.lifecycle`. Nothing here blocks the event loop: the child is
awaited with asyncio, never with a synchronous `wait()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import psutil

from gateway.serving.errors import PortTaken, StartFailed
from gateway.serving.logfiles import mark, open_for_child, tail

READY_POLL_SECONDS = 0.05
LOG_TAIL_LINES = 40
# Listening addresses that receive connections to 127.0.0.1, where health checks and requests go.
LOOPBACK_LISTENERS = frozenset({"127.0.0.1", "0.0.0.0", "::", "::ffff:127.0.0.1", "::ffff:0.0.0.0"})

log = logging.getLogger("mlx_manager.servers")


__all__ = [
    "LaunchSpec",
    "ModelProcess",
    "PortOwner",
    "PortTaken",
    "ServerProcess",
    "Spawn",
    "StartFailed",
    "kill_recorded_process",
    "pick_port",
    "port_is_free",
    "port_owner",
    "spawn_process",
]


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything needed to launch one server, decided before launching (gateway.serving.launch).

    Frozen and free of profile logic, so a process (real or a test's fake) only executes it.
    """

    argv: list[str]
    port: int
    health_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


class ModelProcess(Protocol):
    """What the start/stop tasks need of one launched process; `ServerProcess` is the real one.

    A protocol so tests can hand `ServerManager(spawn=...)` a fake that records calls and
    becomes ready (or exits) when the test says, with no subprocess and no sleep.
    """

    spec: LaunchSpec
    create_time: float

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait_ready(self, within: float, http: httpx.AsyncClient) -> float: ...

    async def wait_exit(self) -> int: ...

    async def stop(self, grace: float) -> int | None: ...


Spawn = Callable[[LaunchSpec], Awaitable[ModelProcess]]


async def spawn_process(spec: LaunchSpec) -> ServerProcess:
    """The real `Spawn`: launch `spec` as a child process (its own session, log file as output)."""
    process = ServerProcess(spec)
    await process.spawn()
    return process


class ServerProcess:
    """One child process running a model server, owned by exactly one `ManagedServer`.

    Exists to keep the OS details (process groups, signals, reaping without blocking the loop,
    the log file as stdout/stderr) away from the decisions. It owns its child: only `stop()`
    signals it, and never after the child was reaped (its pid may be someone else's by then).
    """

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        self._proc: asyncio.subprocess.Process | None = None
        self.create_time: float = 0.0
        self._exit_code: int | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "spawn() first"
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    async def spawn(self) -> None:
        """Start the child in its own session, so stop() can signal its whole process group."""
        mark(self.spec.log_path, f"starting: {' '.join(self.spec.argv)}")
        log_fd = open_for_child(self.spec.log_path)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                env={**child_environment(), **self.spec.env},
                cwd=self.spec.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            mark(self.spec.log_path, f"could not execute {self.spec.argv[0]}: {exc}")
            raise StartFailed(
                f"could not execute {self.spec.argv[0]!r}: {exc.strerror or exc}; "
                "check the profile's command or MLX_MANAGER_BACKEND_BIN"
            ) from exc
        finally:
            os.close(log_fd)
        try:
            self.create_time = psutil.Process(self._proc.pid).create_time()
        except psutil.Error:
            self.create_time = 0.0

    async def wait_ready(self, within: float, http: httpx.AsyncClient) -> float:
        """Poll the health URL until it answers 200; fail at once if the child exits first.

        Returns the seconds it took.
        """
        assert self._proc is not None
        started = time.monotonic()
        exited = asyncio.ensure_future(self._proc.wait())
        try:
            while True:
                if exited.done():
                    code = exited.result()
                    raise StartFailed(
                        f"model server exited with code {code} while starting; "
                        f"last log lines:\n{self.log_tail()}"
                    )
                if await self._healthy(http):
                    await self._check_port_owner()
                    return time.monotonic() - started
                elapsed = time.monotonic() - started
                if elapsed > within:
                    raise StartFailed(
                        f"model server did not become healthy within {within:.0f} s "
                        f"({self.spec.health_url}); last log lines:\n{self.log_tail()}"
                    )
                await asyncio.wait({exited}, timeout=READY_POLL_SECONDS)
        finally:
            if not exited.done():
                exited.cancel()

    async def _check_port_owner(self) -> None:
        """Once, at the first healthy answer: was it our server that answered?

        The port was free when picked, but a backend loads for seconds before binding it, and
        whoever binds it first in between answers the health check. Only a listening socket
        held by our child or one of its descendants (a wrapper script's server) counts.
        """
        port = self.spec.port
        owner = await asyncio.to_thread(port_owner, self.pid, port)
        if owner.ours is None:
            # Refusing to serve because psutil may not look would break working setups.
            log.warning(
                "could not check who listens on port %s (%s); trusting its health check",
                port,
                owner.holder,
            )
            mark(self.spec.log_path, f"could not check who listens on port {port}: {owner.holder}")
            return
        if owner.ours:
            return
        mark(
            self.spec.log_path,
            f"port {port} is answered by {owner.holder}, not by this server (pid {self.pid})",
        )
        raise PortTaken(port=port, holder=owner.holder, pid=self.pid, log_tail=self.log_tail())

    async def _healthy(self, http: httpx.AsyncClient) -> bool:
        try:
            response = await http.get(self.spec.health_url, timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def wait_exit(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, grace: float) -> int | None:
        """SIGTERM the group, wait up to `grace` seconds without blocking, then SIGKILL it."""
        if self._proc is None:
            return None
        if self._proc.returncode is not None:
            return self._proc.returncode  # long gone: its pid may belong to someone else now
        if self._proc.returncode is None:
            signal_group(self._proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), grace)
            except TimeoutError:
                mark(self.spec.log_path, f"did not stop within {grace:.0f} s; sending SIGKILL")
                signal_group(self._proc.pid, signal.SIGKILL)
                await self._proc.wait()
        # Stragglers the server forked (worker processes) die with it.
        signal_group(self._proc.pid, signal.SIGKILL)
        mark(self.spec.log_path, f"stopped (exit code {self._proc.returncode})")
        return self._proc.returncode

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.spec.log_path, lines)


def child_environment() -> dict[str, str]:
    """The gateway's environment minus its own settings: a model server (or any `command`)
    has no business seeing MLX_MANAGER_JWT_SECRET."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLX_MANAGER_")}


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As a server would bind: a restarted server's old TIME_WAIT connections don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class PortOwner:
    """Who listens on a server's port: `ours` is True (our process tree), False (someone else,
    described by `holder`) or None (psutil was refused a look; `holder` says why)."""

    ours: bool | None
    holder: str = ""


def port_owner(pid: int, port: int) -> PortOwner:
    """Whether process `pid` or one of its descendants listens on `port` (for 127.0.0.1).

    Each process is asked for its own sockets (`Process.net_connections`), which works for a
    user's own processes on Linux and macOS; the machine-wide table needs root on macOS.
    Blocking (it reads /proc or asks the kernel per process): run it in a thread.
    """
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []  # our server is gone: whoever answers is not it
    except psutil.AccessDenied as exc:
        return PortOwner(None, f"process tree of pid {pid}: {exc}")
    denied: psutil.AccessDenied | None = None
    for proc in tree:
        try:
            if any(_listens(c.status, c.laddr, port) for c in proc.net_connections(kind="tcp")):
                return PortOwner(True)
        except psutil.NoSuchProcess:
            continue  # a helper that exited meanwhile (zombies included)
        except psutil.AccessDenied as exc:
            denied = exc
    if denied is not None:
        return PortOwner(None, f"sockets of pid {denied.pid}: {denied}")
    return PortOwner(False, listener_of(port, exclude={p.pid for p in tree}))


def listener_of(port: int, exclude: Collection[int] = ()) -> str:
    """A description of the process listening on `port`, for an error message.

    Only on the failure path: it may walk every process (the machine-wide table needs root on
    macOS, where each of the user's processes is asked instead).
    """
    pids: set[int] = set()
    try:
        pids = {
            conn.pid
            for conn in psutil.net_connections(kind="tcp")
            if conn.pid is not None and _listens(conn.status, conn.laddr, port)
        }
    except psutil.AccessDenied:
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if any(_listens(c.status, c.laddr, port) for c in proc.net_connections(kind="tcp")):
                    pids.add(proc.pid)
    for other in sorted(pids - set(exclude)):
        try:
            return f"another process (pid {other}, {psutil.Process(other).name()!r})"
        except psutil.Error:
            return f"another process (pid {other})"
    return "another process, not one this gateway may inspect (another user's, or a container's)"


def _listens(status: str, laddr: tuple[object, ...], port: int) -> bool:
    """A listening socket on `port` that takes connections to 127.0.0.1."""
    return (
        status == psutil.CONN_LISTEN
        and len(laddr) == 2
        and laddr[1] == port
        and laddr[0] in LOOPBACK_LISTENERS
    )


def pick_port(start: int, taken: Iterable[int], limit: int = 1000) -> int:
    """The first port from `start` that no server of ours holds and nothing else is bound to."""
    held = set(taken)
    for port in range(start, min(start + limit, 65536)):
        if port not in held and port_is_free(port):
            return port
    raise StartFailed(f"no free port in {start}..{start + limit - 1}; set DEFAULT_PORT_START")


# psutil's start times of one process differ by rounding between calls; a reused pid's differ
# by far more than this.
START_TIME_SLACK = 0.5


def recorded_process(pid: int, create_time: float) -> psutil.Process | None:
    """The process recorded as (pid, start time), if it still runs: the pid alone may have
    been reused by an unrelated process. How every record of a process is checked (model
    servers, gateways in running_instances, usage spool owners)."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) <= START_TIME_SLACK:
            return proc
    except psutil.Error:
        pass
    return None


def kill_recorded_process(pid: int, create_time: float, grace: float) -> bool:
    """Kill a process group we recorded earlier, only if pid *and* start time still match.

    Blocking (it waits up to `grace`): run it in a thread. Returns True when something was killed.
    """
    proc = recorded_process(pid, create_time)
    if proc is None:
        return False
    signal_group(pid, signal.SIGTERM)
    if not _wait_exited(proc, grace):
        signal_group(pid, signal.SIGKILL)
        _wait_exited(proc, 5)
    signal_group(pid, signal.SIGKILL)
    return True


def _wait_exited(proc: psutil.Process, within: float) -> bool:
    """Until the process is gone or a zombie: not our child, so nobody here reaps it, and
    psutil's own wait() would count a zombie as running until its real parent reaps it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return True
        time.sleep(0.05)
    return False
