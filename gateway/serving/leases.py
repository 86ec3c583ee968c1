"""Leases: one request in flight on one server, from the grant to its last byte.

The in-flight count is what protects a server from eviction and the idle reaper, so it moves
only here: `grant` (called with no await after the policy said Ready) and `Lease.release`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from gateway.serving.events import Notifier
from gateway.serving.server import ManagedServer


class Lease:
    """One request in flight on one server; `release()` ends it (idempotent).

    Held by the proxy for the whole response, streams included: idle TTL counts from the
    release, and a release wakes requests waiting for memory.
    """

    __slots__ = ("_changes", "_released", "server")

    def __init__(self, server: ManagedServer, changes: Notifier) -> None:
        self.server = server
        self._changes = changes
        self._released = False

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        server = self.server
        server.inflight -= 1
        server.last_used = time.monotonic()
        server.last_used_at = datetime.now(UTC)
        self._changes.notify()


def grant(server: ManagedServer, changes: Notifier) -> Lease:
    """Count a request in flight; call it with no await since the server was seen ready."""
    server.inflight += 1
    return Lease(server, changes)
