"""One body limit for the whole `/api` control plane, whatever the route or content type.

Handlers read bodies through `gateway.http.read_body` with the same limit, but a limit kept by
each handler is one forgotten call away from an unbounded upload (Starlette's `request.form()`
spools multipart files of any size to disk). This layer bounds every `/api` body before a
route sees it: a declared `Content-Length` over the limit is refused at once, and a body sent
without one is counted as it is received.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import PayloadTooLarge, error_response


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body is larger than the {limit} byte limit for /api "
        "(MLX_MANAGER_MAX_ADMIN_BODY_BYTES)"
    )


class AdminBodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/api" or path.startswith("/api/")):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.limit:
                    response = error_response(_too_large(self.limit), openai_shape=False)
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised inside the route's read, so the app's handler answers 413.
                    raise _too_large(self.limit)
            return message

        await self.app(scope, counting_receive, send)
