"""`/api/users`: an admin approves, disables, promotes, deletes and resets users."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin.schemas import PasswordReset, UserPatch, user_json
from gateway import store
from gateway.auth import authenticator_of, require_admin
from gateway.errors import NotFound
from gateway.http import read_model
from gateway.runtime import gateway_of
from gateway.tables import User


async def list_users(request: Request) -> Response:
    await require_admin(request)
    async with gateway_of(request).sessions() as session:
        users = await store.users.list_users(session)
    return JSONResponse([user_json(u) for u in users])


async def patch_user(request: Request) -> Response:
    await require_admin(request)
    patch = await read_model(request, UserPatch)
    async with gateway_of(request).sessions() as session:
        user = await _get_user(session, request)
        limits = patch.limit_changes(user)
        if patch.status is not None or patch.is_admin is not None or not limits:
            await store.users.update_user(
                session, user, status=patch.status, is_admin=patch.is_admin
            )
        if limits:
            await store.users.set_user_limits(session, user, limits)
    _forget(request, user)
    return JSONResponse(user_json(user))


async def remove_user(request: Request) -> Response:
    await require_admin(request)
    async with gateway_of(request).sessions() as session:
        user = await _get_user(session, request)
        await store.users.delete_user(session, user)
    _forget(request, user)
    return Response(status_code=204)


async def reset_password(request: Request) -> Response:
    await require_admin(request)
    body = await read_model(request, PasswordReset)
    async with gateway_of(request).sessions() as session:
        user = await _get_user(session, request)
        await store.users.set_password(session, user, body.password)
    _forget(request, user)
    return JSONResponse(user_json(user))


async def _get_user(session: AsyncSession, request: Request) -> User:
    user = await store.users.get_user(session, request.path_params["user_id"])
    if user is None:
        raise NotFound("no user with this id", code="user_not_found")
    return user


def _forget(request: Request, user: User) -> None:
    assert user.id is not None
    authenticator_of(request).forget_user(user.id)


routes = [
    Route("/api/users", list_users, methods=["GET"]),
    Route("/api/users/{user_id:int}", patch_user, methods=["PATCH"]),
    Route("/api/users/{user_id:int}", remove_user, methods=["DELETE"]),
    Route("/api/users/{user_id:int}/password", reset_password, methods=["POST"]),
]
