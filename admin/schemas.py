"""Request and response shapes of the control plane: one schema per use.

Public schemas are built field by field from the tables, so a password hash or key hash has no
path into a response.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.tables import ApiKey, User
from gateway.types import DEFAULT_KEY_SCOPES, KeyScope, iso_utc


class Strict(BaseModel):
    # strict: "yes" is not a boolean and "5" is not a number in an admin API.
    model_config = ConfigDict(extra="forbid", strict=True)


class Credentials(Strict):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)


class UserPatch(Strict):
    status: Literal["approved", "pending", "disabled"] | None = None
    is_admin: bool | None = None


class PasswordReset(Strict):
    password: str = Field(max_length=4096)


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    models: list[str] | None = Field(default=None, max_length=1000)
    # What the key may call; at least one. Inference only unless asked (least privilege).
    scopes: list[KeyScope] = Field(default=list(DEFAULT_KEY_SCOPES), min_length=1, max_length=8)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


def user_json(user: User) -> dict[str, object]:
    return {
        "id": user.id,
        "email": user.email,
        "is_admin": user.is_admin,
        "status": user.status,
        "created_at": _iso(user.created_at),
        "last_login_at": _iso(user.last_login_at),
    }


def key_json(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "user_id": key.user_id,
        "name": key.name,
        "prefix": key.prefix,
        "models": key.models,
        "scopes": key.scopes,
        "expires_at": _iso(key.expires_at),
        "created_at": _iso(key.created_at),
        "last_used_at": _iso(key.last_used_at),
    }


_iso = iso_utc
