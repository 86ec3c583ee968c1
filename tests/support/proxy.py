"""Helpers for the /v1 proxy tests, and a tiny echo upstream run as a real subprocess.

Two parts:

* `ProxyEnv` / `proxy_env`: a real gateway (uvicorn on a real port, in the test's loop) with an
  admin signed in, plus helpers to add `command` profiles (the stub model server, or the echo
  upstream below), users, API keys, and to poll the stubs' events files and `/api/servers`.
  Nothing sleeps to wait for something: `wait_until` polls with a deadline.
* The echo upstream (`python tests/support/proxy.py --port P --events FILE`): an aiohttp server
  that records each request's raw body and headers, and answers as the request's `x-echo-*`
  headers say (status, content type, body, delay). The stub model server records parsed fields
  only; byte-for-byte forwarding and header handling need the raw request.

The gateway runs the echo upstream as a script, so this module's top level imports only the
standard library, aiohttp and httpx (the project itself is imported where it is used).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from aiohttp import web

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from gateway.tables import Usage
    from tests.support.gateway import GatewayHandle

ECHO_SCRIPT = Path(__file__).resolve()
STUB_SCRIPT = ECHO_SCRIPT.with_name("stub_server.py")
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password"
USER_PASSWORD = "user-password"

T = TypeVar("T")


# ---- polling and small helpers -------------------------------------------------------------


class WaitTimeout(AssertionError):
    pass


async def wait_until(
    predicate: Callable[[], Awaitable[T | None]],
    timeout: float = 15.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Await `predicate()` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{message} not met within {timeout} s (last value: {value!r})")
        await asyncio.sleep(interval)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON-lines events of a stub or echo upstream; a missing file means none yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stub_command(*options: str) -> list[str]:
    """A `command` profile running the stub model server with the gateway's placeholders."""
    return [sys.executable, str(STUB_SCRIPT), "--port", "{port}", "--name", "{name}", *options]


def echo_command(events: Path) -> list[str]:
    """A `command` profile running the echo upstream of this module."""
    return [sys.executable, str(ECHO_SCRIPT), "--port", "{port}", "--events", str(events)]


def chat(model: str, content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def sse_payloads(raw: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order ([DONE] included)."""
    return [
        line.removeprefix("data:").strip()
        for line in raw.decode().splitlines()
        if line.startswith("data:")
    ]


_IDS = re.compile(rb"stub\d+-\d+")
_TIMES = re.compile(rb'"(created|created_at)":\d+')


def normalized(stream: bytes) -> bytes:
    """A stub's stream with what differs per request (ids, timestamps) replaced."""
    return _TIMES.sub(rb'"\1":0', _IDS.sub(b"stubPID-N", stream))


def assert_openai_error(
    response: httpx.Response, status: int, code: str | None = None, error_type: str | None = None
) -> dict[str, Any]:
    """`response` is `status` with OpenAI's error shape; returns the `error` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    if error_type is not None:
        assert error["type"] == error_type, error
    return error


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body built by hand (so a test knows its exact bytes)."""
    boundary = "proxytest" + "b" * 20
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# ---- the gateway under test ----------------------------------------------------------------


@dataclass
class User:
    id: int
    email: str
    token: str


@dataclass
class Key:
    id: int
    secret: str


@dataclass
class ProxyEnv:
    """A running gateway, an HTTP client on it, an admin token, and the profiles made here."""

    handle: GatewayHandle
    http: httpx.AsyncClient
    admin: str
    tmp: Path
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.admin)

    # -- profiles and their upstreams -------------------------------------------------------

    def events_path(self, name: str) -> Path:
        return self.tmp / f"events-{name.replace('/', '_')}.jsonl"

    async def add_profile(self, name: str, command: list[str], **fields: Any) -> dict[str, Any]:
        body = {"name": name, "command": command, **fields}
        response = await self.http.post("/api/profiles", json=body, headers=self.auth)
        assert response.status_code == 201, response.text
        profile: dict[str, Any] = response.json()
        self.profiles[name] = profile
        return profile

    async def add_stub(self, name: str, *options: str, **fields: Any) -> dict[str, Any]:
        """A stub model server profile recording its events in `events_path(name)`."""
        command = stub_command("--quiet", "--events", str(self.events_path(name)), *options)
        return await self.add_profile(name, command, **fields)

    async def add_echo(self, name: str, **fields: Any) -> dict[str, Any]:
        return await self.add_profile(name, echo_command(self.events_path(name)), **fields)

    def events(self, name: str, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The upstream's recorded events, optionally of one kind and matching fields."""
        return [
            e
            for e in read_events(self.events_path(name))
            if (event is None or e["event"] == event)
            and all(e.get(k) == v for k, v in match.items())
        ]

    async def wait_event(
        self, name: str, event: str, timeout: float = 15.0, **match: Any
    ) -> dict[str, Any]:
        async def found() -> list[dict[str, Any]]:
            return self.events(name, event, **match)

        events = await wait_until(found, timeout=timeout, message=f"{name}: {event} {match}")
        return events[-1]

    async def server(self, name: str) -> dict[str, Any]:
        """This profile's entry of GET /api/servers."""
        response = await self.http.get("/api/servers", headers=self.auth)
        assert response.status_code == 200, response.text
        [server] = [s for s in response.json() if s["name"] == name]
        return server

    async def wait_server(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], message: str
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            server = await self.server(name)
            return server if predicate(server) else None

        return await wait_until(check, message=f"{name}: {message}")

    async def wait_idle(self, name: str) -> dict[str, Any]:
        return await self.wait_server(name, lambda s: s["inflight"] == 0, "inflight back to 0")

    # -- people and keys --------------------------------------------------------------------

    async def new_user(self, email: str) -> User:
        """An approved, non-admin user, signed in."""
        credentials = {"email": email, "password": USER_PASSWORD}
        response = await self.http.post("/api/auth/register", json=credentials)
        assert response.status_code == 201, response.text
        user_id: int = response.json()["id"]
        response = await self.http.patch(
            f"/api/users/{user_id}", json={"status": "approved"}, headers=self.auth
        )
        assert response.status_code == 200, response.text
        response = await self.http.post("/api/auth/login", json=credentials)
        assert response.status_code == 200, response.text
        return User(user_id, email, response.json()["access_token"])

    async def new_key(self, token: str | None = None, **body: Any) -> Key:
        response = await self.http.post(
            "/api/keys", json={"name": "sdk", **body}, headers=bearer(token or self.admin)
        )
        assert response.status_code == 201, response.text
        data = response.json()
        return Key(data["id"], data["key"])

    # -- the data plane ---------------------------------------------------------------------

    async def post(
        self, path: str, body: Any, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """POST a JSON body to the gateway as `token` (default: the admin)."""
        headers = {**bearer(token or self.admin), **kwargs.pop("headers", {})}
        return await self.http.post(path, json=body, headers=headers, **kwargs)

    async def usage_row(self, request_id: str) -> Usage:
        """The usage record of one request, read from the database once it is written."""
        from sqlmodel import select

        from gateway.tables import Usage

        async def row() -> Usage | None:
            await self.handle.core.usage.flush()
            async with self.handle.core.sessions() as session:
                query = select(Usage).where(Usage.request_id == request_id)
                return (await session.exec(query)).first()

        return await wait_until(row, message=f"usage record of {request_id}")

    def openai(self, api_key: str) -> AsyncOpenAI:
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=30)


async def _admin_token(http: httpx.AsyncClient) -> str:
    credentials = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    response = await http.post("/api/auth/register", json=credentials)
    assert response.status_code == 201, response.text
    response = await http.post("/api/auth/login", json=credentials)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@asynccontextmanager
async def proxy_env(tmp: Path, **overrides: Any) -> AsyncIterator[ProxyEnv]:
    """A fresh gateway (own database) on test settings plus `overrides`, with an admin."""
    from tests.conftest import make_settings
    from tests.support.gateway import running_gateway

    values: dict[str, Any] = {
        # Below Linux's ephemeral range and random, so concurrent runs rarely collide.
        "default_port_start": random.randrange(20000, 31000, 10),
        "stop_timeout": 5,
        **overrides,
    }
    settings = make_settings(tmp / "home", **values)
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, timeout=30, trust_env=False) as http,
    ):
        admin = await _admin_token(http)
        yield ProxyEnv(handle=handle, http=http, admin=admin, tmp=tmp)


