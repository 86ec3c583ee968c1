"""`/api/usage`: tokens and requests, grouped by user, model or key; users see their own."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import store
from gateway.auth import require_user
from gateway.errors import BadRequest
from gateway.limits import Check, Counts, Limits, checks_for, subject, used
from gateway.runtime import gateway_of
from gateway.store.usage import GROUPS, GroupBy
from gateway.types import iso_utc


def _when(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"{name} must be an ISO 8601 date or time", param=name) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _group_by(request: Request) -> GroupBy:
    value = request.query_params.get("group_by", "model")
    for group in GROUPS:
        if value == group:
            return group
    raise BadRequest(f"group_by must be one of: {', '.join(GROUPS)}", param="group_by")


async def usage_report(request: Request) -> Response:
    principal = await require_user(request)
    group_by = _group_by(request)
    since, until = _when(request, "since"), _when(request, "until")
    await gateway_of(request).usage.flush()  # include what is still in the write buffer

    owner = None if principal.is_admin else principal.user_id
    async with gateway_of(request).sessions() as session:
        rows = await store.usage.usage_groups(
            session, group_by, user_id=owner, since=since, until=until
        )
    groups = [
        {
            group_by: row.label,
            f"{group_by}_id" if group_by != "model" else "model_id": row.id,
            "requests": row.requests,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "total_tokens": row.prompt_tokens + row.completion_tokens,
            "avg_latency_ms": row.avg_latency_ms,
            "errors": row.errors,
        }
        for row in rows
    ]
    groups.sort(key=lambda g: -g["total_tokens"])
    return JSONResponse(
        {
            "group_by": group_by,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "groups": groups,
            "limits": await _limits(request, owner),
        }
    )


async def _limits(request: Request, owner: int | None) -> list[dict[str, object]]:
    """Each limited key and user (the caller's own, or everyone's for an admin) with what its
    current windows hold: `rpm`, `tpm` and `token_budget` as {limit, used, resets_at} (plus
    `period` for the budget), or null when that limit is not set."""
    gateway = gateway_of(request)
    async with gateway.sessions() as session:
        keys = await store.keys.list_keys(session, user_id=owner)
        if owner is None:
            users = await store.users.list_users(session)
        else:
            me = await store.users.get_user(session, owner)
            users = [] if me is None else [me]
    now = time.time()
    subjects: list[tuple[dict[str, object], list[Check], Limits]] = []
    for user in users:
        limits = Limits.of(user)
        if limits is not None and user.id is not None:
            entry: dict[str, object] = {"subject": "user", "id": user.id, "email": user.email}
            subjects.append((entry, checks_for(subject("user", user.id), limits, now), limits))
    for key, key_owner in keys:
        limits = Limits.of(key)
        if limits is not None and key.id is not None:
            entry = {
                "subject": "key",
                "id": key.id,
                "name": key.name,
                "user_id": key.user_id,
                "email": key_owner.email,
            }
            subjects.append((entry, checks_for(subject("key", key.id), limits, now), limits))
    rows = {check.row for _, checks, _ in subjects for check in checks}
    counts = await gateway.limiter.current(rows)
    out = []
    for entry, checks, limits in subjects:
        found: dict[str, dict[str, object]] = {}
        for check in checks:
            found[check.name] = {
                "limit": check.limit,
                "used": used(check, counts.get(check.row, Counts())),
                "resets_at": iso_utc(check.resets_at),
            }
        if "budget" in found:
            found["budget"]["period"] = limits.budget_period
        out.append(
            {
                **entry,
                "rpm": found.get("rpm"),
                "tpm": found.get("tpm"),
                "token_budget": found.get("budget"),
            }
        )
    return out


routes = [Route("/api/usage", usage_report, methods=["GET"])]
