"""Access tokens (JWT HS256) and API keys: minting and checking, no database access.

JWTs are decoded with an explicit algorithm list and required claims, so `alg: none`, another
algorithm or a token without `exp`/`iat`/`sub` is refused by the library, not by our care.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

ALGORITHM = "HS256"
API_KEY_PREFIX = "sk-"


class InvalidToken(Exception):
    """The token cannot be trusted; the message is for logs, never for the client."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    token_version: int


def issue_access_token(secret: str, user_id: int, token_version: int, expires_in: timedelta) -> str:
    now = datetime.now(UTC)
    payload = {
        "sub": str(user_id),
        "ver": token_version,
        "iat": now,
        "exp": now + expires_in,
        "typ": "access",
    }
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def read_access_token(secret: str, token: str) -> TokenClaims:
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    if payload.get("typ") != "access":
        raise InvalidToken("not an access token")
    try:
        return TokenClaims(user_id=int(payload["sub"]), token_version=int(payload.get("ver", -1)))
    except (TypeError, ValueError) as exc:
        raise InvalidToken("malformed subject") from exc


def looks_like_api_key(token: str) -> bool:
    return token.startswith(API_KEY_PREFIX)


def new_api_key() -> str:
    """`sk-` and 32 random bytes, URL-safe: shown to its owner once and never stored."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 is right here: the key has 256 bits of entropy, so no slow hash is needed."""
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_display_prefix(key: str) -> str:
    return key[:10]
