"""`/api/downloads`: start, follow and cancel model downloads into the local HF cache.

The `DownloadManager` lives as long as the gateway: `on_open` creates it (and resumes what a
stopped gateway left unfinished), `on_close` stops its transfers. It is kept in `_MANAGERS`,
keyed by the gateway object's id, because the hooks receive the gateway and the routes reach
the same gateway through the request; several apps in one process (tests) never share one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import Field
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from admin.schemas import Strict
from gateway.auth import require_admin, require_user
from gateway.errors import ServiceUnavailable
from gateway.http import read_model
from gateway.hub.cache import default_cache_dir
from gateway.hub.jobs import DownloadManager
from gateway.runtime import Gateway, gateway_of
from gateway.sse import SSE_HEADERS, until_stopping

KEEPALIVE_SECONDS = 15.0
_MANAGERS: dict[int, DownloadManager] = {}


class DownloadRequest(Strict):
    model_id: str = Field(min_length=3, max_length=300)
    revision: str | None = Field(default=None, min_length=1, max_length=200)


def downloads_opener(**options: Any) -> Callable[[Gateway], Awaitable[None]]:
    """The `on_open` hook creating the gateway's `DownloadManager` with keyword `options`
    (tests pass `retry_base_seconds=` and `free_bytes=` through their own control plane)."""

    async def open_downloads(gateway: Gateway) -> None:
        cache = gateway.settings.hf_cache_path or default_cache_dir()
        manager = DownloadManager(gateway.settings, gateway.sessions, cache, **options)
        _MANAGERS[id(gateway)] = manager
        gateway.metrics.add_collector(lambda: _download_metrics(manager))
        await manager.open()

    return open_downloads


open_downloads = downloads_opener()


def _download_metrics(manager: DownloadManager) -> list[Metric]:
    received = CounterMetricFamily(
        "mlx_manager_download_bytes", "Bytes downloaded from the hub since the gateway started."
    )
    received.add_metric([], manager.transferred_bytes)
    active = GaugeMetricFamily("mlx_manager_downloads_active", "Downloads transferring now.")
    active.add_metric([], manager.active_count)
    return [received, active]


async def close_downloads(gateway: Gateway) -> None:
    manager = _MANAGERS.pop(id(gateway), None)
    if manager is not None:
        await manager.close()


def manager_of(conn: HTTPConnection) -> DownloadManager:
    manager = _MANAGERS.get(id(gateway_of(conn)))
    if manager is None:
        raise ServiceUnavailable("downloads are not available: the gateway is starting or stopping")
    return manager


async def start_download(request: Request) -> Response:
    """202 at once with the record; the same unfinished model asked again gives the same one."""
    await require_admin(request)
    body = await read_model(request, DownloadRequest)
    view, _created = await manager_of(request).start(body.model_id, body.revision)
    return JSONResponse(view, status_code=202, headers={"Location": f"/api/downloads/{view['id']}"})


async def list_downloads(request: Request) -> Response:
    await require_user(request)
    return JSONResponse(await manager_of(request).views())


async def get_download(request: Request) -> Response:
    await require_user(request)
    return JSONResponse(await manager_of(request).get(request.path_params["download_id"]))


async def cancel_download(request: Request) -> Response:
    """Stop it and remove its unfinished files (see gateway.hub.jobs for why)."""
    await require_admin(request)
    return JSONResponse(await manager_of(request).cancel(request.path_params["download_id"]))


async def download_events(request: Request) -> Response:
    """SSE: one `download` event per change of any download, a comment as keepalive."""
    await require_user(request)
    manager = manager_of(request)
    return StreamingResponse(
        until_stopping(gateway_of(request).stopping, _sse(manager)),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


async def _sse(manager: DownloadManager) -> AsyncIterator[str]:
    yield ": connected\n\n"
    async for view in manager.events(KEEPALIVE_SECONDS):
        if view is None:
            yield ": keepalive\n\n"
        else:
            yield f"event: download\ndata: {json.dumps(view)}\n\n"


routes = [
    Route("/api/downloads", start_download, methods=["POST"]),
    Route("/api/downloads", list_downloads, methods=["GET"]),
    Route("/api/downloads/events", download_events, methods=["GET"]),
    Route("/api/downloads/{download_id:int}", get_download, methods=["GET"]),
    Route("/api/downloads/{download_id:int}", cancel_download, methods=["DELETE"]),
]
