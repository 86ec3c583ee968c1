"""Upkeep of running servers: the idle reaper, health checks (with restarts), and measuring.

Background work that keeps the picture true without a request asking: idle servers are
stopped when their TTL runs out, a server failing its health checks is restarted, and each
server's memory and CPU are measured so the policy's memory figures track reality.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from gateway.serving import policy
from gateway.serving.events import ServerEvents
from gateway.serving.logfiles import rotate_if_large
from gateway.serving.registry import Registry
from gateway.serving.server import ManagedServer
from gateway.settings import Settings

log = logging.getLogger("mlx_manager.servers")


class Upkeep:
    """Owns the reaper and health loops; stops and restarts through the callables it is given."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        events: ServerEvents,
        http: httpx.AsyncClient,
        *,
        begin_stop: Callable[[ManagedServer, str], object],
        restart: Callable[[ManagedServer], Awaitable[None]],
        background: Callable[[Awaitable[Any]], None],
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._events = events
        self._http = http
        self._begin_stop = begin_stop
        self._restart = restart
        self._background = background
        self._loops: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._reaper_loop(), name="idle-reaper"),
            asyncio.create_task(self._health_loop(), name="health-checker"),
        ]

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)

    async def _reaper_loop(self) -> None:
        """Stop servers idle past their TTL, sleeping exactly until the next one is due."""
        while True:
            ttl = self._settings.idle_ttl
            now = time.monotonic()
            for name in policy.expired(self._registry.views(ttl), now):
                server = self._registry.resolve(name)
                if server is not None and server.state == "ready":
                    self._events.idle_stops += 1
                    self._begin_stop(server, "idle timeout")
            delay = policy.next_expiry(self._registry.views(ttl), time.monotonic())
            # A plain sleep, not the change notifier: that fires on every request's end, and
            # a release only ever moves expiries later.
            await asyncio.sleep(1.0 if delay is None else min(max(delay, 0.05), 1.0))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.health_check_interval)
            try:
                await self.check_health()
            except Exception:
                log.exception("health check round failed; trying again next interval")

    async def check_health(self) -> None:
        """Probe each ready server; restart one that failed `health_check_failures` in a row."""
        settings = self._settings
        for server in [s for s in self._registry if s.state == "ready"]:
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
                    settings.log_max_bytes,
                    settings.log_backups,
                )
            if healthy:
                server.health_failures = 0
                continue
            server.health_failures += 1
            if server.health_failures >= settings.health_check_failures and (
                server.state == "ready" and server.process is process
            ):
                log.warning(
                    "%s failed %d health checks in a row; restarting",
                    server.name,
                    server.health_failures,
                )
                self._events.health_restarts += 1
                server.restarts += 1
                self._background(self._restart_quietly(server))

    async def _restart_quietly(self, server: ManagedServer) -> None:
        try:
            await self._restart(server)
        except Exception as exc:
            log.warning("restart of %s failed: %s", server.name, exc)

    async def measure(self, server: ManagedServer) -> None:
        """RSS and CPU of the server's process tree (psutil, off the event loop)."""
        meter = server.meter
        if meter is None:
            return
        usage = await asyncio.to_thread(meter.measure)
        if usage is not None and server.meter is meter:
            server.measured_bytes = usage.rss_bytes
            server.cpu_percent = usage.cpu_percent

    async def measure_all(self) -> None:
        await asyncio.gather(*(self.measure(s) for s in self._registry))
