"""Errors the gateway raises, and how each becomes an HTTP answer.

One small tree (like httpx's): every error knows its HTTP status and an OpenAI-style `type` and
`code`, and its message says what to do next. `/v1` answers in OpenAI's shape so SDKs raise
the right exception; `/api` answers `{"detail": ..., "code": ...}`.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class GatewayError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}


class BadRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class NotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class Conflict(GatewayError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(GatewayError):
    status_code = 415
    error_type = "invalid_request_error"
    code = "unsupported_media_type"


class Unprocessable(GatewayError):
    status_code = 422
    error_type = "invalid_request_error"
    code = "invalid_value"


class TooManyRequests(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limited"


class BadGateway(GatewayError):
    status_code = 502
    error_type = "server_error"
    code = "upstream_error"


class ServiceUnavailable(GatewayError):
    status_code = 503
    error_type = "server_error"
    code = "unavailable"


def openai_error_body(
    message: str, error_type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def openai_error_response(
    status_code: int,
    message: str,
    error_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The one place `/v1` error bodies are made, so every path answers the same shape."""
    if error_type is None:
        error_type = default_error_type(status_code)
    return JSONResponse(
        openai_error_body(message, error_type, code, param),
        status_code=status_code,
        headers=headers,
    )


def default_error_type(status_code: int) -> str:
    return {
        401: "authentication_error",
        403: "permission_error",
        404: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status_code, "invalid_request_error" if status_code < 500 else "server_error")


def error_response(exc: GatewayError, *, openai_shape: bool) -> JSONResponse:
    if openai_shape:
        return openai_error_response(
            exc.status_code, exc.message, exc.error_type, exc.code, exc.param, exc.headers
        )
    body: dict[str, Any] = {"detail": exc.message, "code": exc.code}
    if exc.param is not None:
        body["param"] = exc.param
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
