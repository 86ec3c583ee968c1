"""Run the real gateway app under uvicorn on a free loopback port, inside the test's loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette

from admin import control_plane
from gateway.app import create_app
from gateway.main import build_app
from gateway.runtime import Gateway
from gateway.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class GatewayHandle:
    url: str
    app: Starlette
    settings: Settings

    @property
    def core(self) -> Gateway:
        core: Gateway = self.app.state.gateway
        return core


def gateway_app(settings: Settings, downloads: Mapping[str, Any] | None = None) -> Starlette:
    """The gateway app as `mlx-manager serve` builds it; `downloads` are keyword options of its
    `DownloadManager` (e.g. `retry_base_seconds`, `free_bytes`), for tests that need them."""
    if not downloads:
        return build_app(settings)
    return create_app(settings, control_plane(download_options=downloads))


@asynccontextmanager
async def running_gateway(
    settings: Settings, downloads: Mapping[str, Any] | None = None
) -> AsyncIterator[GatewayHandle]:
    app = gateway_app(settings, downloads)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("gateway exited during start")
        await asyncio.sleep(0.01)
    try:
        yield GatewayHandle(url=f"http://127.0.0.1:{port}", app=app, settings=settings)
    finally:
        app.state.gateway.stopping.set()
        server.should_exit = True
        await asyncio.wait_for(task, timeout=60)
