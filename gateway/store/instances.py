"""Running-instance rows (`running_instances`): the model servers a gateway launched, with pid
and process start time, so the next gateway (or the CLI) can find them after a crash."""

from __future__ import annotations

from sqlmodel import delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.tables import RunningInstance, ServerProfile


async def list_instances(session: AsyncSession) -> list[RunningInstance]:
    return list((await session.exec(select(RunningInstance))).all())


async def instances_with_profiles(
    session: AsyncSession,
) -> list[tuple[RunningInstance, ServerProfile]]:
    """Each recorded server with the profile it runs (the CLI asks what uses a model)."""
    query = select(RunningInstance, ServerProfile).join(
        ServerProfile,
        RunningInstance.profile_id == ServerProfile.id,  # type: ignore[arg-type]
    )
    return [(instance, profile) for instance, profile in (await session.exec(query)).all()]


async def record_instance(session: AsyncSession, instance: RunningInstance) -> None:
    """One row per profile and gateway: a new process replaces what this gateway recorded for
    the profile, never another replica's row for it."""
    await _delete_mine(session, instance.profile_id, instance.host, instance.gateway_pid)
    session.add(instance)
    await session.commit()


async def forget_instance(
    session: AsyncSession, profile_id: int, host: str, gateway_pid: int
) -> None:
    await _delete_mine(session, profile_id, host, gateway_pid)
    await session.commit()


async def _delete_mine(session: AsyncSession, profile_id: int, host: str, gateway_pid: int) -> None:
    await session.exec(
        delete(RunningInstance).where(
            RunningInstance.profile_id == profile_id,  # type: ignore[arg-type]
            RunningInstance.host == host,  # type: ignore[arg-type]
            RunningInstance.gateway_pid == gateway_pid,  # type: ignore[arg-type]
        )
    )


async def delete_instances(session: AsyncSession, rows: list[RunningInstance]) -> None:
    for row in rows:
        await session.delete(row)
    await session.commit()
