"""User rows (`users`): registration, password login, and the rules that keep an instance
administrable.

Shared by the admin API and the CLI, so both enforce the same rules (the first user is the
admin, the last admin can never be removed or demoted).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Literal

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.errors import Conflict, Unprocessable
from gateway.limits import LIMIT_FIELDS
from gateway.passwords import check_password_policy, hash_password, verify_password
from gateway.store.replicas import notify_user
from gateway.tables import Setting, User
from gateway.types import utcnow

UserStatus = Literal["approved", "pending", "disabled"]
USER_STATUSES: tuple[UserStatus, ...] = ("approved", "pending", "disabled")
FIRST_ADMIN_KEY = "first_admin_user_id"
_EMAIL = re.compile(r"^[^@\s]{1,200}@[^@\s]{1,200}$")


def normalize_email(email: str) -> str:
    value = email.strip().lower()
    if not _EMAIL.match(value):
        raise Unprocessable("email must look like name@host", param="email")
    return value


def require_valid_password(password: str) -> None:
    problem = check_password_policy(password)
    if problem:
        raise Unprocessable(problem, param="password")


async def list_users(session: AsyncSession) -> list[User]:
    return list((await session.exec(select(User).order_by(User.id))).all())  # type: ignore[arg-type]


async def get_user(session: AsyncSession, user_id: int) -> User | None:
    return await session.get(User, user_id)


async def find_user_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.exec(select(User).where(User.email == email))
    return result.first()


async def register_user(
    session: AsyncSession, email: str, password: str, *, admin: bool = False
) -> User:
    """Create a user. The very first user becomes an approved admin; later ones are pending.

    The "first" decision is made by inserting a unique settings row in the same transaction, so
    two concurrent first registrations (even from two processes) yield exactly one admin: the
    loser's insert fails and it is retried as an ordinary, pending user.
    """
    email = normalize_email(email)
    require_valid_password(password)
    # Before Argon2: a taken email must cost a lookup, not tens of milliseconds of CPU.
    if await find_user_by_email(session, email) is not None:
        raise Conflict("a user with this email already exists", code="user_exists")
    password_hash = await asyncio.to_thread(hash_password, password)

    total = (await session.exec(select(func.count()).select_from(User))).one()
    if total == 0:
        user = User(email=email, password_hash=password_hash, is_admin=True, status="approved")
        session.add(user)
        try:
            await session.flush()
            session.add(Setting(key=FIRST_ADMIN_KEY, value=str(user.id)))
            await session.commit()
            return user
        except IntegrityError:
            await session.rollback()
    user = User(
        email=email,
        password_hash=password_hash,
        is_admin=admin,
        status="approved" if admin else "pending",
    )
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict("a user with this email already exists", code="user_exists") from exc
    return user


async def has_users(session: AsyncSession) -> bool:
    return (await session.exec(select(User.id).limit(1))).first() is not None


async def count_pending_users(session: AsyncSession) -> int:
    query = select(func.count()).select_from(User).where(User.status == "pending")
    return (await session.exec(query)).one()


async def check_password_login(session: AsyncSession, email: str, password: str) -> User | None:
    """The user whose password this is, or None. Costs one Argon2 run either way."""
    try:
        email = normalize_email(email)
    except Unprocessable:
        await asyncio.to_thread(verify_password, password, None)
        return None
    user = await find_user_by_email(session, email)
    stored = user.password_hash if user else None
    # Argon2 takes tens of milliseconds of CPU: off the event loop, so /v1 keeps flowing.
    valid, new_hash = await asyncio.to_thread(verify_password, password, stored)
    if not valid or user is None:
        return None
    if new_hash is not None:
        user.password_hash = new_hash
    if user.status == "approved":
        user.last_login_at = utcnow()
    session.add(user)
    await session.commit()
    return user


async def count_active_admins(session: AsyncSession, excluding: int | None = None) -> int:
    query = (
        select(func.count())
        .select_from(User)
        .where(
            User.is_admin == True,  # noqa: E712  (SQL expression, not a Python comparison)
            User.status == "approved",
        )
    )
    if excluding is not None:
        query = query.where(User.id != excluding)
    return (await session.exec(query)).one()


async def update_user(
    session: AsyncSession,
    user: User,
    *,
    status: UserStatus | None = None,
    is_admin: bool | None = None,
) -> User:
    """Change status or role, refusing any change that would leave no active admin."""
    loses_admin = (
        user.is_admin
        and user.status == "approved"
        and ((status is not None and status != "approved") or is_admin is False)
    )
    if loses_admin and await count_active_admins(session, excluding=user.id) == 0:
        raise Conflict(
            "this is the last active admin; promote another user first", code="last_admin"
        )
    if status is not None and status != user.status:
        if user.status == "approved":
            user.token_version += 1  # leaving "approved" kills every token, for good
        user.status = status
    if is_admin is not None:
        user.is_admin = is_admin
    session.add(user)
    assert user.id is not None
    await notify_user(session, user.id)  # other replicas drop its cached logins at commit
    await session.commit()
    return user


async def set_user_limits(session: AsyncSession, user: User, limits: Mapping[str, object]) -> User:
    """Set the user's LIMIT_FIELDS (already valid); replicas drop their cached logins at
    commit so the new limits count at once."""
    for name, value in limits.items():
        if name in LIMIT_FIELDS:
            setattr(user, name, value)
    session.add(user)
    assert user.id is not None
    await notify_user(session, user.id)
    await session.commit()
    return user


async def delete_user(session: AsyncSession, user: User) -> None:
    is_active_admin = user.is_admin and user.status == "approved"
    if is_active_admin and await count_active_admins(session, excluding=user.id) == 0:
        raise Conflict("the last active admin cannot be deleted", code="last_admin")
    await session.delete(user)
    assert user.id is not None
    await notify_user(session, user.id)
    await session.commit()


async def set_password(session: AsyncSession, user: User, password: str) -> User:
    """Replace the password and revoke every token issued before."""
    require_valid_password(password)
    user.password_hash = await asyncio.to_thread(hash_password, password)
    user.token_version += 1
    session.add(user)
    assert user.id is not None
    await notify_user(session, user.id)
    await session.commit()
    return user
