"""`/api/keys`: API keys for SDKs and scripts; each acts as its owner, optionally limited."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin.schemas import KeyCreate, KeyLimitsPatch, key_json
from gateway import store
from gateway.auth import authenticator_of, require_user
from gateway.errors import Forbidden, NotFound
from gateway.http import read_model
from gateway.runtime import gateway_of


async def create_key(request: Request) -> Response:
    principal = await require_user(request)
    if principal.key_id is not None:
        raise Forbidden("an API key cannot create keys; sign in with a password", code="key_scope")
    body = await read_model(request, KeyCreate)
    async with gateway_of(request).sessions() as session:
        key, secret = await store.keys.create_key(
            session,
            user_id=principal.user_id,
            name=body.name,
            models=body.models,
            scopes=body.scopes,
            expires_in_days=body.expires_in_days,
            limits=body.limit_changes(),
        )
    return JSONResponse({**key_json(key), "key": secret}, status_code=201)


async def list_keys(request: Request) -> Response:
    """Your own keys; an admin sees everyone's (`?all=true` is implied for admins)."""
    principal = await require_user(request)
    await gateway_of(request).usage.flush()  # so last_used_at includes the latest requests
    owner = None if principal.is_admin else principal.user_id
    async with gateway_of(request).sessions() as session:
        rows = await store.keys.list_keys(session, user_id=owner)
    return JSONResponse([{**key_json(key), "user_email": user.email} for key, user in rows])


async def patch_key(request: Request) -> Response:
    """Change a key's limits (rpm, tpm, token_budget, budget_period): its owner or an admin.
    The owner's own limits (set by an admin on the user) still apply on top."""
    principal = await require_user(request)
    patch = await read_model(request, KeyLimitsPatch)
    async with gateway_of(request).sessions() as session:
        key = await store.keys.get_key(session, request.path_params["key_id"])
        if key is None or (key.user_id != principal.user_id and not principal.is_admin):
            raise NotFound("no API key with this id", code="key_not_found")
        await store.keys.set_key_limits(session, key, patch.limit_changes(key))
    authenticator_of(request).forget_key(request.path_params["key_id"])
    return JSONResponse(key_json(key))


async def delete_key(request: Request) -> Response:
    principal = await require_user(request)
    async with gateway_of(request).sessions() as session:
        key = await store.keys.get_key(session, request.path_params["key_id"])
        if key is None or (key.user_id != principal.user_id and not principal.is_admin):
            raise NotFound("no API key with this id", code="key_not_found")
        await store.keys.delete_key(session, key)
    authenticator_of(request).forget_key(request.path_params["key_id"])
    return Response(status_code=204)


routes = [
    Route("/api/keys", create_key, methods=["POST"]),
    Route("/api/keys", list_keys, methods=["GET"]),
    Route("/api/keys/{key_id:int}", patch_key, methods=["PATCH"]),
    Route("/api/keys/{key_id:int}", delete_key, methods=["DELETE"]),
]
