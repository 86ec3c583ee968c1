"""Who is calling: bearer token (JWT or API key) to a `Principal`, cached off the hot path.

The proxy must not touch the database per request, so principals are cached. How long a cached
one is trusted depends on who tells this process about changes:
- changes made through this process call `forget_user`/`forget_key` at once;
- on PostgreSQL, the revocation listener (gateway/revocation.py) forgets what other replicas and
  the CLI changed, within milliseconds; while it is connected (`listening`), an entry is
  trusted for MLX_MANAGER_AUTH_CACHE_TTL;
- otherwise (SQLite, or the listener reconnecting) only for MLX_MANAGER_AUTH_CACHE_BACKSTOP_TTL,
  so a change nobody announced counts after at most that.
When the database cannot be reached, a cached principal keeps serving up to
MLX_MANAGER_AUTH_STALE_MAX_AGE after it was loaded; an uncached token gets 503.
Any doubt denies: a token that fails any check is 401, whatever the reason.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection

from gateway import store
from gateway.errors import Forbidden, ServiceUnavailable, Unauthorized
from gateway.limits import Limits
from gateway.tokens import InvalidToken, hash_api_key, looks_like_api_key, read_access_token
from gateway.types import KeyScope

log = logging.getLogger("mlx_manager.auth")

CACHE_TTL = 1.0  # the backstop's default (MLX_MANAGER_AUTH_CACHE_BACKSTOP_TTL)
_CACHE_LIMIT = 10_000
# Seconds a client is asked to wait before retrying when the database is unreachable.
OUTAGE_RETRY_AFTER = 5
# At most one "serving cached logins" warning per this many seconds (an outage is noisy).
_STALE_LOG_EVERY = 30.0


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
    # Rate limits and token budgets (gateway/limits.py) of the key and of its owner; None
    # (the usual case) means none, and the proxy then counts nothing for this caller.
    key_limits: Limits | None = None
    user_limits: Limits | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def has_scope(self, scope: KeyScope) -> bool:
        return self.scopes is None or scope in self.scopes


@dataclass(slots=True)
class _Entry:
    principal: Principal
    loaded: float  # time.monotonic() when read from the database


class Authenticator:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        secret: str,
        ttl: float = CACHE_TTL,
        *,
        listened_ttl: float | None = None,
        stale_max_age: float = 0.0,
        lookup_timeout: float | None = None,
    ) -> None:
        self._sessions = sessions
        self._secret = secret
        self._backstop_ttl = ttl
        self._listened_ttl = ttl if listened_ttl is None else listened_ttl
        self._stale_max_age = stale_max_age
        self._lookup_timeout = lookup_timeout
        self._cache: dict[str, _Entry] = {}
        # Bumped by every forget/flush: a lookup that began before one may have read what it
        # revoked, so its result is returned but not cached.
        self._epoch = 0
        self._stale_logged = -_STALE_LOG_EVERY
        # Set by the revocation listener while its LISTEN connection is up.
        self.listening = False

    @property
    def ttl(self) -> float:
        """How long a cached principal is trusted right now."""
        return self._listened_ttl if self.listening else self._backstop_ttl

    async def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer(authorization)
        now = time.monotonic()
        entry = self._cache.get(token)
        if entry is not None and now - entry.loaded < self.ttl:
            return entry.principal
        epoch = self._epoch
        lookup = self._from_api_key(token) if looks_like_api_key(token) else self._from_jwt(token)
        try:
            principal = await self._bounded(lookup)
        except Unauthorized:
            # Never keep a refused token around to be served stale in a later outage.
            self._cache.pop(token, None)
            raise
        except Exception as exc:
            if not store.replicas.is_unreachable(exc):
                raise
            return self._stale(token, entry, exc)
        if epoch == self._epoch:
            if len(self._cache) >= _CACHE_LIMIT:
                self._prune(time.monotonic())
            self._cache[token] = _Entry(principal, time.monotonic())
        return principal

    async def _bounded(self, lookup: Awaitable[Principal]) -> Principal:
        if self._lookup_timeout is None:
            return await lookup
        async with asyncio.timeout(self._lookup_timeout):
            return await lookup

    def _stale(self, token: str, entry: _Entry | None, exc: BaseException) -> Principal:
        """The database cannot be reached: the cached principal if recent enough, else 503."""
        now = time.monotonic()
        reason = store.replicas.describe(exc)
        if entry is not None and now - entry.loaded <= self._stale_max_age:
            if now - self._stale_logged >= _STALE_LOG_EVERY:
                self._stale_logged = now
                log.warning("database unreachable (%s): serving cached logins", reason)
            return entry.principal
        log.warning("database unreachable (%s): refusing a login not in the cache", reason)
        raise ServiceUnavailable(
            "the gateway cannot reach its database to check this token; retry shortly",
            code="database_unavailable",
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER)},
        ) from exc

    def _prune(self, now: float) -> None:
        keep = max(self._backstop_ttl, self._listened_ttl, self._stale_max_age)
        self._cache = {k: v for k, v in self._cache.items() if now - v.loaded < keep}
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()

    def forget_user(self, user_id: int) -> None:
        """Drop cached principals of a user whose status, role or password just changed."""
        self._epoch += 1
        self._cache = {k: v for k, v in self._cache.items() if v.principal.user_id != user_id}

    def forget_key(self, key_id: int) -> None:
        self._epoch += 1
        self._cache = {k: v for k, v in self._cache.items() if v.principal.key_id != key_id}

    def forget_all(self) -> None:
        """Drop every cached principal: changes may have gone unannounced (the revocation
        listener was disconnected)."""
        self._epoch += 1
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

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
        return Principal(
            user_id=user.id, email=user.email, is_admin=user.is_admin, user_limits=Limits.of(user)
        )

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
            key_limits=Limits.of(key),
            user_limits=Limits.of(user),
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
