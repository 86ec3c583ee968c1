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
from sqlmodel import delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.serving.process import ModelProcess, kill_recorded_process
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
            rows = (await session.exec(select(RunningInstance))).all()
            killed = 0
            for row in rows:
                if row.gateway_pid == os.getpid():
                    continue
                if await asyncio.to_thread(
                    kill_recorded_process, row.pid, row.create_time, self._stop_timeout
                ):
                    killed += 1
                    log.warning("killed orphaned model server pid %s (port %s)", row.pid, row.port)
                await session.delete(row)
            await session.commit()
        return killed

    async def record(self, profile_id: int, process: ModelProcess) -> None:
        async with self._sessions() as session:
            await session.exec(
                delete(RunningInstance).where(RunningInstance.profile_id == profile_id)  # type: ignore[arg-type]
            )
            session.add(
                RunningInstance(
                    profile_id=profile_id,
                    pid=process.pid,
                    create_time=process.create_time,
                    port=process.spec.port,
                    gateway_pid=os.getpid(),
                )
            )
            await session.commit()

    async def forget(self, profile_id: int) -> None:
        with contextlib.suppress(Exception):
            async with self._sessions() as session:
                await session.exec(
                    delete(RunningInstance).where(RunningInstance.profile_id == profile_id)  # type: ignore[arg-type]
                )
                await session.commit()
