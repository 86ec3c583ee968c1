"""Access lines: method, path, status, duration, request id, and who (user id, key id).

Pure ASGI so streams are not buffered. The query string is left out on purpose: it is the one
place a careless client might put a key, and the path alone identifies the route.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.request_id import request_id_of

log = logging.getLogger("mlx_manager.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            principal = (scope.get("state") or {}).get("principal")
            log.info(
                "%s %s %s %.1fms id=%s user=%s key=%s",
                scope["method"],
                scope["path"],
                status or "-",
                (time.monotonic() - started) * 1000,
                request_id_of(scope),
                getattr(principal, "user_id", "-"),
                getattr(principal, "key_id", None) or "-",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "request_id": request_id_of(scope),
                },
            )
