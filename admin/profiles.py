"""`/api/profiles`: a profile is one model server configuration, routed to by its name.

Validation happens here, at write time, so a bad profile is a 422 naming the problem instead of
a server that fails on the first user request.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin.schemas import Strict
from admin.servers import server_of
from gateway import store
from gateway.auth import Principal, require_admin, require_user
from gateway.errors import Conflict, NotFound, Unprocessable
from gateway.http import read_model
from gateway.hub.cache import resolve_model_folder
from gateway.hub.model_info import Kind, describe_model
from gateway.runtime import Gateway, gateway_of
from gateway.serving.launch import BackendUnavailable, build_command
from gateway.serving.logfiles import file_stem, name_clash
from gateway.tables import ServerProfile
from gateway.types import ModelType, iso_utc

MASK = "***"  # what an env value reads as to anyone but an admin signed in with a password
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][\w.:/@+-]*$")]
# A node's name (MLX_MANAGER_NODE_NAME), or "*" for any node.
NodeName = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^(\*|[A-Za-z0-9][\w.:@+-]*)$")
]


class ProfileFields(Strict):
    """Every optional field, shared by create and update (update sends only what changes)."""

    model_path: str | None = Field(default=None, max_length=1000)
    model_type: ModelType = "lm"
    aliases: list[Name] = Field(default_factory=list, max_length=100)
    context_length: int | None = Field(default=None, ge=1, le=10_000_000)
    tool_call_parser: str | None = Field(default=None, max_length=100)
    reasoning_parser: str | None = Field(default=None, max_length=100)
    enable_auto_tool_choice: bool = False
    chat_template_file: str | None = Field(default=None, max_length=1000)
    trust_remote_code: bool = False
    extra_args: list[str] = Field(default_factory=list, max_length=200)
    env: dict[str, str] = Field(default_factory=dict)
    idle_ttl: float | None = Field(default=None, ge=0)
    pinned: bool = False
    memory_gb: float | None = Field(default=None, gt=0, le=100_000)
    auto_start: bool = False
    port: int | None = Field(default=None, ge=1024, le=65535)
    command: list[str] | None = Field(default=None, min_length=1, max_length=200)
    health_path: str = Field(default="/health", pattern=r"^/\S*$", max_length=200)
    # None = this machine only; node names = on those nodes (`mlx-manager node`), "local" being
    # this machine; ["*"] = any node, this machine included (MLX_MANAGER_LOCAL_NODE).
    nodes: list[NodeName] | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("nodes")
    @classmethod
    def _node_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and "*" in value and len(value) > 1:
            raise ValueError('"*" (any node) stands alone')
        if value is not None and len(set(value)) != len(value):
            raise ValueError("node names must differ")
        if value is not None and any(n.lower() == "local" and n != "local" for n in value):
            raise ValueError('write "local" in lower case: it names the gateway\'s own machine')
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"invalid environment variable name {key!r}")
        return value


class ProfileCreate(ProfileFields):
    name: Name


class ProfileUpdate(ProfileFields):
    name: Name | None = None
    model_type: ModelType | None = None  # type: ignore[assignment]


def profile_json(
    profile: ServerProfile,
    state: str | None = None,
    need_bytes: int | None = None,
    *,
    reveal: bool = False,
) -> dict[str, Any]:
    data = profile.model_dump(mode="json")
    if not reveal:
        data["env"] = dict.fromkeys(data["env"], MASK)
    data["need_bytes"] = need_bytes
    data["created_at"] = iso_utc(profile.created_at)
    data["updated_at"] = iso_utc(profile.updated_at)
    data["state"] = state
    return data


async def create_profile(request: Request) -> Response:
    principal = await require_admin(request)
    gateway = gateway_of(request)
    body = await read_model(request, ProfileCreate)
    profile = ServerProfile(**body.model_dump(exclude_none=False, exclude={"model_path"}))
    profile.model_path = body.model_path or ""
    async with gateway.servers.profile_writes:  # check-then-insert must not interleave
        await _validate(gateway, profile)
        async with gateway.sessions() as session:
            await store.profiles.add_profile(session, profile)
        server = await gateway.servers.add_profile(profile)
    return JSONResponse(
        profile_json(
            profile, gateway.state_of(server), server.need_bytes, reveal=_may_see_env(principal)
        ),
        status_code=201,
    )


async def list_profiles(request: Request) -> Response:
    reveal = _may_see_env(await require_user(request))
    gateway = gateway_of(request)
    return JSONResponse(
        [
            profile_json(s.profile, gateway.state_of(s), s.need_bytes, reveal=reveal)
            for s in gateway.servers.servers()
        ]
    )


async def get_profile(request: Request) -> Response:
    reveal = _may_see_env(await require_user(request))
    server = server_of(request)
    state = gateway_of(request).state_of(server)
    return JSONResponse(profile_json(server.profile, state, server.need_bytes, reveal=reveal))


def _may_see_env(principal: Principal) -> bool:
    """A profile's env often holds tokens: only an admin signed in with a password sees it."""
    return principal.is_admin and principal.key_id is None


