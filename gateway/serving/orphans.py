"""Orphan bookkeeping: the `running_instances` table, and killing what a dead gateway left.

Each server's pid and process start time are recorded while it runs, with the machine and the
gateway process that started it. A gateway that starts after a crash finds rows of its machine
whose gateway is gone and kills those processes (only when pid *and* start time still match, so
a reused pid is never hit): no orphan keeps its port and memory. Replicas sharing one database
keep each other's rows: a live gateway, or one on another machine, is never reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass

import psutil
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.serving.process import ModelProcess, kill_recorded_process, recorded_process
from gateway.store import instances
from gateway.tables import RunningInstance

log = logging.getLogger("mlx_manager.servers")


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """This gateway process, as other gateways sharing the database see it."""

    host: str
    pid: int
    create_time: float

    @classmethod
    def current(cls) -> GatewayIdentity:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    def owns(self, row: RunningInstance) -> bool:
        return row.host == self.host and row.gateway_pid == self.pid

    def may_reap(self, row: RunningInstance) -> bool:
        """Whether `row` is an orphan this gateway must clean up: recorded on this machine
        (or before rows said where) by a gateway process that is gone. Another replica's
        rows, alive or on another machine, are never touched."""
        if row.host not in ("", self.host) or self.owns(row):
            return False
        if not row.gateway_create_time:
            return True  # recorded before gateways said when they started: treat as gone
        return recorded_process(row.gateway_pid, row.gateway_create_time) is None


class InstanceRecords:
    """Writes and reads `running_instances`; owns nothing else."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        stop_timeout: float,
        identity: GatewayIdentity | None = None,
    ) -> None:
        self._sessions = sessions
        self._stop_timeout = stop_timeout
        self.identity = identity or GatewayIdentity.current()

    async def reconcile(self) -> int:
        """Kill servers recorded by a gateway of this machine that died (each server matched
        by pid *and* start time, so a reused pid is never hit)."""
        async with self._sessions() as session:
            recorded = await instances.list_instances(session)
            rows = [row for row in recorded if self.identity.may_reap(row)]
            killed = 0
            for row in rows:
                if await asyncio.to_thread(
                    kill_recorded_process, row.pid, row.create_time, self._stop_timeout
                ):
                    killed += 1
                    log.warning("killed orphaned model server pid %s (port %s)", row.pid, row.port)
            await instances.delete_instances(session, rows)
        return killed

    async def record(self, profile_id: int, process: ModelProcess) -> None:
        row = RunningInstance(
            profile_id=profile_id,
            pid=process.pid,
            create_time=process.create_time,
            port=process.spec.port,
            gateway_pid=self.identity.pid,
            host=self.identity.host,
            gateway_create_time=self.identity.create_time,
        )
        async with self._sessions() as session:
            await instances.record_instance(session, row)

    async def forget(self, profile_id: int) -> None:
        with contextlib.suppress(Exception):
            async with self._sessions() as session:
                await instances.forget_instance(
                    session, profile_id, self.identity.host, self.identity.pid
                )
