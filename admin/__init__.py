"""The `/api` control plane, built on the gateway's core."""

from __future__ import annotations

from starlette.routing import BaseRoute

from admin import auth, keys, profiles, servers, users


def control_routes() -> list[BaseRoute]:
    return [*auth.routes, *users.routes, *keys.routes, *profiles.routes, *servers.routes]