async def update_profile(request: Request) -> Response:
    principal = await require_admin(request)
    gateway = gateway_of(request)
    server = server_of(request)
    body = await read_model(request, ProfileUpdate)
    # Held through the restart too: a second edit must not be overtaken by the first.
    async with gateway.servers.profile_writes:
        async with gateway.sessions() as session:
            profile = await store.profiles.get_profile(session, server.profile_id)
            if profile is None:
                raise NotFound("no profile with this id", code="profile_not_found")
            changed = _apply(profile, body)
            if changed:
                await _validate(gateway, profile)
                await store.profiles.save_profile(session, profile)
        if changed:
            await gateway.servers.update_profile(profile)
    reveal = _may_see_env(principal)
    state = gateway.state_of(server)
    return JSONResponse(profile_json(profile, state, server.need_bytes, reveal=reveal))


def _apply(profile: ServerProfile, body: ProfileUpdate) -> bool:
    """Copy the fields sent onto `profile`; whether any value really changed.

    An env value sent back as the mask ("***", what a key's GET shows) keeps the stored value,
    so a read-edit-write round trip cannot overwrite a secret with the mask.
    """
    changed = False
    for key in body.model_fields_set:
        value = getattr(body, key)
        if key == "model_path" and value is None:
            value = ""
        if key == "model_type" and value is None:
            continue
        if key == "env":
            value = {k: profile.env.get(k, v) if v == MASK else v for k, v in value.items()}
        if getattr(profile, key) != value:
            setattr(profile, key, value)
            changed = True
    return changed


async def delete_profile(request: Request) -> Response:
    await require_admin(request)
    gateway = gateway_of(request)
    server = server_of(request)
    async with gateway.servers.profile_writes:
        await gateway.servers.remove_profile(server.profile_id)
        async with gateway.sessions() as session:
            await store.profiles.delete_profile(session, server.profile_id)
    return Response(status_code=204)


async def _validate(gateway: Gateway, profile: ServerProfile) -> None:
    """Refuse what would only fail later: clashing names, missing models, unknown flags."""
    taken = gateway.servers.names_in_use(exclude_id=profile.id)
    for name in (profile.name, *profile.aliases):
        if name in taken:
            raise Conflict(
                f"the name {name!r} is already used by another profile", code="name_taken"
            )
    others = (s.name for s in gateway.servers.servers() if s.profile_id != profile.id)
    other = name_clash(profile.name, others)
    if other is not None:
        raise Conflict(
            f"the name {profile.name!r} would share its log file and prompt cache with profile "
            f"{other!r} ({file_stem(other)!r} on disk); choose a name that differs in more "
            "than punctuation or case",
            code="name_clash",
        )
    if len({profile.name, *profile.aliases}) != 1 + len(profile.aliases):
        raise Unprocessable(
            "aliases must differ from the name and from each other", param="aliases"
        )
    if profile.port is not None and profile.port == gateway.settings.port:
        raise Unprocessable("port is the gateway's own port", param="port")
    if profile.command:
        return
    if not profile.model_path:
        raise Unprocessable(
            "model_path is required unless the profile has a command", param="model_path"
        )
    if profile.nodes is not None:
        return  # on nodes: the model is on their disks, checked when a node starts it
    folder = await asyncio.to_thread(
        resolve_model_folder, profile.model_path, gateway.settings.hf_cache_path
    )
    if folder is None:
        raise Unprocessable(
            f"model_path {profile.model_path!r} is neither an existing local folder nor a "
            "repo in the Hugging Face cache; download it first (POST /api/downloads)",
            param="model_path",
        )
    await _check_kind(profile, folder)
    try:
        backend = await gateway.servers.backend_info()
    except BackendUnavailable:
        return  # checked again at start, where the error reaches whoever asked
    build_command(profile, port=profile.port or 1, model_folder=str(folder), backend=backend)


# The profile kinds that load a model of each kind `describe_model` recognises.
FITTING_TYPES: dict[Kind, tuple[ModelType, ...]] = {
    "lm": ("lm",),
    "multimodal": ("multimodal",),
    "embeddings": ("embeddings",),
    "whisper": ("whisper",),
    "image": ("image-generation", "image-edit"),
}


async def _check_kind(profile: ServerProfile, folder: Path) -> None:
    """An `embeddings` profile loads the model with mlx-embeddings, which refuses any other
    architecture; say so at save time, not at the first request. Only when the folder says
    what it holds (a config with a model_type or architectures, or sentence-transformers
    files): a model that says nothing is left to the start to judge."""
    if profile.model_type != "embeddings":
        return
    model = await asyncio.to_thread(describe_model, folder)
    if model.kind == "embeddings" or not (model.model_type or model.architectures):
        return
    what = model.model_type or ", ".join(model.architectures)
    fits = ", ".join(FITTING_TYPES[model.kind])
    raise Unprocessable(
        f"model_path {profile.model_path!r} is a {model.kind} model ({what!r} in its "
        "config.json), which the embeddings loader cannot load; model_type 'embeddings' needs "
        f"an embedding model (BERT, XLM-RoBERTa, ModernBERT, a sentence-transformers folder). "
        f"The model_type that fits: {fits}",
        param="model_type",
        code="model_type_mismatch",
    )


routes = [
    Route("/api/profiles", create_profile, methods=["POST"]),
    Route("/api/profiles", list_profiles, methods=["GET"]),
    Route("/api/profiles/{profile_id:int}", get_profile, methods=["GET"]),
    Route("/api/profiles/{profile_id:int}", update_profile, methods=["PATCH"]),
    Route("/api/profiles/{profile_id:int}", delete_profile, methods=["DELETE"]),
]
