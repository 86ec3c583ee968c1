"""`ServerManager`: the one object other layers use to get a ready model server.

It owns the serving parts and performs what the policy decides:
- `registry`: which servers exist, by profile id, name and alias;
- `policy.next_step`: the request decision tree (join, start, evict, wait, fail), pure;
- `lifecycle`: the one start or stop task per server, and the crash watcher;
- `leases`: requests in flight, granted only once a server is ready;
- `upkeep`: idle reaper, health checks, measuring;
- `orphans`: the running_instances records, and killing what a dead gateway left;
- `launch`: from a profile to a `LaunchSpec`; `process`: one child process.

The proxy's interface is `acquire(server)`: wait until that profile's server is ready
(starting it, or making room for it, as needed), count the request in flight, and hand back a
`Lease` whose `release()` marks it done.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway import store
from gateway.fleet.placement import runs_here
from gateway.hub.cache import resolve_model_folder
from gateway.serving import policy
from gateway.serving.errors import (
    MAX_RETRY_AFTER,
    ModelTooLarge,
    NotOnThisMachine,
    ProfileRemoved,
    QueueTimeout,
    StartFailed,
)
from gateway.serving.events import Notifier, ServerEvents
from gateway.serving.launch import BackendInfo, BackendProbe
from gateway.serving.leases import Lease, grant
from gateway.serving.lifecycle import Lifecycle
from gateway.serving.logfiles import log_path, tail
from gateway.serving.memory import cap_bytes, estimate_need_bytes
from gateway.serving.orphans import InstanceRecords
from gateway.serving.process import Spawn, spawn_process
from gateway.serving.registry import Registry
from gateway.serving.server import ManagedServer
from gateway.serving.upkeep import Upkeep
from gateway.settings import Settings
from gateway.tables import ServerProfile, launch_changed
from gateway.types import RUNNING

__all__ = [
    "MAX_RETRY_AFTER",
    "Lease",
    "ManagedServer",
    "ModelTooLarge",
    "ProfileRemoved",
    "QueueTimeout",
    "ServerEvents",
    "ServerManager",
    "StartFailed",
]

log = logging.getLogger("mlx_manager.servers")


class ServerManager:
    """The façade over every model server the gateway runs; one per gateway.

    Exists so the proxy and the admin routes have one door (acquire, start, stop, profiles)
    and never touch processes, tasks or the policy themselves. It owns the `ManagedServer`s
    (through its registry) and every task that changes them; callers hold only leases.
    `spawn` launches one process: the real `spawn_process` unless a test passes a fake.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        total_memory: int | None = None,
        spawn: Spawn = spawn_process,
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self._registry = Registry()
        self._changed = Notifier()
        self._profile_sync = asyncio.Lock()  # one reload from the database at a time
        self._probe = BackendProbe(settings)
        self._http = httpx.AsyncClient(timeout=5.0, trust_env=False)
        self._background: set[asyncio.Task[Any]] = set()
        self.cap_bytes = cap_bytes(settings, total_memory)
        self.events = ServerEvents()
        self._records = InstanceRecords(sessions, settings.stop_timeout)
        self._lifecycle = Lifecycle(
            settings,
            self._registry,
            self._records,
            self._changed,
            self.events,
            self._probe,
            self._http,
            spawn,
            self._spawn_background,
        )
        self._upkeep = Upkeep(
            settings,
            self._registry,
            self.events,
            self._http,
            begin_stop=self._lifecycle.begin_stop,
            restart=self.restart,
            background=self._spawn_background,
        )
        # Held by whoever writes profiles (the API, JIT), across check, commit and restart.
        self.profile_writes = asyncio.Lock()

    # ---- profiles ---------------------------------------------------------------------------

    def resolve(self, model: str) -> ManagedServer | None:
        return self._registry.resolve(model)

    def servers(self) -> list[ManagedServer]:
        return self._registry.sorted()

    def get(self, profile_id: int) -> ManagedServer | None:
        return self._registry.get(profile_id)

    def names_in_use(self, exclude_id: int | None = None) -> set[str]:
        return self._registry.names_in_use(exclude_id)

    async def add_profile(self, profile: ServerProfile) -> ManagedServer:
        server = ManagedServer(profile=profile.model_copy())
        server.estimate_bytes = await self._estimate(server.profile)
        self._registry.add(server)
        self._changed.notify()
        return server

    async def update_profile(self, profile: ServerProfile) -> None:
        """Swap in the new settings; a running server restarts only when a launch field
        (`gateway.tables.LAUNCH_FIELDS`) changed, so a new alias or TTL keeps it serving."""
        assert profile.id is not None
        server = self._registry.get(profile.id)
        if server is None:
            await self.add_profile(profile)
            return
        if not launch_changed(server.profile, profile):
            moved_here = not self.runs_here(server.profile) and self.runs_here(profile)
            server.profile = profile.model_copy()
            server.estimate_bytes = await self._estimate(server.profile)
            if moved_here:
                server.failed_at = None  # a failure from before is no reason to wait now
            self._registry.reindex()
            self._changed.notify()
            if server.state in RUNNING and not self.runs_here(profile):
                await self.stop(server, reason="no longer runs on this machine")
            return
        was_running = server.state in RUNNING
        if was_running:
            await self.stop(server, reason="profile changed")
        server.profile = profile.model_copy()
        server.failed_at = None  # the cause may be fixed: no back-off for the new settings
        server.estimate_bytes = await self._estimate(server.profile)
        server.measured_bytes = 0
        self._registry.reindex()
        if was_running and self.runs_here(profile):  # one moved off this machine stays stopped
            self._spawn_background(self._start_quietly(server))

    def runs_here(self, profile: ServerProfile) -> bool:
        """Whether `profile` may run on this machine (`nodes` null, or naming `local` or `*`
        while MLX_MANAGER_LOCAL_NODE is on): the others only run on nodes."""
        return runs_here(profile.nodes, self.settings.local_node)

    async def reload_profile(self, profile_id: int) -> None:
        """Take a profile as the database has it now: another replica made, changed or
        deleted it (its notice said so). Changes apply as if made here: a running server
        restarts only for a launch field, a deleted profile's server stops."""
        async with self._profile_sync:
            async with self._sessions() as session:
                profile = await store.profiles.get_profile(session, profile_id)
            await self._take(profile_id, profile)

    def profile_changed_elsewhere(self, profile_id: int | None = None) -> None:
        """A notice from another replica (None: maybe several were missed): reload in the
        background, never blocking the listener that heard it."""
        work = self.sync_profiles() if profile_id is None else self.reload_profile(profile_id)
        self._spawn_background(work)

    async def sync_profiles(self) -> None:
        """Take every profile as the database has it: after notices may have been missed (the
        listener reconnected), so this replica ends with exactly the shared set."""
        async with self._profile_sync:
            async with self._sessions() as session:
                profiles = {p.id: p for p in await store.profiles.list_profiles(session)}
            known = {server.profile_id for server in self.servers()}
            for profile_id in known | set(profiles):
                if profile_id is not None:
                    await self._take(profile_id, profiles.get(profile_id))

    async def _take(self, profile_id: int, profile: ServerProfile | None) -> None:
        current = self.get(profile_id)
        if profile is None:
            if current is not None:
                await self.remove_profile(profile_id)
        elif current is None:
            await self.add_profile(profile)
        elif current.profile.updated_at != profile.updated_at or launch_changed(
            current.profile, profile
        ):
            await self.update_profile(profile)

    async def remove_profile(self, profile_id: int) -> None:
        server = self._registry.remove(profile_id)
        if server is None:
            return
        server.removed = True
        await self.stop(server, reason="profile deleted")
        self._changed.notify()

    async def _estimate(self, profile: ServerProfile) -> int:
        """The memory a profile's server will need before it runs (memory.estimate_need_bytes)."""
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
            profiles = await store.profiles.list_profiles(session)
        for profile in profiles:
            await self.add_profile(profile)
        self._upkeep.start()
        for server in self.servers():
            if server.profile.auto_start and self.runs_here(server.profile):
                self._spawn_background(self._start_quietly(server))

    async def close(self) -> None:
        """Stop every server (gateway shutdown): no child outlives the gateway."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(self._upkeep.close(), *self._background, return_exceptions=True)
        await asyncio.gather(
            *(self.stop(s, reason="gateway shutdown") for s in self._registry),
            return_exceptions=True,
        )
        await self._http.aclose()

    async def reconcile_orphans(self) -> int:
        """Kill servers recorded by a gateway that died (matched by pid *and* start time)."""
        return await self._records.reconcile()

    # ---- the proxy's interface --------------------------------------------------------------

    async def acquire(self, server: ManagedServer) -> Lease:
        """Wait until `server` is ready (starting it or making room as needed), then lend it.

        A request counts as in flight only once granted here: a caller cancelled while waiting
        holds nothing.
        """
        await self._until_ready(server, self._request(server, self.settings.queue_timeout))
        # No await since the policy said Ready: the grant happens in the state it saw.
        return grant(server, self._changed)

    async def ensure_ready(
        self, server: ManagedServer, within: float | None = None, *, forced: bool = False
    ) -> None:
        """Until ready, waiting at most `within` seconds (default: the queue timeout).

        `forced` starts even during a failed start's back-off (an explicit start).
        """
        wait = self.settings.queue_timeout if within is None else within
        await self._until_ready(server, self._request(server, wait, forced=forced))

    def _request(
        self, server: ManagedServer, within: float, *, forced: bool = False
    ) -> policy.Request:
        return policy.Request(server.name, time.monotonic() + within, forced=forced)

    async def _until_ready(self, server: ManagedServer, request: policy.Request) -> None:
        """Perform the policy's steps (`policy.next_step`) until it says Ready."""
        deadline = request.deadline
        while True:
            step = policy.next_step(self._view_of(server), request, time.monotonic())
            if isinstance(step, policy.Ready):
                return
            if isinstance(step, policy.Join):
                assert server.task is not None
                request = replace(request, joined_attempt=step.attempt)
                # asyncio.wait neither raises the task's error nor cancels the task when this
                # caller is cancelled (or gives up): the start goes on for the others.
                await asyncio.wait({server.task}, timeout=max(deadline - time.monotonic(), 0))
            elif isinstance(step, policy.Start):
                if not self.runs_here(server.profile):  # moved to nodes while this waited
                    raise NotOnThisMachine(
                        f"'{server.name}' no longer runs on this machine (its nodes are "
                        f"{', '.join(server.profile.nodes or [])}); retry to reach them",
                        headers={"Retry-After": "1"},
                    )
                self._lifecycle.begin_start(server)
            elif isinstance(step, policy.Evict):
                for name in step.victims:
                    victim = self._registry.resolve(name)
                    assert victim is not None
                    log.info("evicting %s to make room for %s", name, server.name)
                    self.events.evictions += 1
                    self._lifecycle.begin_stop(
                        victim, reason=f"evicted to make room for {server.name}"
                    )
            elif isinstance(step, policy.Wait):
                self.events.waiting += 1
                try:
                    await self._changed.wait(deadline - time.monotonic())
                finally:
                    self.events.waiting -= 1
            else:
                raise self._failure(server, step)

    def _failure(self, server: ManagedServer, step: policy.Fail) -> Exception:
        if step.reason == "removed":
            return ProfileRemoved(step.message)
        if step.reason == "too_large":
            return ModelTooLarge(step.message, param="model")
        if step.reason == "queue_timeout":
            return QueueTimeout(step.message, headers={"Retry-After": str(self._retry_after())})
        if step.retry_in is not None:
            return StartFailed(
                f"model {server.name!r} failed to start; it will be tried again in "
                f"{math.ceil(step.retry_in)} s (MLX_MANAGER_START_FAILURE_BACKOFF), or at once "
                f"with POST /api/servers/{server.profile_id}/start. {step.message}"
            )
        return StartFailed(step.message)

    def _view_of(self, server: ManagedServer) -> policy.View:
        ttl = self.settings.idle_ttl
        return policy.View(
            target=server.view(ttl),
            servers=tuple(self._registry.views(ttl)),
            cap_bytes=self.cap_bytes,
            start_failure_backoff=self.settings.start_failure_backoff,
        )

    def _retry_after(self) -> int:
        return max(1, min(MAX_RETRY_AFTER, math.ceil(self.settings.queue_timeout / 4)))

    # ---- explicit start and stop ------------------------------------------------------------

    async def start(self, server: ManagedServer) -> None:
        """Start (or join a start) and wait until ready; errors carry the log tail.

        An explicit start waits for the whole load (up to the start timeout), not just the
        queue timeout a request gets: whoever asked wants to know how it ended. It is forced:
        a failed start's back-off does not hold it back.
        """
        await self.ensure_ready(server, within=self.settings.start_timeout, forced=True)

    async def stop(self, server: ManagedServer, reason: str = "requested") -> None:
        await self._lifecycle.stop(server, reason)

    async def restart(self, server: ManagedServer) -> None:
        await self.stop(server, reason="restart")
        await self.start(server)

    async def _start_quietly(self, server: ManagedServer) -> None:
        try:
            await self.ensure_ready(server)
        except Exception as exc:
            log.warning("background start of %s failed: %s", server.name, exc)

    # ---- upkeep, memory, logs ---------------------------------------------------------------

    async def check_health(self) -> None:
        await self._upkeep.check_health()

    async def measure(self, server: ManagedServer) -> None:
        await self._upkeep.measure(server)

    async def measure_all(self) -> None:
        await self._upkeep.measure_all()

    def resident_bytes(self) -> int:
        return policy.resident_bytes(self._registry.views(self.settings.idle_ttl))

    def log_tail(self, server: ManagedServer, lines: int) -> str:
        return tail(self.log_file(server), lines)

    def log_file(self, server: ManagedServer) -> Path:
        return log_path(self.settings.logs_dir, server.name)

    def _spawn_background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _existing_folder(path: str) -> Path | None:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_dir() else None
