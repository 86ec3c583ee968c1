"""What a machine's server manager reports about itself: a node's heartbeat body, and the
gateway's view of its own machine (the node `local`), which needs no network.

One builder for both, so the gateway places on its own machine by exactly the figures a
remote node would send for the same state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.serving.manager import ServerManager
from gateway.types import ALIVE


def machine_status(
    manager: ServerManager, name: str, url: str | None, active: Mapping[str, int]
) -> dict[str, Any]:
    """Memory, each server and the requests on them. `active` counts, per profile, requests
    from arrival to their last byte; those beyond the server's own in-flight are queued."""
    servers = []
    for server in manager.servers():
        queued = max(0, active.get(server.name, 0) - server.inflight)
        servers.append(
            {
                "profile": server.name,
                "state": server.state,
                "in_flight": server.inflight,
                "queued": queued,
                "memory_bytes": server.need_bytes if server.state in ALIVE else 0,
                "need_bytes": server.need_bytes,
                "pinned": server.profile.pinned,
            }
        )
    used = manager.resident_bytes()
    return {
        "name": name,
        "url": url,
        "memory": {
            "cap_bytes": manager.cap_bytes,
            "used_bytes": used,
            "free_bytes": max(0, manager.cap_bytes - used),
        },
        "servers": servers,
        "in_flight": sum(s["in_flight"] for s in servers),
        "queued": sum(s["queued"] for s in servers),
    }
