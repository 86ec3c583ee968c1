"""API key rows (`api_keys`): a key is stored as its SHA-256 and shown to its owner once."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.tables import ApiKey, User
from gateway.tokens import api_key_display_prefix, hash_api_key, new_api_key
from gateway.types import utcnow


async def create_key(
    session: AsyncSession,
    *,
    user_id: int,
    name: str,
    models: list[str] | None = None,
    expires_in_days: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key acting as `user_id`; returns the row and the secret, which is never stored."""
    secret = new_api_key()
    key = ApiKey(
        user_id=user_id,
        name=name,
        prefix=api_key_display_prefix(secret),
        key_hash=hash_api_key(secret),
        models=sorted(set(models)) if models else None,
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(key)
    await session.commit()
    return key, secret


async def list_keys(session: AsyncSession, *, user_id: int | None) -> list[tuple[ApiKey, User]]:
    """Keys with their owners, oldest first: only `user_id`'s, or everyone's when None."""
    query = select(ApiKey, User).join(User).order_by(ApiKey.id)  # type: ignore[arg-type]
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    return list((await session.exec(query)).all())


async def get_key(session: AsyncSession, key_id: int) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def delete_key(session: AsyncSession, key: ApiKey) -> None:
    await session.delete(key)
    await session.commit()
