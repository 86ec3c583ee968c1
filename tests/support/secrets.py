"""Every secret the test session handled, so a last test can prove none reached a log."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import httpx

SEEN: set[str] = set()
_SECRET_FIELDS = frozenset({"password", "access_token", "key", "api_key", "token"})


def remember(value: Any) -> None:
    """Collect secret-looking fields from a JSON body (passwords, tokens, API keys)."""
    if isinstance(value, dict):
        for name, item in value.items():
            if name in _SECRET_FIELDS and isinstance(item, str) and len(item) >= 8:
                SEEN.add(item)
            else:
                remember(item)
    elif isinstance(value, list):
        for item in value:
            remember(item)


async def on_request(request: httpx.Request) -> None:
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer ") and len(authorization) > 20:
        SEEN.add(authorization[7:])
    if request.headers.get("content-type", "").startswith("application/json"):
        with contextlib.suppress(ValueError, httpx.RequestNotRead):
            remember(json.loads(request.content))


async def on_response(response: httpx.Response) -> None:
    if response.headers.get("content-type", "").startswith("application/json"):
        await response.aread()
        with contextlib.suppress(ValueError):
            remember(response.json())


HOOKS: dict[str, list[Callable[..., Any]]] = {"request": [on_request], "response": [on_response]}
