"""The `/api` control plane, built on the gateway's core."""

from __future__ import annotations

from admin import auth, downloads, keys, models, profiles, servers, system, ui, usage, users
from gateway.app import ControlPlane


def control_plane() -> ControlPlane:
    return ControlPlane(
        routes=[
            *auth.routes,
            *users.routes,
            *keys.routes,
            *profiles.routes,
            *servers.routes,
            *usage.routes,
            *models.routes,
            *downloads.routes,
            *system.routes,
            *ui.routes,
        ],
        on_open=[downloads.open_downloads],
        on_close=[downloads.close_downloads],
    )
