"""Starting and stopping servers: one task per server at a time, joined by every waiter.

State changes happen in plain (non-async) code, which asyncio runs atomically; each start or
stop is one task stored on the server, so fifty first requests launch one process and a stop
under way is joined, never doubled. Whether to start or stop is not decided here: the policy
decides (`gateway.serving.policy`), the manager asks, this module does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from gateway.serving.errors import PortTaken, StartFailed
from gateway.serving.events import Notifier, ServerEvents
from gateway.serving.launch import BackendProbe, choose_port, launch_spec, prompt_cache_dir
from gateway.serving.logfiles import log_path, mark, rotate_if_large
from gateway.serving.memory import ProcessTreeMeter
from gateway.serving.orphans import InstanceRecords
from gateway.serving.process import ModelProcess, Spawn
from gateway.serving.registry import Registry
from gateway.serving.server import ManagedServer
from gateway.settings import Settings
from gateway.tables import ServerProfile
from gateway.types import ALIVE

log = logging.getLogger("mlx_manager.servers")


class Lifecycle:
    """Owns every server's start and stop task (and the crash watcher of a ready one)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        records: InstanceRecords,
        changes: Notifier,
        events: ServerEvents,
        probe: BackendProbe,
        http: httpx.AsyncClient,
        spawn: Spawn,
        background: Callable[[Awaitable[Any]], None],
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._records = records
        self._changes = changes
        self._events = events
        self._probe = probe
        self._http = http
        self._spawn = spawn
        self._background = background

    def begin_start(self, server: ManagedServer) -> asyncio.Task[None]:
        server.state = "starting"
        server.attempt += 1
        server.last_error = None
        # The previous process is gone: a stop racing this start must never signal its pid.
        server.process = None
        server.port = None
        server.task = asyncio.create_task(self._run_start(server), name=f"start {server.name}")
        server.task.add_done_callback(_consume_exception)
        return server.task

    def begin_stop(self, server: ManagedServer, reason: str) -> asyncio.Task[None]:
        previous = server.task if server.state == "starting" else None
        server.state = "stopping"
        server.task = asyncio.create_task(
            self._run_stop(server, reason, previous), name=f"stop {server.name}"
        )
        server.task.add_done_callback(_consume_exception)
        return server.task

    async def stop(self, server: ManagedServer, reason: str) -> None:
        """Until stopped: joins a stop under way, or begins one."""
        while server.state in ALIVE:
            if server.state == "stopping":
                assert server.task is not None
                await asyncio.wait({server.task})
                continue
            await asyncio.wait({self.begin_stop(server, reason)})

    async def _run_start(self, server: ManagedServer) -> None:
        try:
            await self._start_process(server)
        except BaseException:
            if server.state == "starting" and server.task is asyncio.current_task():
                server.state = "failed"
                self._changes.notify()
            raise

    async def _start_process(self, server: ManagedServer) -> None:
        settings = self._settings
        profile = server.profile
        path = log_path(settings.logs_dir, profile.name)
        process: ModelProcess | None = None
        try:
            await asyncio.to_thread(
                rotate_if_large, path, settings.log_max_bytes, settings.log_backups
            )

            strangers: set[int] = set()  # ports found answered by another process

            def claim_port(profile: ServerProfile) -> int:
                port = self._choose_port(profile, avoid=strangers)
                server.port = port
                return port

            deadline = time.monotonic() + settings.start_timeout  # one budget, retry included
            while True:
                spec = await launch_spec(settings, profile, self._probe, claim_port, path)
                server.port = spec.port
                process = await self._spawn(spec)
                server.process = process
                await self._records.record(server.profile_id, process)
                try:
                    within = max(deadline - time.monotonic(), 0.0)
                    seconds = await process.wait_ready(within, self._http)
                    break
                except PortTaken as exc:
                    if profile.port is not None or strangers:
                        raise exc.advised(self._port_taken_advice(strangers)) from exc
                    # A port we picked was taken while the server loaded: pick another, once.
                    strangers.add(exc.port)
                    log.warning(
                        "%s: port %s is answered by %s; relaunching on another port",
                        profile.name,
                        exc.port,
                        exc.holder,
                    )
                    mark(path, f"relaunching on another port: {exc.port} is taken")
                    await process.stop(settings.stop_timeout)
                    await self._records.forget(server.profile_id)
                    server.process = process = None
        except Exception as exc:
            message = exc.message if isinstance(exc, StartFailed) else f"{exc}"
            server.last_error = f"{profile.name}: {message}"
            self._events.start_failures += 1
            if process is not None and process.returncode is None:
                await process.stop(settings.stop_timeout)
            await self._records.forget(server.profile_id)
            if server.state == "starting":
                server.state = "failed"
                server.failed_at = time.monotonic()
            log.warning("start of %s failed: %s", profile.name, message.splitlines()[0])
            self._changes.notify()
            raise StartFailed(server.last_error) from exc
        with contextlib.suppress(OSError):
            mark(path, f"ready on port {spec.port} after {seconds:.1f} s")
        log.info("%s ready on port %s after %.1f s", profile.name, spec.port, seconds)
        self._events.starts += 1
        server.state = "ready"
        server.failed_at = None
        server.started_at = datetime.now(UTC)
        server.last_used = time.monotonic()
        server.health_failures = 0
        server.meter = ProcessTreeMeter(process.pid)
        self._background(self._watch_exit(server, process))
        self._changes.notify()

    def _choose_port(self, profile: ServerProfile, avoid: set[int]) -> int:
        servers = list(self._registry)
        taken = {
            s.port
            for s in servers
            if s.port is not None and s.state in ALIVE and s.profile.id != profile.id
        }
        fixed = {s.profile.port for s in servers if s.profile.port is not None}
        # `avoid` too: a stranger listening on 0.0.0.0 leaves 127.0.0.1 bindable on macOS.
        return choose_port(profile, taken | avoid, fixed, self._settings.default_port_start)

    def _port_taken_advice(self, earlier: set[int]) -> str:
        """What to do: for a profile's fixed port, or a second picked port taken the same way."""
        if earlier:
            ports = ", ".join(str(port) for port in sorted(earlier))
            return (
                f"port {ports} was taken the same way before it: something keeps starting "
                "servers on the ports this gateway picks; find it, or move the gateway's range "
                f"(MLX_MANAGER_DEFAULT_PORT_START, now {self._settings.default_port_start})"
            )
        return (
            "the profile's fixed port was free at launch but taken while the server loaded: "
            "stop that process, or change the profile's port (or unset it, so the gateway "
            "picks a free one and moves on if that one is taken)"
        )

    async def _run_stop(
        self, server: ManagedServer, reason: str, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None and not previous.done():
            previous.cancel()
            with contextlib.suppress(BaseException):
                await previous
        process = server.process
        try:
            if process is not None:
                mark(process.spec.log_path, f"stopping: {reason}")
                await process.stop(self._settings.stop_timeout)
        finally:
            await self._records.forget(server.profile_id)
            await asyncio.to_thread(
                shutil.rmtree, prompt_cache_dir(self._settings, server.name), True
            )
            server.state = "stopped"
            server.measured_bytes = 0
            server.cpu_percent = None
            server.meter = None
            self._events.stops += 1
            log.info("%s stopped (%s)", server.name, reason)
            self._changes.notify()

    async def _watch_exit(self, server: ManagedServer, process: ModelProcess) -> None:
        code = await process.wait_exit()
        if server.process is not process or server.state != "ready":
            return  # an orderly stop, or a newer process: not a crash
        self._events.crashes += 1
        server.state = "stopped"
        server.last_error = f"{server.name}: model server exited unexpectedly (code {code})"
        server.measured_bytes = 0
        server.meter = None
        mark(process.spec.log_path, f"exited unexpectedly with code {code}")
        log.warning("%s crashed with exit code %s", server.name, code)
        await self._records.forget(server.profile_id)
        self._changes.notify()


def _consume_exception(task: asyncio.Task[Any]) -> None:
    """Start/stop errors are reported to the callers that joined; never 'never retrieved'."""
    if not task.cancelled():
        task.exception()
