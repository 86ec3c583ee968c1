"""The effects layer: starts, stops and lends model servers as the scheduler decides.

`gateway.scheduler` only decides (who to evict, admit, or keep waiting); this module carries
decisions out. Each server has one owner: state changes happen in plain (non-async) methods,
which asyncio runs atomically, and every start or stop is one task that any number of callers
join. So fifty first requests launch one process, and no decision is made from a stale read.

The proxy's interface is `acquire(name)`: wait until that profile's server is ready (starting
it, or making room for it, as needed), count the request in flight, and hand back a `Lease`
whose `release()` marks it done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.errors import BadRequest, NotFound, ServiceUnavailable
from gateway.hub.cache import resolve_model_folder
from gateway.serving import policy as scheduler
from gateway.serving.launch import BackendInfo, BackendProbe, build_command
from gateway.serving.logfiles import log_path, mark, rotate_if_large, tail
from gateway.serving.memory import ProcessTreeMeter, cap_bytes, estimate_need_bytes
from gateway.serving.process import (
    LaunchSpec,
    ServerProcess,
    StartFailed,
    kill_recorded_process,
    pick_port,
    port_is_free,
)
from gateway.settings import Settings
from gateway.tables import RunningInstance, ServerProfile, launch_changed
from gateway.types import ALIVE, RUNNING, ServerState, iso_utc

log = logging.getLogger("mlx_manager.servers")
MAX_RETRY_AFTER = 120  # the OpenAI SDK will not honour a longer Retry-After


class ModelTooLarge(BadRequest):
    """Can never fit under the cap: failing at once beats a queue that can only time out."""

    code = "model_too_large"


class QueueTimeout(ServiceUnavailable):
    code = "queue_timeout"


class ProfileRemoved(NotFound):
    code = "model_not_found"


@dataclass(eq=False)
class ManagedServer:
    profile: ServerProfile
    state: ServerState = "stopped"
    process: ServerProcess | None = None
    port: int | None = None
    inflight: int = 0
    last_used: float = 0.0  # monotonic; end of the last request
    started_at: datetime | None = None
    last_used_at: datetime | None = None
    estimate_bytes: int = 0
    measured_bytes: int = 0
    cpu_percent: float | None = None
    last_error: str | None = None
    health_failures: int = 0
    health_latency_ms: float | None = None
    removed: bool = False
    task: asyncio.Task[None] | None = None  # the one start or stop under way
    meter: ProcessTreeMeter | None = None
    restarts: int = 0
    attempt: int = 0  # starts begun; a waiter remembers which one it joined

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def profile_id(self) -> int:
        assert self.profile.id is not None
        return self.profile.id

    @property
    def need_bytes(self) -> int:
        return max(self.estimate_bytes, self.measured_bytes)

    def view(self, default_ttl: float) -> scheduler.ServerView:
        ttl = self.profile.idle_ttl if self.profile.idle_ttl is not None else default_ttl
        return scheduler.ServerView(
            name=self.name,
            state=self.state,
            need_bytes=self.need_bytes,
            inflight=self.inflight,
            pinned=self.profile.pinned,
            last_used=self.last_used,
            idle_ttl=ttl,
            removed=self.removed,
            attempt=self.attempt,
            transition_done=self.task is not None and self.task.done(),
            last_error=self.last_error,
        )

    def snapshot(self) -> dict[str, Any]:
        proc = self.process
        return {
            "profile_id": self.profile_id,
            "name": self.name,
            "state": self.state,
            "pid": proc.pid if proc is not None and self.state in ALIVE else None,
            "port": self.port if self.state in ALIVE else None,
            "started_at": _iso(self.started_at),
            "last_used_at": _iso(self.last_used_at),
            "inflight": self.inflight,
            "memory_bytes": self.measured_bytes if self.state == "ready" else 0,
            "need_bytes": self.need_bytes,
            "cpu_percent": self.cpu_percent if self.state == "ready" else None,
            "pinned": self.profile.pinned,
            "health_latency_ms": self.health_latency_ms,
            "last_error": self.last_error,
        }


_iso = iso_utc


class Notifier:
    """Wakes every waiter when anything that could unblock them changes (a stop, a release)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)


