"""Profile rows (`server_profiles`): written by the profiles API and by JIT profiles alike."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.errors import Conflict
from gateway.store import replicas
from gateway.tables import ServerProfile
from gateway.types import utcnow


async def list_profiles(session: AsyncSession) -> list[ServerProfile]:
    """Every profile, in id order (the order they were made)."""
    query = select(ServerProfile).order_by(ServerProfile.id)  # type: ignore[arg-type]
    return list((await session.exec(query)).all())


async def get_profile(session: AsyncSession, profile_id: int) -> ServerProfile | None:
    return await session.get(ServerProfile, profile_id)


async def add_profile(session: AsyncSession, profile: ServerProfile) -> ServerProfile:
    """Insert a new profile; a name another profile took meanwhile is a 409, not a 500."""
    session.add(profile)
    await _commit(session, profile)
    return profile


async def save_profile(session: AsyncSession, profile: ServerProfile) -> ServerProfile:
    """Write back a changed profile (loaded with `get_profile` in the same session)."""
    profile.updated_at = utcnow()
    session.add(profile)
    await _commit(session, profile)
    return profile


async def delete_profile(session: AsyncSession, profile_id: int) -> None:
    """Remove the row if it is still there (deleting twice is not an error)."""
    profile = await session.get(ServerProfile, profile_id)
    if profile is not None:
        await session.delete(profile)
        await replicas.notify_profile(session, profile_id)
        await session.commit()


async def _commit(session: AsyncSession, profile: ServerProfile) -> None:
    """Commit the profile and, in the same transaction, tell the other replicas about it."""
    try:
        await session.flush()  # the id of a new profile, for the notice
        assert profile.id is not None
        await replicas.notify_profile(session, profile.id)
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        message = f"the name {profile.name!r} is already used by another profile"
        raise Conflict(message, code="name_taken") from exc
