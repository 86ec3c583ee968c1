"""`/api/usage`: tokens and requests, grouped by user, model or key; users see their own."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import store
from gateway.auth import require_user
from gateway.errors import BadRequest
from gateway.runtime import gateway_of
from gateway.store.usage import GROUPS, GroupBy


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
        }
    )


routes = [Route("/api/usage", usage_report, methods=["GET"])]