class Lease:
    """One request in flight on one server; `release()` ends it (idempotent)."""

    __slots__ = ("_manager", "_released", "server")

    def __init__(self, manager: ServerManager, server: ManagedServer) -> None:
        self._manager = manager
        self.server = server
        self._released = False

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self.server)


@dataclass
class ServerEvents:
    """Counters the metrics endpoint reads; plain ints so the hot path stays cheap."""

    starts: int = 0
    start_failures: int = 0
    stops: int = 0
    evictions: int = 0
    crashes: int = 0
    idle_stops: int = 0
    health_restarts: int = 0
    waiting: int = 0


class ServerManager:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        total_memory: int | None = None,
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self._servers: dict[int, ManagedServer] = {}
        self._names: dict[str, ManagedServer] = {}
        self._changed = Notifier()
        self._probe = BackendProbe(settings)
        self._http = httpx.AsyncClient(timeout=5.0, trust_env=False)
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.cap_bytes = cap_bytes(settings, total_memory)
        self.events = ServerEvents()
        self._closing = False
        # Held by whoever writes profiles (the API, JIT), across check, commit and restart.
        self.profile_writes = asyncio.Lock()

    # ---- profiles ---------------------------------------------------------------------------

    def resolve(self, model: str) -> ManagedServer | None:
        return self._names.get(model)

    def servers(self) -> list[ManagedServer]:
        return sorted(self._servers.values(), key=lambda s: s.name)

    def get(self, profile_id: int) -> ManagedServer | None:
        return self._servers.get(profile_id)

    def names_in_use(self, exclude_id: int | None = None) -> set[str]:
        return {
            name
            for name, server in self._names.items()
            if exclude_id is None or server.profile_id != exclude_id
        }

    async def add_profile(self, profile: ServerProfile) -> ManagedServer:
        server = ManagedServer(profile=profile.model_copy())
        server.estimate_bytes = await self._estimate(server.profile)
        self._servers[server.profile_id] = server
        self._index()
        self._changed.notify()
        return server

    async def update_profile(self, profile: ServerProfile) -> None:
        """Swap in the new settings; a running server restarts only when a launch field
        changed (`LAUNCH_FIELDS`): a new alias or idle TTL is no reason to drop its requests."""
        assert profile.id is not None
        server = self._servers.get(profile.id)
        if server is None:
            await self.add_profile(profile)
            return
        was_running = server.state in RUNNING and launch_changed(server.profile, profile)
        if was_running:
            await self.stop(server, reason="profile changed")
        server.profile = profile.model_copy()
        server.estimate_bytes = await self._estimate(server.profile)
        if server.state not in RUNNING:
            server.measured_bytes = 0
        self._index()
        if was_running:
            self._spawn_background(self._start_quietly(server))

    async def remove_profile(self, profile_id: int) -> None:
        server = self._servers.get(profile_id)
        if server is None:
            return
        server.removed = True
        del self._servers[profile_id]
        self._index()
        await self.stop(server, reason="profile deleted")
        self._changed.notify()

    def _index(self) -> None:
        names: dict[str, ManagedServer] = {}
        for server in self._servers.values():
            names[server.name] = server
            for alias in server.profile.aliases:
                names.setdefault(alias, server)
        self._names = names

    async def _estimate(self, profile: ServerProfile) -> int:
        folder = None
        if profile.model_path and not profile.command:
            folder = await asyncio.to_thread(
                resolve_model_folder, profile.model_path, self.settings.hf_cache_path
            )
        elif profile.model_path and profile.command:
            folder = await asyncio.to_thread(_existing_folder, profile.model_path)
        return await asyncio.to_thread(estimate_need_bytes, profile.memory_gb, folder)

    async def backend_info(self) -> BackendInfo:
        return await self._probe.info()

    # ---- lifecycle of the manager -----------------------------------------------------------

    async def open(self) -> None:
        """Load profiles, kill orphans a dead gateway left behind, start loops and auto-starts."""
        await self.reconcile_orphans()
        async with self._sessions() as session:
            profiles = (await session.exec(select(ServerProfile))).all()
        for profile in profiles:
            await self.add_profile(profile)
        self._loops = [
            asyncio.create_task(self._reaper_loop(), name="idle-reaper"),
            asyncio.create_task(self._health_loop(), name="health-checker"),
        ]
        for server in self.servers():
            if server.profile.auto_start:
                self._spawn_background(self._start_quietly(server))

    async def close(self) -> None:
        """Stop every server (gateway shutdown): no child outlives the gateway."""
        self._closing = True
        for task in self._loops:
            task.cancel()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._loops, *self._background, return_exceptions=True)
        await asyncio.gather(
            *(self.stop(s, reason="gateway shutdown") for s in self._servers.values()),
            return_exceptions=True,
        )
        await self._http.aclose()

    async def reconcile_orphans(self) -> int:
        """Kill servers recorded by a gateway that died (matched by pid *and* start time)."""
        async with self._sessions() as session:
            rows = (await session.exec(select(RunningInstance))).all()
            killed = 0
            for row in rows:
                if row.gateway_pid == os.getpid():
                    continue
                if await asyncio.to_thread(
                    kill_recorded_process, row.pid, row.create_time, self.settings.stop_timeout
                ):
                    killed += 1
                    log.warning("killed orphaned model server pid %s (port %s)", row.pid, row.port)
                await session.delete(row)
            await session.commit()
        return killed

    # ---- the proxy's interface --------------------------------------------------------------

    async def acquire(self, server: ManagedServer) -> Lease:
        """Wait until `server` is ready (starting it or making room as needed), then lend it.

        A request counts as in flight only once granted here: a caller cancelled while waiting
        holds nothing.
        """
        await self._until_ready(server, time.monotonic() + self.settings.queue_timeout)
        # No await since the policy said Ready: the grant happens in the state it saw.
        server.inflight += 1
        return Lease(self, server)

    def _release(self, server: ManagedServer) -> None:
        server.inflight -= 1
        server.last_used = time.monotonic()
        server.last_used_at = datetime.now(UTC)
        self._changed.notify()

    async def ensure_ready(self, server: ManagedServer, within: float | None = None) -> None:
        """Until ready, waiting at most `within` seconds (default: the queue timeout)."""
        wait = self.settings.queue_timeout if within is None else within
        await self._until_ready(server, time.monotonic() + wait)

    async def _until_ready(self, server: ManagedServer, deadline: float) -> None:
        """Perform the policy's steps (`scheduler.next_step`) until it says Ready."""
        request = scheduler.Request(server.name, deadline)
        while True:
            step = scheduler.next_step(self._view_of(server), request, time.monotonic())
            if isinstance(step, scheduler.Ready):
                return
            if isinstance(step, scheduler.Join):
                assert server.task is not None
                request = replace(request, joined_attempt=step.attempt)
                # asyncio.wait neither raises the task's error nor cancels the task when this
                # caller is cancelled (or gives up): the start goes on for the others.
                await asyncio.wait({server.task}, timeout=max(deadline - time.monotonic(), 0))
            elif isinstance(step, scheduler.Start):
                self._begin_start(server)
            elif isinstance(step, scheduler.Evict):
                for name in step.victims:
                    victim = self._names[name]
                    log.info("evicting %s to make room for %s", name, server.name)
                    self.events.evictions += 1
                    self._begin_stop(victim, reason=f"evicted to make room for {server.name}")
            elif isinstance(step, scheduler.Wait):
                self.events.waiting += 1
                try:
                    await self._changed.wait(deadline - time.monotonic())
                finally:
                    self.events.waiting -= 1
            else:
                raise self._failure(step)

    def _failure(self, step: scheduler.Fail) -> Exception:
        if step.reason == "removed":
            return ProfileRemoved(step.message)
        if step.reason == "too_large":
            return ModelTooLarge(step.message, param="model")
        if step.reason == "queue_timeout":
            return QueueTimeout(step.message, headers={"Retry-After": str(self._retry_after())})
        return StartFailed(step.message)

    def _view_of(self, server: ManagedServer) -> scheduler.View:
        return scheduler.View(
            target=server.view(self.settings.idle_ttl),
            servers=tuple(self._views()),
            cap_bytes=self.cap_bytes,
        )

    def _retry_after(self) -> int:
        return max(1, min(MAX_RETRY_AFTER, math.ceil(self.settings.queue_timeout / 4)))

    def _views(self) -> list[scheduler.ServerView]:
        ttl = self.settings.idle_ttl
        return [s.view(ttl) for s in self._servers.values()]

    # ---- start and stop (each one task per server) ------------------------------------------

    def _begin_start(self, server: ManagedServer) -> asyncio.Task[None]:
        server.state = "starting"
        server.attempt += 1
        server.last_error = None
        # The previous process is gone: a stop racing this start must never signal its pid.
        server.process = None
        server.port = None
        server.task = asyncio.create_task(self._run_start(server), name=f"start {server.name}")
        server.task.add_done_callback(_consume_exception)
        return server.task

    def _begin_stop(self, server: ManagedServer, reason: str) -> asyncio.Task[None]:
        previous = server.task if server.state == "starting" else None
        server.state = "stopping"
        server.task = asyncio.create_task(
            self._run_stop(server, reason, previous), name=f"stop {server.name}"
        )
        server.task.add_done_callback(_consume_exception)
        return server.task

    async def start(self, server: ManagedServer) -> None:
        """Start (or join a start) and wait until ready; errors carry the log tail.

        An explicit start waits for the whole load (up to the start timeout), not just the
        queue timeout a request gets: whoever asked wants to know how it ended.
        """
        await self.ensure_ready(server, within=self.settings.start_timeout)

    async def stop(self, server: ManagedServer, reason: str = "requested") -> None:
        while server.state in ALIVE:
            if server.state == "stopping":
                assert server.task is not None
                await asyncio.wait({server.task})
                continue
            await asyncio.wait({self._begin_stop(server, reason)})

    async def restart(self, server: ManagedServer) -> None:
        await self.stop(server, reason="restart")
        await self.start(server)

    async def _run_start(self, server: ManagedServer) -> None:
        try:
            await self._start_process(server)
        except BaseException:
            if server.state == "starting" and server.task is asyncio.current_task():
                server.state = "failed"
                self._changed.notify()
            raise

    async def _start_process(self, server: ManagedServer) -> None:
        profile = server.profile
        path = log_path(self.settings.logs_dir, profile.name)
        process: ServerProcess | None = None
        try:
            await asyncio.to_thread(
                rotate_if_large, path, self.settings.log_max_bytes, self.settings.log_backups
            )
            spec = await self._launch_spec(server, path)
            process = ServerProcess(spec)
            server.process = process
            server.port = spec.port
            await process.spawn()
            await self._record_instance(server, process)
            seconds = await process.wait_ready(self.settings.start_timeout, self._http)
        except Exception as exc:
            message = exc.message if isinstance(exc, StartFailed) else f"{exc}"
            server.last_error = f"{profile.name}: {message}"
            self.events.start_failures += 1
            if process is not None and process.returncode is None:
                await process.stop(self.settings.stop_timeout)
            await self._forget_instance(server)
            if server.state == "starting":
                server.state = "failed"
            log.warning("start of %s failed: %s", profile.name, message.splitlines()[0])
            self._changed.notify()
            raise StartFailed(server.last_error) from exc
        with contextlib.suppress(OSError):
            mark(path, f"ready on port {spec.port} after {seconds:.1f} s")
        log.info("%s ready on port %s after %.1f s", profile.name, spec.port, seconds)
        self.events.starts += 1
        server.state = "ready"
        server.started_at = datetime.now(UTC)
        server.last_used = time.monotonic()
        server.health_failures = 0
        server.meter = ProcessTreeMeter(process.pid)
        self._spawn_background(self._watch_exit(server, process))
        self._changed.notify()

    async def _launch_spec(self, server: ManagedServer, path: Path) -> LaunchSpec:
        profile = server.profile
        folder = await asyncio.to_thread(
            resolve_model_folder, profile.model_path, self.settings.hf_cache_path
        )
        if folder is None and not profile.command:
            raise StartFailed(
                f"model {profile.model_path!r} is neither a local folder nor in the "
                "Hugging Face cache; download it first (POST /api/downloads)"
            )
        backend: BackendInfo | None = None if profile.command else await self._probe.info()
        cache_dir = self._prompt_cache_dir(server)
        await asyncio.to_thread(_reset_folder, cache_dir)
        # No await between choosing the port and recording it: two starts at once must not
        # pick the same one (the second would see the first's /health and think it ready).
        port = self._choose_port(profile)
        server.port = port
        argv = build_command(
            profile,
            port=port,
            model_folder=str(folder) if folder else profile.model_path,
            backend=backend,
            log_level="DEBUG" if self.settings.log_level == "debug" else "INFO",
            prompt_cache_dir=str(cache_dir),
        )
        env = {"PYTHONUNBUFFERED": "1", **profile.env}
        if self.settings.hf_cache_path:
            env.setdefault("HF_HUB_CACHE", str(self.settings.hf_cache_path))
        if self.settings.offline_mode:
            env.setdefault("HF_HUB_OFFLINE", "1")
        health = profile.health_path if profile.health_path.startswith("/") else "/health"
        return LaunchSpec(
            argv=argv,
            port=port,
            health_url=f"http://127.0.0.1:{port}{health}",
            log_path=path,
            env=env,
        )

    def _prompt_cache_dir(self, server: ManagedServer) -> Path:
        return self.settings.home / "prompt-cache" / log_path(Path(), server.name).stem

    def _choose_port(self, profile: ServerProfile) -> int:
        taken = {
            s.port
            for s in self._servers.values()
            if s.port is not None and s.state in ALIVE and s.profile.id != profile.id
        }
        if profile.port is not None:
            if profile.port in taken or not port_is_free(profile.port):
                raise StartFailed(f"port {profile.port} is already in use; free it or unset port")
            return profile.port
        fixed = {s.profile.port for s in self._servers.values() if s.profile.port is not None}
        return pick_port(self.settings.default_port_start, taken | fixed)

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
                await process.stop(self.settings.stop_timeout)
        finally:
            await self._forget_instance(server)
            await asyncio.to_thread(shutil.rmtree, self._prompt_cache_dir(server), True)
            server.state = "stopped"
            server.measured_bytes = 0
            server.cpu_percent = None
            server.meter = None
            self.events.stops += 1
            log.info("%s stopped (%s)", server.name, reason)
            self._changed.notify()

    async def _watch_exit(self, server: ManagedServer, process: ServerProcess) -> None:
        code = await process.wait_exit()
        if server.process is not process or server.state != "ready":
            return  # an orderly stop, or a newer process: not a crash
        self.events.crashes += 1
        server.state = "stopped"
        server.last_error = f"{server.name}: model server exited unexpectedly (code {code})"
        server.measured_bytes = 0
        server.meter = None
        mark(process.spec.log_path, f"exited unexpectedly with code {code}")
        log.warning("%s crashed with exit code %s", server.name, code)
        await self._forget_instance(server)
        self._changed.notify()

    async def _start_quietly(self, server: ManagedServer) -> None:
        try:
            await self.ensure_ready(server)
        except Exception as exc:
            log.warning("background start of %s failed: %s", server.name, exc)

    # ---- running_instances bookkeeping ------------------------------------------------------

    async def _record_instance(self, server: ManagedServer, process: ServerProcess) -> None:
        async with self._sessions() as session:
            await session.exec(
                delete(RunningInstance).where(RunningInstance.profile_id == server.profile_id)  # type: ignore[arg-type]
            )
            session.add(
                RunningInstance(
                    profile_id=server.profile_id,
                    pid=process.pid,
                    create_time=process.create_time,
                    port=process.spec.port,
                    gateway_pid=os.getpid(),
                )
            )
            await session.commit()

    async def _forget_instance(self, server: ManagedServer) -> None:
        with contextlib.suppress(Exception):
            async with self._sessions() as session:
                await session.exec(
                    delete(RunningInstance).where(RunningInstance.profile_id == server.profile_id)  # type: ignore[arg-type]
                )
                await session.commit()

    # ---- background loops -------------------------------------------------------------------

    async def _reaper_loop(self) -> None:
        """Stop servers idle past their TTL, sleeping exactly until the next one is due."""
        while True:
            now = time.monotonic()
            views = self._views()
            for name in scheduler.expired(views, now):
                server = self._names.get(name)
                if server is not None and server.state == "ready":
                    self.events.idle_stops += 1
                    self._begin_stop(server, reason="idle timeout")
            delay = scheduler.next_expiry(self._views(), time.monotonic())
            # A plain sleep, not the change notifier: that fires on every request's end, and
            # a release only ever moves expiries later.
            await asyncio.sleep(1.0 if delay is None else min(max(delay, 0.05), 1.0))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_check_interval)
            try:
                await self.check_health()
            except Exception:
                log.exception("health check round failed; trying again next interval")

    async def check_health(self) -> None:
        """Probe each ready server; restart one that failed `health_check_failures` in a row."""
        for server in [s for s in self._servers.values() if s.state == "ready"]:
            process = server.process
            if process is None:
                continue
            started = time.monotonic()
            try:
                response = await self._http.get(process.spec.health_url, timeout=5.0)
                healthy = response.status_code == 200
            except httpx.HTTPError:
                healthy = False
            server.health_latency_ms = round((time.monotonic() - started) * 1000, 1)
            await self.measure(server)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(
                    rotate_if_large,
                    process.spec.log_path,
                    self.settings.log_max_bytes,
                    self.settings.log_backups,
                )
            if healthy:
                server.health_failures = 0
                continue
            server.health_failures += 1
            if server.health_failures >= self.settings.health_check_failures and (
                server.state == "ready" and server.process is process
            ):
                log.warning(
                    "%s failed %d health checks in a row; restarting",
                    server.name,
                    server.health_failures,
                )
                self.events.health_restarts += 1
                server.restarts += 1
                self._spawn_background(self._restart_quietly(server))

    async def _restart_quietly(self, server: ManagedServer) -> None:
        try:
            await self.restart(server)
        except Exception as exc:
            log.warning("restart of %s failed: %s", server.name, exc)

    async def measure(self, server: ManagedServer) -> None:
        meter = server.meter
        if meter is None:
            return
        usage = await asyncio.to_thread(meter.measure)
        if usage is not None and server.meter is meter:
            server.measured_bytes = usage.rss_bytes
            server.cpu_percent = usage.cpu_percent

    async def measure_all(self) -> None:
        await asyncio.gather(*(self.measure(s) for s in self._servers.values()))

    def resident_bytes(self) -> int:
        return scheduler.resident_bytes(self._views())

    def log_tail(self, server: ManagedServer, lines: int) -> str:
        return tail(log_path(self.settings.logs_dir, server.name), lines)

    def log_file(self, server: ManagedServer) -> Path:
        return log_path(self.settings.logs_dir, server.name)

    def _spawn_background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _reset_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def _existing_folder(path: str) -> Path | None:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_dir() else None


def _consume_exception(task: asyncio.Task[Any]) -> None:
    """Start/stop errors are reported to the callers that joined; never 'never retrieved'."""
    if not task.cancelled():
        task.exception()
