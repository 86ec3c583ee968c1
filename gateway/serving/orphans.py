"""Orphan bookkeeping: the `running_instances` table, and killing what a dead gateway left.

Each server's pid and process start time are recorded while it runs. A gateway that starts
after a crash finds rows written by another gateway pid and kills those processes (only when
pid *and* start time still match, so a reused pid is never hit): no orphan keeps its port and
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.serving.process import ModelProcess, kill_recorded_process
from gateway.store import instances
from gateway.tables import RunningInstance

log = logging.getLogger("mlx_manager.servers")


class InstanceRecords:
    """Writes and reads `running_instances`; owns nothing else."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], stop_timeout: float) -> None:
        self._sessions = sessions
        self._stop_timeout = stop_timeout

    async def reconcile(self) -> int:
        """Kill servers recorded by a gateway that died (matched by pid *and* start time)."""
        async with self._sessions() as session:
            recorded = await instances.list_instances(session)
            rows = [row for row in recorded if row.gateway_pid != os.getpid()]
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
            gateway_pid=os.getpid(),
        )
        async with self._sessions() as session:
            await instances.record_instance(session, row)

    async def forget(self, profile_id: int) -> None:
        with contextlib.suppress(Exception):
            async with self._sessions() as session:
                await instances.forget_instance(session, profile_id)
