"""Request and response shapes of the control plane: one schema per use.

Public schemas are built field by field from the tables, so a password hash or key hash has no
path into a response.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import Unprocessable
from gateway.limits import DEFAULT_BUDGET_PERIOD, LIMIT_FIELDS, BudgetPeriod
from gateway.tables import ApiKey, User
from gateway.types import DEFAULT_KEY_SCOPES, KeyScope, iso_utc

# Sane maxima for limits (a typo of a few extra zeros is refused, not stored): a million
# requests a minute, a trillion tokens a minute, a quadrillion tokens a period.
MAX_RPM = 1_000_000
MAX_TPM = 10**12
MAX_TOKEN_BUDGET = 10**15


class Strict(BaseModel):
    # strict: "yes" is not a boolean and "5" is not a number in an admin API.
    model_config = ConfigDict(extra="forbid", strict=True)


class Credentials(Strict):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)


class LimitsPatch(Strict):
    """Optional limits of a key or a user; a field sent as null removes that limit, a field
    left out keeps it. `budget_period` ("day" or "month", UTC) goes with `token_budget` and
    defaults to "month"."""

    rpm: int | None = Field(default=None, ge=1, le=MAX_RPM)
    tpm: int | None = Field(default=None, ge=1, le=MAX_TPM)
    token_budget: int | None = Field(default=None, ge=1, le=MAX_TOKEN_BUDGET)
    budget_period: BudgetPeriod | None = None

    def limit_changes(self, current: ApiKey | User | None = None) -> dict[str, object]:
        """The limit columns to write, checked against `current` (None: a new row)."""
        sent = self.model_fields_set & set(LIMIT_FIELDS)
        changes: dict[str, object] = {name: getattr(self, name) for name in sent}
        budget = changes.get("token_budget", current.token_budget if current else None)
        if budget is None:
            if changes.get("budget_period") is not None:
                raise Unprocessable(
                    "budget_period needs a token_budget (tokens per day or month)",
                    param="budget_period",
                )
            if "token_budget" in changes:
                changes["budget_period"] = None
        elif changes.get("budget_period") is None and (
            "budget_period" in changes or current is None or current.budget_period is None
        ):
            changes["budget_period"] = DEFAULT_BUDGET_PERIOD
        return changes


class KeyLimitsPatch(LimitsPatch):
    """PATCH /api/keys/{id}: only the limits change."""


class UserPatch(LimitsPatch):
    status: Literal["approved", "pending", "disabled"] | None = None
    is_admin: bool | None = None


class PasswordReset(Strict):
    password: str = Field(max_length=4096)


class KeyCreate(LimitsPatch):
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
        **limits_json(user),
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
        **limits_json(key),
    }


def limits_json(row: ApiKey | User) -> dict[str, object]:
    """rpm, tpm, token_budget and budget_period (null: unlimited)."""
    return {name: getattr(row, name) for name in LIMIT_FIELDS}


_iso = iso_utc
