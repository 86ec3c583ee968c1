"""`/api/nodes`: machines running `mlx-manager node`; their heartbeats, and the admin list.

A node's heartbeat (`POST /api/nodes/heartbeat`, node token as bearer) records its state in the
`nodes` table, so every replica routes by it, and answers with the profiles the node may run:
the node reconciles its own registry to exactly that list.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin.schemas import Strict
from gateway import store
from gateway.auth import require_admin
from gateway.errors import Conflict, Forbidden, NotFound
from gateway.fleet.auth import authenticate_node
from gateway.fleet.placement import LOCAL_NODE, allowed
from gateway.http import read_model
from gateway.runtime import gateway_of
from gateway.tables import Node
from gateway.types import utcnow

NodeName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][\w.:@+-]*$")]
Count = Annotated[int, Field(ge=0, le=10**18)]


class Memory(Strict):
    cap_bytes: Count
    used_bytes: Count
    free_bytes: Count


class ServerStatus(Strict):
    profile: str = Field(max_length=200)
    state: str = Field(max_length=16)
    in_flight: Count = 0
    queued: Count = 0
    memory_bytes: Count = 0
    need_bytes: Count = 0
    pinned: bool = False


class Heartbeat(Strict):
    name: NodeName
    url: str = Field(pattern=r"^https?://\S+$", max_length=2000)
    memory: Memory
    servers: list[ServerStatus] = Field(default_factory=list, max_length=1000)
    in_flight: Count = 0
    queued: Count = 0

    @field_validator("name")
    @classmethod
    def _not_local(cls, value: str) -> str:
        if value.lower() == LOCAL_NODE:
            raise ValueError(
                f'"{LOCAL_NODE}" names the gateway\'s own machine; set MLX_MANAGER_NODE_NAME '
                "on this node to another name"
            )
        return value


async def heartbeat(request: Request) -> Response:
    gateway = gateway_of(request)
    settings = gateway.settings
    bound = authenticate_node(request.headers, settings.node_token, settings.node_token_map)
    body = await read_model(request, Heartbeat)
    if bound is None and body.name in settings.node_token_map:
        raise Forbidden(
            f"node {body.name!r} has its own token (MLX_MANAGER_NODE_TOKENS): the shared "
            "token may not speak for it",
            code="wrong_node",
        )
    if bound is not None and body.name != bound:
        raise Forbidden(
            f"this node token belongs to node {bound!r}, not {body.name!r}: give each node "
            "its own token (MLX_MANAGER_NODE_TOKENS) and its matching MLX_MANAGER_NODE_NAME",
            code="wrong_node",
        )
    status = body.model_dump(mode="json")
    seen = utcnow()
    gateway.fleet.heard(Node(name=body.name, url=body.url, last_seen=seen, status=status))
    try:  # for the other replicas; this one counts the heartbeat either way
        async with asyncio.timeout(gateway.settings.ready_timeout):
            async with gateway.sessions() as session:
                await store.nodes.record_heartbeat(session, body.name, body.url, status, seen)
    except Exception as exc:
        if not (isinstance(exc, TimeoutError) or store.replicas.lost_database(exc)):
            raise
        gateway.fleet.database_problem(store.replicas.describe(exc))
    profiles = [
        _for_node(server.profile.model_dump(mode="json"))
        for server in gateway.servers.servers()
        if server.profile.nodes is not None and allowed(body.name, server.profile.nodes)
    ]
    return JSONResponse({"profiles": profiles})


def _for_node(profile: dict[str, Any]) -> dict[str, Any]:
    """The whole profile (env included: the node launches with it), to run on the node itself."""
    profile["nodes"] = None
    return profile


async def list_nodes(request: Request) -> Response:
    """Every node, read fresh from the table (the cached view while it is out of reach)."""
    await require_admin(request)
    gateway = gateway_of(request)
    await gateway.fleet.refresh()
    return JSONResponse(gateway.fleet.to_json())


async def delete_node(request: Request) -> Response:
    """Forget a node (one retired for good); a node still running comes back with its next
    heartbeat. Its servers are not stopped by this: stop the node itself."""
    await require_admin(request)
    gateway = gateway_of(request)
    name = request.path_params["name"]
    if name == LOCAL_NODE:
        raise Conflict(
            "the node 'local' is this gateway's own machine; it cannot be forgotten (set "
            "MLX_MANAGER_LOCAL_NODE=false to keep profiles on nodes off it)",
            code="local_node",
        )
    async with gateway.sessions() as session:
        found = await store.nodes.delete_node(session, name)
    if not found:
        raise NotFound(f"no node named {name!r}", code="node_not_found")
    gateway.fleet.forget(name)
    return Response(status_code=204)


routes = [
    Route("/api/nodes", list_nodes, methods=["GET"]),
    Route("/api/nodes/{name}", delete_node, methods=["DELETE"]),
    Route("/api/nodes/heartbeat", heartbeat, methods=["POST"]),
]
