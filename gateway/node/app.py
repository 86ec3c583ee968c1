"""The node's HTTP API: `/v1/*` like the gateway's data plane, for the gateway only.

Authenticated with the node token (no users, keys, usage or limits here: the gateway accounts),
routed by `model` to this node's server for that profile, started on demand, with the same
serving layer as a single-machine gateway (memory cap, eviction, TTL, health, orphans). Plus
`GET /node/status` (node token) and an open `GET /health`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, error_response
from gateway.fleet.auth import require_node_token
from gateway.fleet.registry import UNASSIGNED_HEADER
from gateway.node.agent import NodeAgent
from gateway.proxy import ENDPOINTS, ModelNotFound, read_routed, serve_local, until_disconnect
from gateway.request_id import RequestIdMiddleware
from gateway.runtime import Gateway
from gateway.settings import Settings


def _agent(scope: Scope) -> NodeAgent:
    agent: NodeAgent = scope["app"].state.node
    return agent


class NodeEndpoint:
    """POST /v1/<endpoint> from the gateway: check the node token, route, serve here."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        agent = _agent(scope)
        gateway = agent.gateway
        request = Request(scope, receive)
        try:
            require_node_token(request.headers, gateway.settings.node_token)
            model, _, body = await read_routed(request, gateway.settings)
            server = gateway.servers.resolve(model)
            if server is None:
                raise ModelNotFound(
                    f"the model '{model}' is not assigned to node {agent.name}",
                    param="model",
                    headers={UNASSIGNED_HEADER: model},
                )
        except GatewayError as exc:
            await error_response(exc, openai_shape=True)(scope, receive, send)
            return
        agent.active[server.name] += 1
        try:
            await until_disconnect(
                receive, serve_local(gateway, scope, receive, send, server, body)
            )
        finally:
            agent.active[server.name] -= 1


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def node_status(request: Request) -> Response:
    agent = _agent(request.scope)
    try:
        require_node_token(request.headers, agent.gateway.settings.node_token)
    except GatewayError as exc:
        return error_response(exc, openai_shape=False)
    return JSONResponse(agent.status())


def create_node_app(settings: Settings) -> Starlette:
    """The node app; nothing starts until the lifespan does."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = await Gateway.open(settings)
        app.state.gateway = gateway
        agent = NodeAgent(gateway)
        app.state.node = agent
        agent.start()
        try:
            yield
        finally:
            await agent.close()
            await gateway.close()

    endpoint = NodeEndpoint()
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/node/status", node_status, methods=["GET"]),
        *(Route(path, endpoint, methods=["POST"]) for path in ENDPOINTS),
    ]
    return Starlette(routes=routes, middleware=[Middleware(RequestIdMiddleware)], lifespan=lifespan)
