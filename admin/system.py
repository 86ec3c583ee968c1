"""`/api/system`: memory (the cap and who holds what) and facts about the machine."""

from __future__ import annotations

import asyncio

import psutil
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin.state import admin_state_of
from gateway.auth import require_user
from gateway.runtime import gateway_of
from gateway.serving.launch import find_backend
from gateway.system_info import host_facts
from gateway.types import ALIVE, MODEL_TYPES, RUNNING, SERVER_STATES


async def memory(request: Request) -> Response:
    await require_user(request)
    manager = gateway_of(request).servers
    await manager.measure_all()
    virtual = await asyncio.to_thread(psutil.virtual_memory)
    servers = [
        {
            "name": s.name,
            "state": s.state,
            "memory_bytes": s.measured_bytes,
            "need_bytes": s.need_bytes,
        }
        for s in manager.servers()
        if s.state in ALIVE
    ]
    return JSONResponse(
        {
            "total_bytes": virtual.total,
            "available_bytes": virtual.available,
            "cap_bytes": manager.cap_bytes,
            "servers_bytes": sum(s["memory_bytes"] for s in servers),
            "reserved_bytes": manager.resident_bytes(),
            "servers": servers,
        }
    )


async def info(request: Request) -> Response:
    await require_user(request)
    gateway = gateway_of(request)
    facts = await asyncio.to_thread(host_facts)
    executable = find_backend(gateway.settings)
    packages = await admin_state_of(request).backend_packages(executable)
    return JSONResponse(
        {
            **facts,
            # The page reads the vocabulary here instead of keeping its own copy.
            "model_types": list(MODEL_TYPES),
            "server_states": list(SERVER_STATES),
            "running_states": [state for state in SERVER_STATES if state in RUNNING],
            "backend": {"executable": executable, "packages": packages},
            "settings": {
                "home": str(gateway.settings.home),
                "offline_mode": gateway.settings.offline_mode,
                "hf_organization": gateway.settings.hf_organization,
                "idle_ttl": gateway.settings.idle_ttl,
                "queue_timeout": gateway.settings.queue_timeout,
                "max_memory_percent": gateway.settings.max_memory_percent,
                "max_memory_gb": gateway.settings.max_memory_gb,
            },
        }
    )


routes = [
    Route("/api/system/memory", memory, methods=["GET"]),
    Route("/api/system/info", info, methods=["GET"]),
]
