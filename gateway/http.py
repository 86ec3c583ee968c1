"""Request-body helpers shared by every JSON endpoint: parse once, validate, fail clearly."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from gateway.errors import (
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)

M = TypeVar("M", bound=BaseModel)
ADMIN_BODY_LIMIT = 1024 * 1024  # MLX_MANAGER_MAX_ADMIN_BODY_BYTES' default


def admin_body_limit(request: Request) -> int:
    """The `/api` body limit of this app's settings (the default when none are attached)."""
    gateway = getattr(request.app.state, "gateway", None)
    return gateway.settings.max_admin_body_bytes if gateway is not None else ADMIN_BODY_LIMIT


JSON = "application/json"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def require_media_type(request: Request, *allowed: str) -> str:
    """415 unless the body is declared as one of `allowed`; returns the media type.

    Why it matters: a web page may POST `text/plain` (or a form) to any address without a CORS
    preflight, and a parser that ignores Content-Type would read such a body as JSON. Insisting
    on `application/json` makes every cross-site write need a preflight, which the gateway never
    grants, so a page elsewhere cannot act on a local gateway (e.g. register its first admin).
    """
    found = media_type(request)
    if found not in allowed:
        shown = found or "none"
        raise UnsupportedMediaType(
            f"Content-Type must be {' or '.join(allowed)} (got {shown})",
            param="content-type",
        )
    return found


class ClientGone(GatewayError):
    """The client closed the connection before its body arrived.

    Nobody is left to answer, so this is no server error: the answer goes nowhere, and the
    status it carries (499, nginx's "client closed request") is what the access log and the
    metrics record, as for a client that leaves while the model is working.
    """

    status_code = 499
    error_type = "invalid_request_error"
    code = "client_closed_request"


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) before buffering more than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise ClientGone("the client closed the connection before sending its body") from exc
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequest("request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise BadRequest("request body is not valid JSON: nested too deeply") from exc
    except ValueError as exc:  # bad syntax or UTF-8, or an integer of more than 4300 digits
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc


async def read_model(request: Request, model: type[M], limit: int | None = None) -> M:
    """Parse and validate a JSON body into `model`, with a 422 that names each bad field."""
    require_media_type(request, JSON)
    data = parse_json(await read_body(request, limit or admin_body_limit(request)))
    return validate(model, data)


def validate(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable(describe_errors(exc), param=_first_field(exc)) from exc


def describe_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _first_field(exc: ValidationError) -> str | None:
    errors = exc.errors()
    if errors and errors[0]["loc"]:
        return ".".join(str(p) for p in errors[0]["loc"])
    return None


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
