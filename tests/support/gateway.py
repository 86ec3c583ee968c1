"""Run the real gateway app under uvicorn on a free loopback port, inside the test's loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

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


@asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[GatewayHandle]:
    app = build_app(settings)
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
