"""The nodes as this replica knows them: the `nodes` table (every replica's heartbeats), cached
and re-read every heartbeat interval, plus what this replica saw itself.

The request path reads only this cache (no database). Local observations act at once on this
replica: a refused connection takes a node out of rotation until a heartbeat newer than the
refusal; a request sent to a node counts there as in flight (and the profile as starting there)
until the node's own report catches up, so a burst between two heartbeats does not load the
same model on several nodes.

The gateway's own machine is the node `local` (unless MLX_MANAGER_LOCAL_NODE is off): its
state is read live from the server manager each time, never from the table, and is always up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway import store
from gateway.fleet.placement import (
    LOCAL_NODE,
    NodeView,
    ServerReport,
    Strategy,
    awaiting,
    place,
)
from gateway.fleet.placement import allowed as is_allowed
from gateway.tables import Node
from gateway.types import iso_utc, utcnow

log = logging.getLogger("mlx_manager.fleet")

# Set by a node on its 404 for a model it was not given (yet): the gateway then waits for that
# node's next heartbeat, whose answer brings it the profile, instead of relaying the 404.
UNASSIGNED_HEADER = "x-mlx-manager-unassigned"


@dataclass
class KnownNode:
    name: str
    url: str
    last_seen: datetime
    status: dict[str, Any] = field(default_factory=dict)


class FleetRegistry:
    """Every node this replica may route to; one per gateway."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        timeout: float,
        refresh_interval: float,
        strategy: Strategy,
        local: Callable[[Mapping[str, int]], dict[str, Any]] | None = None,
    ) -> None:
        """`local` reports the gateway's own machine (`fleet.local.machine_status`) given the
        requests on it per profile (`sending`); None leaves it out of placement."""
        self._sessions = sessions
        self._local = local
        self.timeout = timeout
        self.refresh_interval = refresh_interval
        self.strategy: Strategy = strategy
        self._nodes: dict[str, KnownNode] = {}
        self._refused: dict[str, datetime] = {}
        # (node, profile) -> requests this replica has in flight there, and when it last sent
        # one there (the profile counts as starting there until the node reports it).
        self._inflight: dict[tuple[str, str], int] = {}
        self._sent: dict[tuple[str, str], datetime] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._problem: str | None = None

    # ---- keeping the cache ------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        """Re-read the nodes table. While the database is out of reach this keeps the last
        view (plus the heartbeats this replica hears) and says so once."""
        started = utcnow()
        try:
            async with self._sessions() as session:
                rows = await store.nodes.list_nodes(session)
        except Exception as exc:
            self.database_problem(f"{type(exc).__name__}: {exc}")
            return
        self.database_problem(None)
        for row in rows:
            self._learn(row.name, row.url, row.last_seen, row.status)
        listed = {row.name for row in rows}
        # Deleted on some replica (DELETE /api/nodes/{name}): forgotten here once it has also
        # been silent for the node timeout. A node heard lately is kept: the heartbeat that
        # created its row may still be on its way to the database (heard, then written), and
        # a node deleted while running writes its row again anyway.
        recent = started - timedelta(seconds=self.timeout)
        for name, node in list(self._nodes.items()):
            if name not in listed and node.last_seen < recent:
                self.forget(name)

    def database_problem(self, problem: str | None) -> None:
        """Log when the nodes table stops (or starts again) being reachable, once each."""
        if problem is not None and self._problem is None:
            log.warning("the nodes table is out of reach (%s); routing on what is known", problem)
        elif problem is None and self._problem is not None:
            log.info("the nodes table is reachable again")
        self._problem = problem

    def forget(self, name: str) -> None:
        """Drop a node from this replica's view (its row was deleted); a heartbeat re-adds it."""
        self._nodes.pop(name, None)
        self._refused.pop(name, None)

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_interval)

    def heard(self, row: Node) -> None:
        """A heartbeat this replica received: counted at once, before (and whether or not)
        the database takes it, so nodes stay in rotation through a database outage."""
        self._learn(row.name, row.url, row.last_seen, row.status)

    def _learn(self, name: str, url: str, seen: datetime, status: dict[str, Any]) -> None:
        if name.lower() == LOCAL_NODE:  # a row from before the name was reserved
            return
        known = self._nodes.get(name)
        if known is not None and known.last_seen >= seen:
            return
        self._nodes[name] = KnownNode(name, url, seen, status)
        reported = {
            s.get("profile")
            for s in status.get("servers", [])
            if isinstance(s, dict) and s.get("state") != "stopped"
        }
        for key in [k for k in self._sent if k[0] == name and k[1] in reported]:
            del self._sent[key]
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, within: float) -> None:
        """Until the next heartbeat is learnt (or `within` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(within, 0))

    # ---- local observations -----------------------------------------------------------------

    def refused(self, name: str, reason: str) -> None:
        """`name` could not be reached (refused, or silent past the node timeout): out of
        rotation on this replica at once, until a heartbeat newer than this."""
        self._refused[name] = utcnow()
        for key in [k for k in self._sent if k[0] == name]:
            del self._sent[key]
        log.warning("node %s is out of rotation until it reports again: %s", name, reason)

    def lacks(self, name: str, profile: str) -> None:
        """`name` answered that it has no `profile` (it left, or just came, since its last
        report): forget that report, so placement waits for the heartbeat that brings it."""
        self._sent.pop((name, profile), None)
        known = self._nodes.get(name)
        if known is None:
            return
        servers = known.status.get("servers", [])
        kept = [s for s in servers if not (isinstance(s, dict) and s.get("profile") == profile)]
        known.status = {**known.status, "servers": kept}

    @contextlib.contextmanager
    def sending(self, node: str, profile: str) -> Iterator[None]:
        key = (node, profile)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        if node != LOCAL_NODE:  # the local state is live: it shows the start at once
            self._sent[key] = utcnow()
        try:
            yield
        finally:
            self._inflight[key] -= 1
            if not self._inflight[key]:
                del self._inflight[key]

    # ---- reading ----------------------------------------------------------------------------

    def get(self, name: str) -> KnownNode | None:
        if name == LOCAL_NODE:
            return self._local_node()
        return self._nodes.get(name)

    def _local_node(self) -> KnownNode | None:
        if self._local is None:
            return None
        active = {p: n for (node, p), n in self._inflight.items() if node == LOCAL_NODE}
        return KnownNode(LOCAL_NODE, "", utcnow(), self._local(active))

    def _all(self, with_local: bool = True) -> list[KnownNode]:
        """The local machine (if it takes part, and `with_local`: reading its state costs a
        walk of its servers) first, then the nodes by name."""
        local = self._local_node() if with_local else None
        others = sorted(self._nodes.values(), key=lambda n: n.name)
        return [local, *others] if local is not None else others

    def is_up(self, node: KnownNode, now: datetime | None = None) -> bool:
        now = now or utcnow()
        if now - node.last_seen > timedelta(seconds=self.timeout):
            return False
        refused = self._refused.get(node.name)
        return refused is None or node.last_seen > refused

    def views(self) -> list[NodeView]:
        """Every node as placement sees it, this machine included."""
        now = utcnow()
        return [self._view(node, now) for node in self._all()]

    def _view(self, node: KnownNode, now: datetime) -> NodeView:
        memory = node.status.get("memory") or {}
        reports = {}
        for raw in node.status.get("servers", []):
            report = _report(raw)
            if report is not None:
                reports[report.profile] = report
        for (name, profile), count in self._inflight.items():
            if name == node.name != LOCAL_NODE:  # the local report counts them already
                mine = reports.get(profile, ServerReport(profile, "starting"))
                reports[profile] = replace(mine, in_flight=max(mine.in_flight, count))
        expired = now - timedelta(seconds=self.timeout)
        for (name, profile), sent in list(self._sent.items()):
            if sent < expired:  # the node never reported it: stop assuming
                del self._sent[(name, profile)]
            elif name == node.name:
                known = reports.get(profile, ServerReport(profile, "stopped"))
                if known.state == "stopped":  # sent there: it is starting it
                    reports[profile] = replace(known, state="starting")
        return NodeView(
            name=node.name,
            up=self.is_up(node, now),
            cap_bytes=_int(memory.get("cap_bytes")),
            free_bytes=_int(memory.get("free_bytes")),
            servers=tuple(reports.values()),
        )

    async def place(
        self,
        profile: str,
        allowed: list[str],
        need_bytes: int,
        exclude: frozenset[str],
        within: float,
    ) -> KnownNode | None:
        """The node for a request (`placement.place`); when only nodes that have not heard of
        the profile yet (just made or changed) could take it, wait up to `within` seconds for
        their next heartbeat, which brings it to them."""
        deadline = time.monotonic() + within
        allowed_here = is_allowed(LOCAL_NODE, allowed)
        while True:
            now = utcnow()
            nodes = {node.name: node for node in self._all(with_local=allowed_here)}
            views = [self._view(node, now) for node in nodes.values()]
            name = place(views, profile, allowed, need_bytes, self.strategy, exclude)
            if name is not None:
                return nodes[name]  # this machine's state read once, not again for the answer
            left = deadline - time.monotonic()
            if left <= 0 or not awaiting(views, profile, allowed, exclude):
                return None
            await self.wait_changed(left)

    def servers_of(self, profile: str) -> list[tuple[str, dict[str, Any]]]:
        """(node, its report) for each up remote node running `profile` (for /api/servers,
        which shows the local machine's own server in full)."""
        now = utcnow()
        found = []
        for node in sorted(self._nodes.values(), key=lambda n: n.name):
            if not self.is_up(node, now):
                continue
            for raw in node.status.get("servers", []):
                named = isinstance(raw, dict) and raw.get("profile") == profile
                if named and raw.get("state") != "stopped":
                    found.append((node.name, raw))
        return found

    def to_json(self) -> list[dict[str, Any]]:
        """The public JSON of `GET /api/nodes`."""
        now = utcnow()
        return [
            {
                "name": node.name,
                "local": node.name == LOCAL_NODE,
                "url": node.url or None,
                "status": "up" if self.is_up(node, now) else "down",
                "last_seen": iso_utc(node.last_seen),
                "memory": node.status.get("memory"),
                "servers": node.status.get("servers", []),
                "in_flight": node.status.get("in_flight", 0),
                "queued": node.status.get("queued", 0),
            }
            for node in self._all()
        ]


def _report(raw: object) -> ServerReport | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("profile"), str):
        return None
    return ServerReport(
        profile=raw["profile"],
        state=str(raw.get("state", "stopped")),
        in_flight=_int(raw.get("in_flight")),
        queued=_int(raw.get("queued")),
        memory_bytes=_int(raw.get("memory_bytes")),
        pinned=bool(raw.get("pinned", False)),
        need_bytes=_int(raw.get("need_bytes")),
    )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
