"""Who is calling: bearer token (JWT or API key) to a `Principal`, cached off the hot path.

The proxy must not touch the database per request, so principals are cached for a short TTL.
Revocation stays immediate for changes made through this process (they call `forget_user`/
`forget_key`), and within `CACHE_TTL` for changes made elsewhere (the CLI on the same database).
Any doubt denies: a token that fails any check is 401, whatever the reason.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection

from gateway import store
from gateway.errors import Forbidden, Unauthorized
from gateway.tokens import InvalidToken, hash_api_key, looks_like_api_key, read_access_token
from gateway.types import KeyScope

CACHE_TTL = 1.0
_CACHE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    email: str
    is_admin: bool
    key_id: int | None = None
    # An API key's allowlist; None means every model the owner may use.
    models: frozenset[str] | None = None
    # An API key's scopes (gateway.types.KEY_SCOPES); None (a signed-in user) means all.
    scopes: frozenset[str] | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def has_scope(self, scope: KeyScope) -> bool:
        return self.scopes is None or scope in self.scopes


@dataclass(slots=True)
class _Entry:
    principal: Principal
    expires: float


class Authenticator:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], secret: str, ttl: float = CACHE_TTL
    ) -> None:
        self._sessions = sessions
        self._secret = secret
        self._ttl = ttl
        self._cache: dict[str, _Entry] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer(authorization)
        now = time.monotonic()
        entry = self._cache.get(token)
        if entry is not None and entry.expires > now:
            return entry.principal
        principal = await (
            self._from_api_key(token) if looks_like_api_key(token) else self._from_jwt(token)
        )
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {k: v for k, v in self._cache.items() if v.expires > now}
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
        self._cache[token] = _Entry(principal, now + self._ttl)
        return principal

    def forget_user(self, user_id: int) -> None:
        """Drop cached principals of a user whose status, role or password just changed."""
        self._cache = {k: v for k, v in self._cache.items() if v.principal.user_id != user_id}

    def forget_key(self, key_id: int) -> None:
        self._cache = {k: v for k, v in self._cache.items() if v.principal.key_id != key_id}

    async def _from_jwt(self, token: str) -> Principal:
        try:
            claims = read_access_token(self._secret, token)
        except InvalidToken as exc:
            raise Unauthorized("invalid or expired token; sign in again") from exc
        async with self._sessions() as session:
            user = await store.users.get_user(session, claims.user_id)
        if user is None or user.status != "approved" or user.token_version != claims.token_version:
            raise Unauthorized("invalid or expired token; sign in again")
        assert user.id is not None
        return Principal(user_id=user.id, email=user.email, is_admin=user.is_admin)

    async def _from_api_key(self, token: str) -> Principal:
        digest = hash_api_key(token)
        async with self._sessions() as session:
            row = await store.keys.find_key(session, digest)
        if row is None:
            raise Unauthorized("invalid API key")
        key, user = row
        # The lookup is by hash; compare again in constant time so timing never depends on it.
        if not hmac.compare_digest(key.key_hash, digest):
            raise Unauthorized("invalid API key")
        if key.expires_at is not None and _aware(key.expires_at) <= datetime.now(UTC):
            raise Unauthorized("this API key has expired; create a new one")
        if user.status != "approved":
            raise Unauthorized("invalid API key")
        assert user.id is not None
        assert key.id is not None
        return Principal(
            user_id=user.id,
            email=user.email,
            is_admin=user.is_admin,
            key_id=key.id,
            models=frozenset(key.models) if key.models else None,
            scopes=frozenset(key.scopes),
        )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized(
            "missing bearer token; send 'Authorization: Bearer <token or API key>'",
            code="missing_token",
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("malformed Authorization header; expected 'Bearer <token>'")
    return token


def authenticator_of(conn: HTTPConnection) -> Authenticator:
    auth: Authenticator = conn.app.state.gateway.authenticator
    return auth


async def require_user(conn: HTTPConnection, scope: KeyScope = "admin") -> Principal:
    """The caller, who must hold `scope`: `/api` routes need `admin` (the default, so a route
    cannot forget it), `/v1` needs `inference`. A signed-in user holds both."""
    principal = await authenticator_of(conn).authenticate(conn.headers.get("authorization"))
    if not principal.has_scope(scope):
        where = "/v1 (the OpenAI API)" if scope == "inference" else "/api (the management API)"
        held = ", ".join(sorted(principal.scopes or ())) or "none"
        raise Forbidden(
            f"this API key may not call {where}: it has the scopes {held}. Create a key with "
            f'the {scope!r} scope (POST /api/keys with "scopes"), or sign in',
            code="insufficient_scope",
        )
    conn.scope.setdefault("state", {})["principal"] = principal
    return principal


async def require_admin(conn: HTTPConnection) -> Principal:
    principal = await require_user(conn)
    if not principal.is_admin:
        raise Forbidden("this needs an admin account", code="admin_required")
    return principal
