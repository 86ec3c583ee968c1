"""The node token: the shared secret the gateway and its nodes present to each other."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers

from gateway.errors import NotFound, Unauthorized


class NodesDisabled(NotFound):
    code = "nodes_disabled"


def require_node_token(headers: Headers, token: str | None) -> None:
    """Pass only `Authorization: Bearer <token>` (compared in constant time); anything else is
    401. With no token configured, nodes are off: 404 saying how to turn them on."""
    if token is None:
        raise NodesDisabled(
            "nodes are disabled on this server: set MLX_MANAGER_NODE_TOKEN (the same secret "
            "on the gateway and every node) to enable them"
        )
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode(), token.encode()
    ):
        raise Unauthorized("a node token is required (Authorization: Bearer <node token>)")
