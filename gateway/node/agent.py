"""The node's side of the protocol: heartbeats to the gateway, and reconciling the profiles the
gateway answers with.

Pull-based: the node calls the gateway every MLX_MANAGER_HEARTBEAT_INTERVAL seconds with its
state (memory, servers, requests in flight and queued); the gateway answers with every profile
this node may run. The node adds or updates those in its own registry (and its local SQLite, so
they survive a restart) and stops and drops any other, so a node cut off from the gateway keeps
serving what it had and, once it is heard again, stops what it no longer owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections import Counter
from typing import Any

import aiohttp

from gateway import store
from gateway.fleet.local import machine_status
from gateway.runtime import Gateway
from gateway.tables import ServerProfile

log = logging.getLogger("mlx_manager.node")

# Fields the gateway's copy may differ in without the profile having changed.
_VOLATILE = frozenset({"created_at", "updated_at"})


class NodeAgent:
    """One node: its gateway core (the serving layer), its heartbeat loop, its request counts."""

    def __init__(self, gateway: Gateway) -> None:
        settings = gateway.settings
        assert settings.gateway_url is not None
        assert settings.node_token is not None
        self.gateway = gateway
        self.name = settings.node_name or socket.gethostname()
        self.url = settings.node_advertise_url or _default_url(settings.host, settings.port)
        self._endpoint = settings.gateway_url.rstrip("/") + "/api/nodes/heartbeat"
        self._token = settings.node_token
        # Requests on this node per profile, from arrival to the last byte (in flight + queued).
        self.active: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._starts: set[asyncio.Task[None]] = set()
        self._problem: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat_forever())

    async def close(self) -> None:
        for task in [self._task, *self._starts]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def status(self) -> dict[str, Any]:
        """The heartbeat's body (also GET /node/status)."""
        return machine_status(self.gateway.servers, self.name, self.url, self.active)

    async def _beat_forever(self) -> None:
        interval = self.gateway.settings.heartbeat_interval
        while True:
            try:
                await self.beat()
            except Exception:  # a bug here must not stop the heartbeats for good
                log.exception("heartbeat failed")
            await asyncio.sleep(interval)

    async def beat(self) -> None:
        """One heartbeat; on an answer, reconcile the profiles. Problems are logged once each
        (a gateway down for an hour logs one line, and one when it is back)."""
        timeout = aiohttp.ClientTimeout(total=self.gateway.settings.node_timeout)
        headers = {"authorization": f"Bearer {self._token}", "content-type": "application/json"}
        body = json.dumps(self.status())
        try:
            async with self.gateway.http.post(
                self._endpoint, data=body, headers=headers, timeout=timeout
            ) as response:
                data = await response.read()
                if response.status != 200:
                    text = data[:500].decode(errors="replace")
                    self._report(f"the gateway refused the heartbeat ({response.status}): {text}")
                    return
                profiles = json.loads(data)["profiles"]
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            self._report(
                f"cannot reach the gateway at {self._endpoint}: {type(exc).__name__}: {exc}"
            )
            return
        if self._problem is not None:
            log.info("heartbeats reach the gateway again")
            self._problem = None
        await self.reconcile(profiles)

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            log.warning("%s", problem)
        self._problem = problem

    async def reconcile(self, profiles: list[dict[str, Any]]) -> None:
        """Make this node's profiles exactly `profiles`: add, update, stop and drop."""
        wanted = {p.id: p for p in map(_profile, profiles) if p.id is not None}
        manager = self.gateway.servers
        async with manager.profile_writes:
            for server in manager.servers():
                if server.profile_id not in wanted:
                    log.info("%s no longer runs on this node: stopping it", server.name)
                    await manager.remove_profile(server.profile_id)
                    async with self.gateway.sessions() as session:
                        await store.profiles.delete_profile(session, server.profile_id)
            for profile_id, profile in wanted.items():
                current = manager.get(profile_id)
                if current is not None and _same(current.profile, profile):
                    continue
                log.info("profile %s %s", profile.name, "added" if current is None else "updated")
                async with self.gateway.sessions() as session:
                    await store.nodes.keep_profile(session, profile)
                await manager.update_profile(profile)
                if profile.auto_start:
                    self._auto_start(profile_id)

    def _auto_start(self, profile_id: int) -> None:
        """Start an `auto_start` profile given to this node (as a gateway does at its start)."""
        server = self.gateway.servers.get(profile_id)
        if server is None or server.state != "stopped":
            return

        async def start() -> None:
            try:
                await self.gateway.servers.ensure_ready(server)
            except Exception as exc:
                log.warning("auto start of %s failed: %s", server.name, exc)

        task = asyncio.create_task(start())
        self._starts.add(task)
        task.add_done_callback(self._starts.discard)


def _profile(raw: dict[str, Any]) -> ServerProfile:
    fields = {
        key: value
        for key, value in raw.items()
        if key in ServerProfile.model_fields and key not in _VOLATILE
    }
    fields["nodes"] = None  # on the node, it runs here
    return ServerProfile(**fields)


def _same(a: ServerProfile, b: ServerProfile) -> bool:
    return a.model_dump(exclude=set(_VOLATILE)) == b.model_dump(exclude=set(_VOLATILE))


def _default_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
