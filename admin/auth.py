"""`/api/auth`: register, log in, and who am I."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin.schemas import Credentials, user_json
from gateway.auth import require_user
from gateway.errors import BadRequest, Forbidden, ServiceUnavailable, Unauthorized, Unprocessable
from gateway.http import (
    JSON,
    admin_body_limit,
    client_address,
    parse_json,
    read_body,
    require_media_type,
    validate,
)
from gateway.runtime import gateway_of
from gateway.store.users import (
    check_password_login,
    count_pending_users,
    get_user,
    has_users,
    normalize_email,
    register_user,
)
from gateway.tokens import issue_access_token

FORM = "application/x-www-form-urlencoded"


async def register(request: Request) -> Response:
    gateway = gateway_of(request)
    gateway.register_throttle.hit(client_address(request))
    credentials = await _read_credentials(request)
    async with gateway.sessions() as session:
        # Self-registered accounts wait for an admin; bound the queue so a flood of sign-ups
        # cannot grow the database (or bury real requests) without limit.
        limit = gateway.settings.max_pending_users
        if await count_pending_users(session) >= limit and await has_users(session):
            raise ServiceUnavailable(
                f"registration is closed for now: {limit} accounts are already waiting for "
                "an admin's approval (MLX_MANAGER_MAX_PENDING_USERS); ask an admin",
                code="too_many_pending_users",
            )
        user = await register_user(session, credentials.email, credentials.password)
    body = user_json(user)
    if user.status == "pending":
        body["message"] = "account created; an admin must approve it before you can sign in"
    return JSONResponse(body, status_code=201)


async def login(request: Request) -> Response:
    gateway = gateway_of(request)
    credentials = await _read_credentials(request, form=True)
    try:
        email = normalize_email(credentials.email)
    except Unprocessable:
        email = credentials.email.strip().lower()
    address = client_address(request)
    throttle = gateway.login_throttle
    throttle.check(email, address)
    async with gateway.sessions() as session:
        user = await check_password_login(session, email, credentials.password)
    if user is None:
        throttle.record_failure(email, address)
        raise Unauthorized("wrong email or password", code="invalid_credentials")
    throttle.record_success(email)
    if user.status == "pending":
        raise Forbidden("this account is waiting for an admin's approval", code="pending_approval")
    if user.status != "approved":
        raise Forbidden("this account is disabled; ask an admin", code="account_disabled")
    assert user.id is not None
    expires = timedelta(days=gateway.settings.jwt_expire_days)
    token = issue_access_token(gateway.jwt_secret, user.id, user.token_version, expires)
    return JSONResponse(
        {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(expires.total_seconds()),
        }
    )


async def me(request: Request) -> Response:
    principal = await require_user(request)
    gateway = gateway_of(request)
    async with gateway.sessions() as session:
        user = await get_user(session, principal.user_id)
    if user is None:
        raise Unauthorized("this account no longer exists")
    body = user_json(user)
    body["api_key_id"] = principal.key_id
    return JSONResponse(body)


async def _read_credentials(request: Request, *, form: bool = False) -> Credentials:
    """JSON `{email, password}`, or (sign-in only) the OAuth2 password form.

    The form is parsed here from the size-limited body rather than by Starlette's
    `request.form()`, which takes multipart too and spools uploads of any size to disk.
    """
    allowed = (JSON, FORM) if form else (JSON,)
    kind = require_media_type(request, *allowed)
    body = await read_body(request, admin_body_limit(request))
    if kind == JSON:
        return validate(Credentials, parse_json(body))
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the form is not valid UTF-8 URL-encoded fields") from exc
    username, password = fields.get("username"), fields.get("password")
    if not username or not password:
        raise BadRequest("form login needs the fields 'username' and 'password'")
    return validate(Credentials, {"email": username[0], "password": password[0]})


routes = [
    Route("/api/auth/register", register, methods=["POST"]),
    Route("/api/auth/login", login, methods=["POST"]),
    Route("/api/auth/me", me, methods=["GET"]),
]
