"""Just-in-time profiles: "download, then just call it".

When `/v1` names a model that has no profile but is a complete MLX model in the local Hugging
Face cache, a profile is made from what the model's config says (kind, parsers for its family)
and saved like any other, so it shows up in `/api/profiles` and can be edited afterwards.
Off with `MLX_MANAGER_AUTO_PROFILES=false`.
"""

from __future__ import annotations

import asyncio
import logging

from gateway import store
from gateway.hub.model_info import (
    REASONING_PARSERS,
    TOOL_CALL_PARSERS,
    profile_for_cached_model,
)
from gateway.runtime import Gateway
from gateway.serving.launch import BackendUnavailable
from gateway.serving.logfiles import name_clash
from gateway.serving.manager import ManagedServer
from gateway.tables import ServerProfile

log = logging.getLogger("mlx_manager.jit")


async def profile_on_demand(gateway: Gateway, model: str) -> ManagedServer | None:
    """The server for `model`, creating its profile from the cache; None when not cached."""
    if not gateway.settings.auto_profiles or "/" not in model:
        return None
    async with gateway.servers.profile_writes:  # two first requests make one profile
        existing = gateway.servers.resolve(model)
        if existing is not None:
            return existing
        tool_parsers, reasoning_parsers = await _parser_choices(gateway)
        cached = await asyncio.to_thread(
            profile_for_cached_model,
            model,
            gateway.settings.hf_cache_path,
            tool_parsers,
            reasoning_parsers,
        )
        if cached is None:
            return None
        # One profile per model, named as the cache spells it, however a client capitalises.
        existing = gateway.servers.resolve(cached.repo_id)
        if existing is not None:
            return existing
        fields = cached.profile_fields(_free_name(gateway, cached.repo_id))
        if fields["name"] != cached.repo_id:
            fields["aliases"] = [cached.repo_id]  # still what clients call it
        profile = ServerProfile(**fields)
        async with gateway.sessions() as session:
            await store.profiles.add_profile(session, profile)
        log.info("created profile %r for cached model %s", model, cached.repo_id)
        return await gateway.servers.add_profile(profile)


def _free_name(gateway: Gateway, repo_id: str) -> str:
    """`repo_id`, or `repo_id-2`, `-3`... when another profile's files (log, prompt cache)
    already have its file name: a profile named `org_model` must keep its own."""
    names = [server.name for server in gateway.servers.servers()]
    taken = gateway.servers.names_in_use()
    name, number = repo_id, 1
    while name in taken or name_clash(name, names) is not None:
        number += 1
        name = f"{repo_id}-{number}"
    return name


async def _parser_choices(gateway: Gateway) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        backend = await gateway.servers.backend_info()
    except BackendUnavailable:
        return tuple(TOOL_CALL_PARSERS), tuple(REASONING_PARSERS)
    return (
        backend.choices.get("--tool-call-parser", tuple(TOOL_CALL_PARSERS)),
        backend.choices.get("--reasoning-parser", tuple(REASONING_PARSERS)),
    )
