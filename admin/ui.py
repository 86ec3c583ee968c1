"""The admin web page: `/` serves the single page, `/ui/*` its scripts, styles and icon.

Plain files from `admin/static` (no build step, no Node.js). The page talks to the gateway only
through JavaScript `fetch` calls to `/api` and `/v1` with a bearer token held in
sessionStorage, so nothing secret ever travels in a URL or a cookie.

Every answer here carries the same security headers: a Content-Security-Policy that allows
scripts, styles and connections from this origin only (no inline script, no eval, no framing),
`nosniff`, no referrer, and `no-cache` so an upgraded gateway never runs a stale script.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "static"
ASSETS_PREFIX = "/ui"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",  # forms are sent by fetch(); a native submit would leak fields
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
    (b"cache-control", b"no-cache"),
)


class SecurityHeaders:
    """Pure ASGI: add `SECURITY_HEADERS` to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                headers = [(k, v) for k, v in message.get("headers", []) if k not in names]
                message["headers"] = [*headers, *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _index(request: Request) -> Response:
    headers = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}
    return FileResponse(
        STATIC / "index.html", media_type="text/html; charset=utf-8", headers=headers
    )


class _Assets(StaticFiles):
    """StaticFiles with explicit types for what the page uses (the OS table may lack them)."""

    TYPES = {
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
        ".html": "text/html; charset=utf-8",
    }

    def file_response(self, full_path: object, *args: object, **kwargs: object) -> Response:
        response = super().file_response(full_path, *args, **kwargs)  # type: ignore[arg-type]
        media_type = self.TYPES.get(Path(str(full_path)).suffix)
        if media_type is not None:
            response.headers["content-type"] = media_type
        return response


routes: list[BaseRoute] = [
    Route("/", _index, methods=["GET"]),
    Mount(ASSETS_PREFIX, app=SecurityHeaders(_Assets(directory=STATIC)), name="ui"),
]
