"""`/api/servers`: the model servers behind the profiles: state, start/stop, and logs."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.auth import require_admin, require_user
from gateway.errors import Conflict, NotFound
from gateway.fleet.placement import LOCAL_NODE
from gateway.runtime import Gateway, gateway_of
from gateway.serving.logfiles import tail
from gateway.serving.manager import ManagedServer
from gateway.sse import SSE_HEADERS, until_stopping

FOLLOW_POLL_SECONDS = 0.25
MAX_TAIL = 10_000


async def list_servers(request: Request) -> Response:
    await require_user(request)
    gateway = gateway_of(request)
    await gateway.servers.measure_all()
    servers = gateway.servers.servers()
    return JSONResponse([entry for server in servers for entry in _entries(gateway, server)])


async def get_server(request: Request) -> Response:
    await require_user(request)
    gateway = gateway_of(request)
    server = server_of(request)
    await gateway.servers.measure(server)
    return JSONResponse(_entries(gateway, server)[0])


def _entries(gateway: Gateway, server: ManagedServer) -> list[dict[str, Any]]:
    """A local profile's server (`node`: "local"); a profile on nodes: one entry per node
    running it (this machine's in full, the others from their heartbeats), or one stopped
    entry (`node`: null) if none does."""
    local = _local_json(server)
    if server.profile.nodes is None:
        return [local]
    # Another node's server: the profile's fields, that node's report, none of this
    # machine's process figures (they describe another process).
    base = {**server.to_json(), **dict.fromkeys(_PROCESS_FIELDS), "node": None}
    entries = [local] if gateway.servers.runs_here(server.profile) else []
    entries += [
        {
            **base,
            "state": report.get("state", "stopped"),
            "inflight": report.get("in_flight", 0),
            "queued": report.get("queued", 0),
            "memory_bytes": report.get("memory_bytes", 0),
            "need_bytes": report.get("need_bytes", server.need_bytes),
            "node": node,
        }
        for node, report in gateway.fleet.servers_of(server.name)
    ]
    return entries or [{**base, "state": "stopped", "inflight": 0, "memory_bytes": 0}]


def _local_json(server: ManagedServer) -> dict[str, Any]:
    """This machine's server of a profile, as the entries of `GET /api/servers` show it."""
    return {**server.to_json(), "node": LOCAL_NODE}


# What `ManagedServer.to_json` says of this machine's process, null on another node's entry.
_PROCESS_FIELDS = (
    "pid",
    "port",
    "started_at",
    "last_used_at",
    "cpu_percent",
    "health_latency_ms",
    "last_error",
)


def local_server_of(request: Request) -> ManagedServer:
    """`server_of`, refusing a profile that runs only on nodes (they start and stop it on
    demand); for one that may also run here, this machine's server."""
    server = server_of(request)
    gateway = gateway_of(request)
    if not gateway.servers.runs_here(server.profile):
        if not gateway.settings.local_node:
            raise Conflict(
                f"profile {server.name!r} runs on nodes, and this gateway is not the node "
                "'local' (MLX_MANAGER_LOCAL_NODE is off): its nodes start and stop it",
                code="runs_on_nodes",
            )
        raise Conflict(
            f"profile {server.name!r} runs only on nodes "
            f"({', '.join(server.profile.nodes or [])}), which start it on demand and stop it "
            "when idle; it is not started or stopped here",
            code="runs_on_nodes",
        )
    return server


async def start_server(request: Request) -> Response:
    """Waits until ready; a failure answers 503 with the server's log tail."""
    await require_admin(request)
    manager = gateway_of(request).servers
    server = local_server_of(request)
    await manager.start(server)
    await manager.measure(server)
    return JSONResponse(_local_json(server))


async def stop_server(request: Request) -> Response:
    await require_admin(request)
    server = local_server_of(request)
    await gateway_of(request).servers.stop(server, reason="stopped by an admin")
    return JSONResponse(_local_json(server))


async def restart_server(request: Request) -> Response:
    await require_admin(request)
    manager = gateway_of(request).servers
    server = local_server_of(request)
    await manager.restart(server)
    await manager.measure(server)
    return JSONResponse(_local_json(server))


async def server_logs(request: Request) -> Response:
    """The log tail as JSON, or followed live over SSE with `Accept: text/event-stream`."""
    await require_user(request)
    manager = gateway_of(request).servers
    server = server_of(request)
    try:
        lines = max(0, min(MAX_TAIL, int(request.query_params.get("tail", "200"))))
    except ValueError:
        lines = 200
    path = manager.log_file(server)
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(
            until_stopping(gateway_of(request).stopping, _follow(request, path, lines)),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    text = await asyncio.to_thread(tail, path, lines)
    return JSONResponse(
        {"profile_id": server.profile_id, "name": server.name, "lines": text.splitlines()}
    )


async def _follow(request: Request, path: Path, lines: int) -> AsyncIterator[str]:
    """Send the tail, then each new line; survives rotation (the file shrinking)."""
    for line in (await asyncio.to_thread(tail, path, lines)).splitlines():
        yield _event(line)
    position = await asyncio.to_thread(_size, path)
    pending = b""
    while not await request.is_disconnected():
        size = await asyncio.to_thread(_size, path)
        if size < position:
            position = 0  # rotated (copy-truncate): start again at the top
        if size > position:
            chunk = await asyncio.to_thread(_read, path, position, size)
            position += len(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                yield _event(raw.decode("utf-8", errors="replace"))
        await asyncio.sleep(FOLLOW_POLL_SECONDS)


def _event(line: str) -> str:
    return f"data: {json.dumps({'line': line})}\n\n"


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _read(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(end - start)


def server_of(request: Request) -> ManagedServer:
    """The managed server of the `{profile_id}` in the path (profiles and servers share ids)."""
    server = gateway_of(request).servers.get(request.path_params["profile_id"])
    if server is None:
        raise NotFound("no profile with this id", code="profile_not_found")
    return server


routes = [
    Route("/api/servers", list_servers, methods=["GET"]),
    Route("/api/servers/{profile_id:int}", get_server, methods=["GET"]),
    Route("/api/servers/{profile_id:int}/start", start_server, methods=["POST"]),
    Route("/api/servers/{profile_id:int}/stop", stop_server, methods=["POST"]),
    Route("/api/servers/{profile_id:int}/restart", restart_server, methods=["POST"]),
    Route("/api/servers/{profile_id:int}/logs", server_logs, methods=["GET"]),
]
