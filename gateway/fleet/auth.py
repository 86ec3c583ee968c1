"""Node tokens: the secrets the gateway and its nodes present to each other, checked in
constant time: one shared by all (MLX_MANAGER_NODE_TOKEN), or each node's own
(MLX_MANAGER_NODE_TOKENS on the gateway, bound to the node's name)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from starlette.datastructures import Headers

from gateway.errors import NotFound, Unauthorized


class NodesDisabled(NotFound):
    code = "nodes_disabled"


_DISABLED = (
    "nodes are disabled on this server: set MLX_MANAGER_NODE_TOKEN (the same secret on the "
    "gateway and every node), or MLX_MANAGER_NODE_TOKENS (each node its own), to enable them"
)
_REQUIRED = "a node token is required (Authorization: Bearer <node token>)"


def require_node_token(headers: Headers, token: str | None) -> None:
    """Pass only `Authorization: Bearer <token>`; anything else is 401. With no token
    configured, nodes are off: 404 saying how to turn them on. (A node checks the gateway.)"""
    if token is None:
        raise NodesDisabled(_DISABLED)
    if not _same(_bearer(headers), token):
        raise Unauthorized(_REQUIRED)


def authenticate_node(headers: Headers, shared: str | None, own: Mapping[str, str]) -> str | None:
    """Which node may use this request's token (a gateway checks a node): the name a per-node
    token is bound to, or None for the shared token (any name). 404 when nodes are off, 401
    for anything else. Every token is compared, so timing does not tell which one matched."""
    if shared is None and not own:
        raise NodesDisabled(_DISABLED)
    presented = _bearer(headers)
    bound = [name for name, token in own.items() if _same(presented, token)]
    if shared is not None and _same(presented, shared):
        return None
    if bound:
        return bound[0]
    raise Unauthorized(_REQUIRED)


def _bearer(headers: Headers) -> str:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _same(presented: str, token: str) -> bool:
    return bool(presented) and hmac.compare_digest(presented.encode(), token.encode())
