"""API key rows (`api_keys`): a key is stored as its SHA-256 and shown to its owner once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.limits import LIMIT_FIELDS
from gateway.store.replicas import notify_key
from gateway.tables import ApiKey, User
from gateway.tokens import api_key_display_prefix, hash_api_key, new_api_key
from gateway.types import DEFAULT_KEY_SCOPES, KEY_SCOPES, KeyScope, utcnow


async def create_key(
    session: AsyncSession,
    *,
    user_id: int,
    name: str,
    models: list[str] | None = None,
    scopes: Iterable[KeyScope] = DEFAULT_KEY_SCOPES,
    expires_in_days: int | None = None,
    limits: Mapping[str, object] | None = None,
) -> tuple[ApiKey, str]:
    """A new key acting as `user_id`; returns the row and the secret, which is never stored.
    `limits` are its LIMIT_FIELDS (rpm, tpm, token_budget, budget_period), already valid."""
    secret = new_api_key()
    key = ApiKey(
        user_id=user_id,
        name=name,
        prefix=api_key_display_prefix(secret),
        key_hash=hash_api_key(secret),
        models=sorted(set(models)) if models else None,
        scopes=[scope for scope in KEY_SCOPES if scope in set(scopes)],
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    _set_limits(key, limits or {})
    session.add(key)
    await session.commit()
    return key, secret


async def list_keys(session: AsyncSession, *, user_id: int | None) -> list[tuple[ApiKey, User]]:
    """Keys with their owners, oldest first: only `user_id`'s, or everyone's when None."""
    query = select(ApiKey, User).join(User).order_by(ApiKey.id)  # type: ignore[arg-type]
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    return list((await session.exec(query)).all())


async def find_key(session: AsyncSession, key_hash: str) -> tuple[ApiKey, User] | None:
    """The key with this SHA-256, and its owner: what a bearer API key authenticates as."""
    query = select(ApiKey, User).join(User).where(ApiKey.key_hash == key_hash)
    row = (await session.exec(query)).first()
    return None if row is None else (row[0], row[1])


async def get_key(session: AsyncSession, key_id: int) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def set_key_limits(
    session: AsyncSession, key: ApiKey, limits: Mapping[str, object]
) -> ApiKey:
    """Set the key's LIMIT_FIELDS (already valid); replicas drop its cached login at commit so
    the new limits count at once."""
    _set_limits(key, limits)
    session.add(key)
    assert key.id is not None
    await notify_key(session, key.id)
    await session.commit()
    return key


def _set_limits(key: ApiKey, limits: Mapping[str, object]) -> None:
    for name, value in limits.items():
        if name in LIMIT_FIELDS:
            setattr(key, name, value)


async def delete_key(session: AsyncSession, key: ApiKey) -> None:
    await session.delete(key)
    assert key.id is not None
    await notify_key(session, key.id)  # other replicas drop its cached login at commit
    await session.commit()
