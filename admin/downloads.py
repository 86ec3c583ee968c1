"""`/api/downloads`: start, follow and cancel model downloads into the local HF cache.

The `DownloadManager` belongs to the app's `AdminState` (admin/state.py), which creates it when
the gateway opens (resuming what a stopped gateway left unfinished) and stops its transfers when
the gateway closes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from pydantic import Field
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from admin.schemas import Strict
from admin.state import admin_state_of
from gateway.auth import require_admin, require_user
from gateway.http import read_model
from gateway.hub.jobs import DownloadManager
from gateway.runtime import gateway_of
from gateway.sse import SSE_HEADERS, until_stopping

KEEPALIVE_SECONDS = 15.0


class DownloadRequest(Strict):
    model_id: str = Field(min_length=3, max_length=300)
    revision: str | None = Field(default=None, min_length=1, max_length=200)


def manager_of(conn: HTTPConnection) -> DownloadManager:
    """The app's download manager (503 while the gateway is starting or stopping)."""
    return admin_state_of(conn).downloads


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
