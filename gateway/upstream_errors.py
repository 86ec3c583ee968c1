"""Model servers' own error bodies, reshaped into OpenAI's error shape with their status.

mlx-openai-server is FastAPI: it answers `{"detail": "..."}` or, for validation, a list of
`{"loc", "msg", "type"}`. SDKs only understand `{"error": {...}}`, so we translate.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import default_error_type, openai_error_body


def to_openai_error(status: int, body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
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
    return openai_error_body(message, default_error_type(status), _code(status))


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


def _describe(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = [str(part) for part in item.get("loc", []) if part != "body"]
    where = ".".join(loc)
    message = str(item.get("msg", "invalid value"))
    return f"{where}: {message}" if where else message


def _code(status: int) -> str | None:
    return {400: "invalid_request", 404: "not_found", 422: "invalid_value"}.get(status)