# ---- the echo upstream (run as a script) ---------------------------------------------------
#
# Each request is recorded as a `request` event: `path`, `query`, `method`, `headers` (lower-case
# names), `body_b64` (the raw body), `request_id`. The answer follows the request's headers:
# `x-echo-status` (default 200), `x-echo-content-type` (default application/json),
# `x-echo-body` or `x-echo-body-b64` (default a small JSON object), `x-echo-delay` (seconds to
# wait first; a client that leaves meanwhile is recorded as a `cancelled` event), and
# `x-echo-die: mid-body` (send the headers and part of the body, record `dying`, and exit at
# once, like a crash). An `answered` event follows each complete answer.


class _EchoEvents:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the server

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "ts": time.time(), "pid": os.getpid(), **fields}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()


def _echo_app(events: _EchoEvents) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def echo(request: web.Request) -> web.Response:
        raw = await request.read()
        request_id = request.headers.get("x-request-id")
        events.emit(
            "request",
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers={k.lower(): v for k, v in request.headers.items()},
            body_b64=base64.b64encode(raw).decode(),
            request_id=request_id,
        )
        delay = float(request.headers.get("x-echo-delay", "0"))
        if delay:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                events.emit("cancelled", path=request.path, request_id=request_id)
                raise
        status = int(request.headers.get("x-echo-status", "200"))
        content_type = request.headers.get("x-echo-content-type", "application/json")
        if "x-echo-body-b64" in request.headers:
            data = base64.b64decode(request.headers["x-echo-body-b64"])
        elif "x-echo-body" in request.headers:
            data = request.headers["x-echo-body"].encode()
        else:
            data = json.dumps({"echo": True, "path": request.path, "bytes": len(raw)}).encode()
        if request.headers.get("x-echo-die") == "mid-body":
            # Crash after the headers and part of the body: the answer is cut short.
            response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
            response.content_length = len(data) + 100
            await response.prepare(request)
            await response.write(data)
            events.emit("dying", path=request.path, request_id=request_id)
            os._exit(3)
        events.emit("answered", path=request.path, request_id=request_id, status=status)
        return web.Response(body=data, status=status, headers={"Content-Type": content_type})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def _serve_echo(port: int, events_path: str) -> None:
    runner = web.AppRunner(
        _echo_app(_EchoEvents(events_path)), handler_cancellation=True, access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"echo: listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="Echo upstream for the proxy tests.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", required=True)
    args = parser.parse_args()
    asyncio.run(_serve_echo(args.port, args.events))


if __name__ == "__main__":
    main()
