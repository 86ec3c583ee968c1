"""Model servers' own error bodies, reshaped into OpenAI's error shape with their status.

mlx-openai-server is FastAPI: it answers `{"detail": "..."}` or, for validation, a list of
`{"loc", "msg", "type"}`. SDKs only understand `{"error": {...}}`, so we translate.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import default_error_type, openai_error_body


def openai_status(status: int) -> int:
    """The status OpenAI would answer: FastAPI's 422 for a request that fails validation is
    OpenAI's 400, which SDKs raise as BadRequestError (422 has no meaning to them)."""
    return 400 if status == 422 else status


def to_openai_error(status: int, body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, too long a number
        data = None
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("error"), dict):
        data = detail  # mlx-openai-server nests OpenAI errors: {"detail": {"error": {...}}}
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        return openai_error_body(
            str(error.get("message", "")) or f"model server answered {status}",
            str(error.get("type") or default_error_type(status)),
            _string_or_none(error.get("code")),
            _string_or_none(error.get("param")),
        )
    message = _message(data, body, status)
    param = _first_field(data) if status == 422 else None
    return openai_error_body(message, default_error_type(status), _code(status), param)


def _string_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _message(data: Any, body: bytes, status: int) -> str:
    if isinstance(data, dict):
        detail = data.get("detail", data.get("message"))
        if isinstance(detail, str) and detail:
            return detail
        if isinstance(detail, list) and detail:
            return "; ".join(_describe(item) for item in detail)
        if isinstance(detail, dict):
            return json.dumps(detail)
    text = body.decode("utf-8", errors="replace").strip()
    if text and len(text) <= 2000:
        return f"model server answered {status}: {text}"
    return f"model server answered {status}"


def _first_field(data: Any) -> str | None:
    """The field the first validation error is about (`messages.0.content`), for `param`."""
    detail = data.get("detail") if isinstance(data, dict) else None
    if not isinstance(detail, list) or not detail or not isinstance(detail[0], dict):
        return None
    loc = [str(part) for part in detail[0].get("loc", []) if part != "body"]
    return ".".join(loc) or None


def _describe(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = [str(part) for part in item.get("loc", []) if part != "body"]
    where = ".".join(loc)
    message = str(item.get("msg", "invalid value"))
    return f"{where}: {message}" if where else message


def _code(status: int) -> str | None:
    return {400: "invalid_request", 404: "not_found", 422: "invalid_value"}.get(status)
