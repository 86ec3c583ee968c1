"""The ASGI application: routes, error handling, request ids, and the lifespan.

`create_app` takes the control-plane routes as an argument so this core never imports `admin`
(dependencies point one way); `gateway.main` is the composition root that passes them in.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import store
from gateway.access_log import AccessLogMiddleware
from gateway.auth import OUTAGE_RETRY_AFTER, require_admin
from gateway.body_limit import AdminBodyLimitMiddleware
from gateway.errors import (
    GatewayError,
    ServiceUnavailable,
    error_response,
    openai_error_response,
)
from gateway.hosts import HostAllowlistMiddleware, allowed_hosts
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.proxy import routes as proxy_routes
from gateway.request_id import RequestIdMiddleware, request_id_of
from gateway.runtime import Gateway, gateway_of
from gateway.settings import Settings

log = logging.getLogger("mlx_manager")


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Readiness (open): 200 when the database answers, on PostgreSQL the revocation listener
    is connected, and the usage spool has room; else 503 "degraded" saying what is wrong.
    /health stays liveness."""
    gateway = gateway_of(request)
    problem = await store.replicas.ping(gateway.engine, gateway.settings.ready_timeout)
    body: dict[str, object] = {"status": "ready", "database": "ok"}
    if problem is not None:
        body.update(database="unreachable", database_error=problem)
    listener = gateway.revocations
    if listener is None:
        body["revocations"] = "local"  # SQLite: one gateway, nothing to listen to
    elif listener.connected:
        body["revocations"] = "listening"
    else:
        body.update(revocations="reconnecting", revocations_error=listener.problem)
    body["auth_cache_ttl"] = gateway.authenticator.ttl
    spool = gateway.usage.spool
    body["usage_spool_bytes"] = spool.pending_bytes  # usage not in the database yet
    if spool.full:  # new /v1 requests are refused until the database takes the backlog
        body["usage_spool"] = "full"
    degraded = (
        problem is not None or (listener is not None and not listener.connected) or spool.full
    )
    if degraded:
        body["status"] = "degraded"
    return JSONResponse(body, status_code=503 if degraded else 200)


async def metrics(request: Request) -> Response:
    """Prometheus text; needs an admin token unless MLX_MANAGER_METRICS_PUBLIC is on."""
    gateway = gateway_of(request)
    if not gateway.settings.metrics_public:
        await require_admin(request)
    return Response(gateway.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def _is_openai_path(request: Request) -> bool:
    return request.url.path.startswith("/v1/") or request.url.path == "/v1"


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc, openai_shape=_is_openai_path(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if _is_openai_path(request):
        code = "unknown_url" if exc.status_code == 404 else None
        return openai_error_response(exc.status_code, str(exc.detail), code=code, headers=headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


class LastResortErrors:
    """Turn an unhandled exception into a JSON 500 that still carries the request id.

    Starlette's own handler for `Exception` sits outside every middleware, so its answer would
    lack `x-request-id`; this pure ASGI layer sits inside `RequestIdMiddleware` instead.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request_id = request_id_of(scope)
            path: str = scope.get("path", "")
            if not started and store.replicas.lost_database(exc):
                # Not a bug to report but an outage the client can wait out: a 503 it retries.
                reason = store.replicas.describe(exc)
                log.warning("database unreachable (%s); request %s got 503", reason, request_id)
                outage = ServiceUnavailable(
                    "the gateway cannot reach its database; retry shortly",
                    code="database_unavailable",
                    headers={"Retry-After": str(OUTAGE_RETRY_AFTER)},
                )
                await error_response(outage, openai_shape=path.startswith("/v1"))(
                    scope, receive, send
                )
                return
            log.exception("unhandled error (request %s)", request_id)
            if started:
                raise
            message = f"internal error; quote request id {request_id} when reporting it"
            if path.startswith("/v1"):
                response = openai_error_response(500, message, "server_error", "internal_error")
            else:
                response = JSONResponse({"detail": message, "code": "internal_error"}, 500)
            await response(scope, receive, send)


@dataclass(frozen=True)
class ControlPlane:
    """What the composition root plugs in: routes, and hooks run with the gateway's lifespan.

    `on_open` runs after the core is up (e.g. resume downloads); `on_close` before it closes.
    `state` is the control plane's own object (its hooks are usually its methods), kept as
    `app.state.control` for its routes; the core never looks inside it.
    """

    routes: Sequence[BaseRoute] = ()
    on_open: Sequence[Callable[[Gateway], Awaitable[None]]] = ()
    on_close: Sequence[Callable[[Gateway], Awaitable[None]]] = ()
    state: object = None


def create_app(settings: Settings, control: ControlPlane | None = None) -> Starlette:
    """Build the gateway app; nothing connects until the lifespan starts."""
    control = control or ControlPlane()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = await Gateway.open(settings)
        app.state.gateway = gateway
        try:
            for hook in control.on_open:
                await hook(gateway)
            yield
        finally:
            for hook in control.on_close:
                try:
                    await hook(gateway)
                except Exception:
                    log.exception("shutdown hook failed")
            await gateway.close()

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *proxy_routes(),
        *control.routes,
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(AccessLogMiddleware),
            Middleware(HostAllowlistMiddleware, hosts=allowed_hosts(settings)),
            Middleware(AdminBodyLimitMiddleware, limit=settings.max_admin_body_bytes),
            Middleware(LastResortErrors),
        ],
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
        },
        lifespan=lifespan,
    )
    app.state.control = control.state
    return app
