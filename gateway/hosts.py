"""The Host allowlist: answer only requests addressed to a name this gateway is known by.

DNS rebinding lets a web page on `evil.example` point its own name at 127.0.0.1 and then talk
to a local gateway as a same-origin page: CORS never stops it, only the `Host` header tells.
So requests whose Host is not on the list get `400 host_not_allowed` before any route runs.
The list is `MLX_MANAGER_ALLOWED_HOSTS` (comma-separated names; `*.example.com` for subdomains;
`*` for any), by default the loopback names, the bind address, and, when bound to every
interface, this machine's own names and addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import psutil
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import openai_error_response
from gateway.settings import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("", "0.0.0.0", "::")


def default_allowed_hosts(bind_host: str) -> list[str]:
    hosts = list(LOOPBACK_NAMES)
    if bind_host not in WILDCARD_BINDS:
        hosts.append(bind_host)
        return hosts
    # Bound to every interface: the names and addresses clients on the network can use.
    # No DNS lookups here (getfqdn can hang on a broken resolver); add other names explicitly.
    name = socket.gethostname()
    hosts += [name, f"{name}.local"]
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                hosts.append(address.address.split("%", 1)[0])  # drop an IPv6 zone id
    return hosts


def allowed_hosts(settings: Settings) -> list[str]:
    if settings.allowed_hosts is None or not settings.allowed_hosts.strip():
        return default_allowed_hosts(settings.host)
    return [part.strip() for part in settings.allowed_hosts.split(",") if part.strip()]


def host_name(value: str) -> str:
    """The name part of a Host header value: no port, no IPv6 brackets, no trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    name, colon, port = value.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        value = name
    return value.rstrip(".")


def _normalise(pattern: str) -> str:
    pattern = pattern.strip().lower().rstrip(".")
    if pattern.startswith("[") and pattern.endswith("]"):
        pattern = pattern[1:-1]
    try:
        return str(ipaddress.ip_address(pattern))  # one spelling of each IPv6 address
    except ValueError:
        return pattern


class HostAllowlistMiddleware:
    """Pure ASGI (the `/v1` path streams); a set lookup per request."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str]) -> None:
        self.app = app
        patterns = {_normalise(h) for h in hosts}
        self.any = "*" in patterns
        self.exact = frozenset(p for p in patterns if not p.startswith("*."))
        self.suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))

    def allows(self, host: str) -> bool:
        name = _normalise(host_name(host))
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
                break
        # No Host at all (HTTP/1.0 probes) cannot be a rebinding browser: let it through.
        if host is None or self.allows(host):
            await self.app(scope, receive, send)
            return
        shown = host if len(host) <= 100 else host[:100] + "..."
        message = (
            f"Host {shown!r} is not allowed; add it to MLX_MANAGER_ALLOWED_HOSTS "
            "(a guard against DNS rebinding)"
        )
        path: str = scope.get("path", "")
        if path == "/v1" or path.startswith("/v1/"):
            response = openai_error_response(
                400, message, "invalid_request_error", "host_not_allowed"
            )
        else:
            response = JSONResponse({"detail": message, "code": "host_not_allowed"}, 400)
        await response(scope, receive, send)
