"""`/api/models`: search the hub for MLX models, and the models in the local HF cache.

Search answers 503 in offline mode without touching the network; the local listing works in
any mode. Deleting a model that a running server loads is refused (409): the server would keep
its weights mapped and fail on its next start in a way nobody could explain.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin.downloads import manager_of
from gateway.auth import require_admin, require_user
from gateway.errors import Conflict, NotFound, Unprocessable
from gateway.http import describe_errors
from gateway.hub.cache import delete_model
from gateway.hub.catalog import LocalModel
from gateway.hub.client import (
    MAX_SEARCH_LIMIT,
    OFFLINE_MESSAGE,
    OfflineMode,
    call_hub,
    search_models,
)
from gateway.runtime import gateway_of
from gateway.serving.manager import ManagedServer
from gateway.types import GIB, RUNNING

_SORT_ALIASES = {"last_modified": "lastModified", "lastmodified": "lastModified"}


class SearchQuery(BaseModel):
    query: str | None = Field(default=None, max_length=200)
    author: str | None = Field(default=None, max_length=100)
    sort: Literal["downloads", "likes", "lastModified"] = "downloads"
    max_size_gb: Annotated[float | None, Field(gt=0)] = None
    limit: Annotated[int, Field(ge=1, le=MAX_SEARCH_LIMIT)] = 20

    @field_validator("sort", mode="before")
    @classmethod
    def _sort_alias(cls, value: object) -> object:
        return _SORT_ALIASES.get(value.lower(), value) if isinstance(value, str) else value


async def search(request: Request) -> Response:
    """`author` defaults to MLX_MANAGER_HF_ORGANIZATION; send `author=` (empty) for any."""
    await require_user(request)
    gateway = gateway_of(request)
    params = dict(request.query_params)
    params.setdefault("query", params.pop("q", ""))
    if "author" not in params:
        params["author"] = gateway.settings.hf_organization or ""
    try:
        query = SearchQuery.model_validate({k: v for k, v in params.items() if k in _FIELDS})
    except ValidationError as exc:
        raise Unprocessable(describe_errors(exc)) from exc
    if gateway.settings.offline_mode:
        raise OfflineMode(OFFLINE_MESSAGE)
    downloaded = await manager_of(request).catalog.complete_ids()
    results = await call_hub(
        search_models,
        query.query,
        author=query.author or None,
        sort=query.sort,
        limit=query.limit,
        max_size_bytes=int(query.max_size_gb * GIB) if query.max_size_gb else None,
        downloaded=downloaded,
    )
    return JSONResponse([r.to_json() for r in results])


_FIELDS = frozenset(SearchQuery.model_fields)


async def list_local(request: Request) -> Response:
    await require_user(request)
    manager = manager_of(request)
    downloading = manager.unfinished_models()
    return JSONResponse(
        [_with_state(m.to_json(), m, downloading) for m in await manager.catalog.models()]
    )


async def get_local(request: Request) -> Response:
    await require_user(request)
    manager = manager_of(request)
    model = await _local_model(request)
    return JSONResponse(_with_state(model.to_json(detail=True), model, manager.unfinished_models()))


async def delete_local(request: Request) -> Response:
    await require_admin(request)
    manager = manager_of(request)
    model = await _local_model(request)
    users = [s.name for s in gateway_of(request).servers.servers() if _loads(s, model)]
    if users:
        raise Conflict(
            f"{model.repo_id} is in use by running server(s) {', '.join(sorted(users))}; stop "
            "them first (POST /api/servers/<profile_id>/stop)",
            code="model_in_use",
        )
    if model.repo_id.lower() in manager.unfinished_models():
        raise Conflict(
            f"{model.repo_id} is being downloaded; cancel the download first "
            "(DELETE /api/downloads/<id>)",
            code="download_in_progress",
        )
    freed = await asyncio.to_thread(delete_model, manager.cache, model.repo_id)
    manager.catalog.invalidate()
    return JSONResponse({"id": model.repo_id, "deleted": True, "freed_bytes": freed})


async def _local_model(request: Request) -> LocalModel:
    model_id: str = request.path_params["model_id"]
    manager = manager_of(request)
    model = await manager.catalog.get(model_id)
    if model is None:
        raise NotFound(
            f"{model_id} is not in the local model cache ({manager.cache}); download it with "
            "POST /api/downloads",
            code="model_not_found",
        )
    return model


def _with_state(data: dict[str, Any], model: LocalModel, downloading: set[str]) -> dict[str, Any]:
    data["downloading"] = model.repo_id.lower() in downloading
    return data


def _loads(server: ManagedServer, model: LocalModel) -> bool:
    """Does this running server load `model`: by repo id, or by a path inside its folder."""
    if server.state not in RUNNING:
        return False
    path = server.profile.model_path
    if not path:
        return False
    if path.lower() == model.repo_id.lower():
        return True
    try:
        return Path(path).expanduser().resolve().is_relative_to(model.path.resolve())
    except (OSError, ValueError):
        return False


routes = [
    Route("/api/models/search", search, methods=["GET"]),
    Route("/api/models/local", list_local, methods=["GET"]),
    Route("/api/models/local/{model_id:path}", get_local, methods=["GET"]),
    Route("/api/models/local/{model_id:path}", delete_local, methods=["DELETE"]),
]
