"""The `/api` control plane, built on the gateway's core."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from admin import (
    auth,
    downloads,
    keys,
    models,
    nodes,
    profiles,
    servers,
    system,
    ui,
    usage,
    users,
)
from admin.state import AdminState
from gateway.app import ControlPlane


def control_plane(download_options: Mapping[str, Any] | None = None) -> ControlPlane:
    """The `/api` routes and their one `AdminState` (`download_options`: see `AdminState`)."""
    state = AdminState(download_options)
    return ControlPlane(
        routes=[
            *auth.routes,
            *users.routes,
            *keys.routes,
            *profiles.routes,
            *servers.routes,
            *nodes.routes,
            *usage.routes,
            *models.routes,
            *downloads.routes,
            *system.routes,
            *ui.routes,
        ],
        on_open=[state.open],
        on_close=[state.close],
        state=state,
    )
