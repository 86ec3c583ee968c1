"""`ManagedServer`: one profile's model server as the gateway knows it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.serving.memory import ProcessTreeMeter
from gateway.serving.policy import ServerView
from gateway.serving.process import ModelProcess
from gateway.tables import ServerProfile
from gateway.types import ALIVE, ServerState, iso_utc


@dataclass(eq=False)
class ManagedServer:
    """The state of one profile's server: what the policy reads and the API shows.

    Exists so that every fact about a server (state, port, requests in flight, memory, last
    error) has one home, owned by the `ServerManager` that made it: only the manager's parts
    change it (the start/stop tasks in `lifecycle`, leases in `leases`, measuring in `upkeep`),
    always from plain code on the event loop, so no lock is needed. Everyone else reads it,
    and the API reads `to_json()`. `process` is the one `ModelProcess` it runs, or None;
    `task` is the one start or stop under way, which any number of callers join.
    """

    profile: ServerProfile
    state: ServerState = "stopped"
    process: ModelProcess | None = None
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
    failed_at: float | None = None  # monotonic; when the latest start failed (for the back-off)

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

    def view(self, default_ttl: float) -> ServerView:
        """The snapshot the policy decides from."""
        ttl = self.profile.idle_ttl if self.profile.idle_ttl is not None else default_ttl
        return ServerView(
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
            failed_at=self.failed_at,
        )

    def to_json(self) -> dict[str, Any]:
        """The public JSON of `GET /api/servers` (field names are part of the contract)."""
        proc = self.process
        return {
            "profile_id": self.profile_id,
            "name": self.name,
            "state": self.state,
            "pid": proc.pid if proc is not None and self.state in ALIVE else None,
            "port": self.port if self.state in ALIVE else None,
            "started_at": iso_utc(self.started_at),
            "last_used_at": iso_utc(self.last_used_at),
            "inflight": self.inflight,
            "memory_bytes": self.measured_bytes if self.state == "ready" else 0,
            "need_bytes": self.need_bytes,
            "cpu_percent": self.cpu_percent if self.state == "ready" else None,
            "pinned": self.profile.pinned,
            "health_latency_ms": self.health_latency_ms,
            "last_error": self.last_error,
        }
