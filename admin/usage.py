"""`/api/usage`: tokens and requests, grouped by user, model or key; users see their own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func
from sqlalchemy import select as sql_select
from sqlmodel import col, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import require_user
from gateway.errors import BadRequest
from gateway.runtime import gateway_of
from gateway.tables import ApiKey, Usage, User

GROUPS = ("user", "model", "key")


def _when(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"{name} must be an ISO 8601 date or time", param=name) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def usage_report(request: Request) -> Response:
    principal = await require_user(request)
    group_by = request.query_params.get("group_by", "model")
    if group_by not in GROUPS:
        raise BadRequest(f"group_by must be one of: {', '.join(GROUPS)}", param="group_by")
    since, until = _when(request, "since"), _when(request, "until")
    await gateway_of(request).usage.flush()  # include what is still in the write buffer

    column: Any = {"user": Usage.user_id, "model": Usage.model, "key": Usage.key_id}[group_by]
    query = sql_select(
        column,
        func.count(),
        func.coalesce(func.sum(Usage.prompt_tokens), 0),
        func.coalesce(func.sum(Usage.completion_tokens), 0),
        func.avg(Usage.latency_ms),
        func.sum(case((col(Usage.status) >= 400, 1), else_=0)),
    ).group_by(column)
    if not principal.is_admin:
        query = query.where(col(Usage.user_id) == principal.user_id)
    if since is not None:
        query = query.where(col(Usage.created_at) >= since)
    if until is not None:
        query = query.where(col(Usage.created_at) < until)

    async with gateway_of(request).sessions() as session:
        conn = await session.connection()
        rows = (await conn.execute(query)).all()
        labels = await _labels(session, group_by, [row[0] for row in rows])
    groups = [
        {
            group_by: labels.get(row[0], row[0]),
            f"{group_by}_id" if group_by != "model" else "model_id": row[0],
            "requests": row[1],
            "prompt_tokens": int(row[2]),
            "completion_tokens": int(row[3]),
            "total_tokens": int(row[2]) + int(row[3]),
            "avg_latency_ms": round(float(row[4] or 0), 2),
            "errors": int(row[5] or 0),
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


async def _labels(session: Any, group_by: str, ids: list[Any]) -> dict[Any, str]:
    """Readable names for ids: users by email, keys by name."""
    wanted = [i for i in ids if i is not None]
    if group_by == "user" and wanted:
        users = (await session.exec(select(User).where(col(User.id).in_(wanted)))).all()
        return {u.id: u.email for u in users}
    if group_by == "key" and wanted:
        keys = (await session.exec(select(ApiKey).where(col(ApiKey.id).in_(wanted)))).all()
        return {k.id: f"{k.name} ({k.prefix}...)" for k in keys}
    return {}


routes = [Route("/api/usage", usage_report, methods=["GET"])]
