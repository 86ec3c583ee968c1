"""The test harness: a real gateway with an admin signed in, and helpers around it.

Everything runs for real: the gateway app under uvicorn on a real port (in the test's loop),
and each profile's model server is a real subprocess on a real port: the stub model server
(tests/support/stub_server.py) or the echo upstream (tests/support/echo_upstream.py). `Env`
adds profiles, users and API keys, sends requests, and reads back what the upstreams recorded
and what `/api/servers` says. Nothing here sleeps to wait for something: it polls with
`wait_until` (tests/support/waiting.py).
"""

from __future__ import annotations

import atexit
import json
import random
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from tests.conftest import approved_user, bearer, make_settings
from tests.support import secrets
from tests.support.echo_upstream import echo_command
from tests.support.gateway import GatewayHandle, running_gateway
from tests.support.stub_server import STUB_SCRIPT, read_events
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from gateway.serving.manager import ManagedServer, ServerManager
    from gateway.settings import Settings
    from gateway.tables import Usage

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password"
USER_PASSWORD = "user-password"

__all__ = [
    "ADMIN_EMAIL",
    "ADMIN_PASSWORD",
    "USER_PASSWORD",
    "Env",
    "Key",
    "User",
    "approved_user",
    "assert_openai_error",
    "bearer",
    "chat_body",
    "count_events",
    "echo_command",
    "env_settings",
    "gateway_env",
    "multipart",
    "normalized",
    "port_base",
    "process_alive",
    "process_gone",
    "read_events",
    "sse_data",
    "stream_contents",
    "stub_command",
    "wait_until",
]


# ---- small helpers ---------------------------------------------------------------------------


def port_base() -> int:
    """A random first port for model servers, below Linux's ephemeral range (32768+), so
    concurrent test runs on one machine rarely race for the same port."""
    return random.randrange(20000, 31000, 10)


def stub_command(*options: str) -> list[str]:
    """A gateway `command` profile that runs the stub with the gateway's placeholders."""
    return [sys.executable, str(STUB_SCRIPT), "--port", "{port}", "--name", "{name}", *options]


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def process_alive(pid: int) -> bool:
    return not process_gone(pid)


def count_events(path: Path, event: str) -> int:
    return sum(1 for e in read_events(path) if e["event"] == event)


def chat_body(model: str, content: str = "hello", **extra: Any) -> dict[str, Any]:
    """A one-message chat completion request (`stream=True` and the like go in `extra`)."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def sse_data(body: str | bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order ([DONE] included)."""
    text = body.decode() if isinstance(body, bytes) else body
    return [
        line.removeprefix("data:").strip() for line in text.splitlines() if line.startswith("data:")
    ]


def stream_contents(payloads: list[str]) -> list[str]:
    """The content deltas of a chat completion stream's payloads ([DONE] excluded)."""
    out = []
    for payload in payloads:
        if payload == "[DONE]":
            continue
        for choice in json.loads(payload).get("choices", []):
            content = choice.get("delta", {}).get("content")
            if content:
                out.append(content)
    return out


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


# ---- the gateway under test ------------------------------------------------------------------


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
class Env:
    """A running gateway, an HTTP client on it, an admin token, and the profiles it knows."""

    handle: GatewayHandle
    http: httpx.AsyncClient
    token: str
    tmp: Path
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def settings(self) -> Settings:
        return self.handle.settings

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.token)

    @property
    def manager(self) -> ServerManager:
        return self.handle.core.servers

    def managed(self, name: str) -> ManagedServer:
        server = self.manager.resolve(name)
        assert server is not None, name
        return server

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

    async def add_stub(
        self, name: str, *options: str, quiet: bool = False, **fields: Any
    ) -> dict[str, Any]:
        """A stub model server profile recording its events in `events_path(name)`.

        `quiet` keeps the stub's access log (one line per request) out of the server's log.
        """
        flags = ["--quiet"] if quiet else []
        command = stub_command(*flags, "--events", str(self.events_path(name)), *options)
        return await self.add_profile(name, command, **fields)

    async def add_echo(self, name: str, **fields: Any) -> dict[str, Any]:
        """An echo upstream profile (tests/support/echo_upstream.py)."""
        return await self.add_profile(name, echo_command(self.events_path(name)), **fields)

    def profile_id(self, name: str) -> int:
        profile_id: int = self.profiles[name]["id"]
        return profile_id

    async def _id_of(self, name: str) -> int:
        """The id of profile `name`, also when it was made without this harness."""
        if name not in self.profiles:
            response = await self.http.get("/api/profiles", headers=self.auth)
            assert response.status_code == 200, response.text
            self.profiles.update({p["name"]: p for p in response.json()})
        return self.profile_id(name)

    def events(self, name: str, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The upstream's recorded events, optionally of one kind and matching fields."""
        return [
            e
            for e in read_events(self.events_path(name))
            if (event is None or e["event"] == event)
            and all(e.get(k) == v for k, v in match.items())
        ]

    def started_events(self, name: str) -> int:
        return len(self.events(name, "started"))

    async def wait_event(
        self, name: str, event: str, timeout: float = 15.0, **match: Any
    ) -> dict[str, Any]:
        """The last `event` of `name`'s upstream matching `match`, once there is one."""
        events = await wait_until(
            lambda: self.events(name, event, **match),
            timeout=timeout,
            message=f"{name}: {event} {match}",
        )
        return events[-1]

    # -- the servers ------------------------------------------------------------------------

    async def servers(self) -> list[dict[str, Any]]:
        response = await self.http.get("/api/servers", headers=self.auth)
        assert response.status_code == 200, response.text
        servers: list[dict[str, Any]] = response.json()
        return servers

    async def server(self, name: str) -> dict[str, Any]:
        """GET /api/servers/{id} of profile `name`."""
        response = await self.http.get(f"/api/servers/{await self._id_of(name)}", headers=self.auth)
        assert response.status_code == 200, response.text
        server: dict[str, Any] = response.json()
        return server

    async def wait_server(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        message: str,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        """`name`'s server once `predicate` holds for it."""

        async def check() -> dict[str, Any] | None:
            server = await self.server(name)
            return server if predicate(server) else None

        return await wait_until(check, timeout=timeout, message=f"{name}: {message}")

    async def wait_state(self, name: str, *states: str, timeout: float = 15.0) -> dict[str, Any]:
        return await self.wait_server(
            name, lambda s: s["state"] in states, f"in {states}", timeout=timeout
        )

    async def wait_idle(self, name: str) -> dict[str, Any]:
        return await self.wait_server(name, lambda s: s["inflight"] == 0, "inflight back to 0")

    async def control(self, name: str, action: str) -> httpx.Response:
        return await self.http.post(
            f"/api/servers/{await self._id_of(name)}/{action}", headers=self.auth
        )

    async def start(self, name: str) -> dict[str, Any]:
        response = await self.control(name, "start")
        assert response.status_code == 200, response.text
        server: dict[str, Any] = response.json()
        assert server["state"] == "ready", server
        return server

    # -- people and keys --------------------------------------------------------------------

    async def new_user(self, email: str = "user@example.com") -> User:
        """An approved, non-admin user, signed in."""
        user_id, token = await approved_user(self.http, self.token, email)
        return User(user_id, email, token)

    async def new_key(self, token: str | None = None, **body: Any) -> Key:
        response = await self.http.post(
            "/api/keys", json={"name": "sdk", **body}, headers=bearer(token or self.token)
        )
        assert response.status_code == 201, response.text
        data = response.json()
        return Key(data["id"], data["key"])

    # -- the data plane ---------------------------------------------------------------------

    async def post(
        self, path: str, body: Any, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """POST a JSON body to the gateway as `token` (default: the admin)."""
        headers = {**bearer(token or self.token), **kwargs.pop("headers", {})}
        return await self.http.post(path, json=body, headers=headers, **kwargs)

    async def chat(self, model: str, content: str = "hello", **extra: Any) -> httpx.Response:
        """A chat completion as the admin."""
        return await self.post("/v1/chat/completions", chat_body(model, content, **extra))

    @asynccontextmanager
    async def stream(self, model: str, content: str = "hello") -> AsyncIterator[httpx.Response]:
        """A streaming chat completion as the admin, open until the block ends."""
        async with self.http.stream(
            "POST",
            "/v1/chat/completions",
            json=chat_body(model, content, stream=True),
            headers=self.auth,
        ) as response:
            yield response

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


async def admin_token(http: httpx.AsyncClient) -> str:
    """Register the admin (the first user) unless it exists already, and log it in."""
    credentials = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    created = await http.post("/api/auth/register", json=credentials)
    assert created.status_code in (201, 409), created.text
    response = await http.post("/api/auth/login", json=credentials)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def env_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Test settings under `tmp_path/home`, with a random port range and a short stop."""
    values: dict[str, Any] = {"default_port_start": port_base(), "stop_timeout": 5}
    values.update(overrides)
    return make_settings(tmp_path / "home", **values)


_template: tuple[Path, str] | None = None


async def _admin_template() -> tuple[Path, str]:
    """A migrated database holding the admin, and a token for it; made once per test run.

    Every test gateway starts from a copy, so it skips the migrations and the password hashing
    of a registration and a login (most of a gateway's start-up cost in these tests). The
    token stays valid on each copy: same user, same token version, same test JWT secret.
    """
    global _template
    if _template is None:
        root = Path(tempfile.mkdtemp(prefix="mlx-manager-template-"))
        atexit.register(shutil.rmtree, root, True)
        settings = make_settings(root / "home")
        async with (
            running_gateway(settings) as handle,
            httpx.AsyncClient(base_url=handle.url, timeout=60, trust_env=False) as http,
        ):
            token = await admin_token(http)
        assert settings.database_path is not None
        _template = (settings.database_path, token)
    return _template


@asynccontextmanager
async def gateway_env(
    tmp_path: Path, settings: Settings | None = None, **overrides: Any
) -> AsyncIterator[Env]:
    """A real gateway on `settings` (default: `env_settings(tmp_path, **overrides)`) with an
    admin signed in. A database that exists already (a restarted gateway) is kept, with its
    profiles; otherwise it starts as a copy of the admin template."""
    settings = settings or env_settings(tmp_path, **overrides)
    template, token = await _admin_template()
    assert settings.database_path is not None
    if not settings.database_path.exists():
        settings.database_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, settings.database_path)
    async with (
        running_gateway(settings) as handle,
        # The hooks record every token and key the tests handle, for the secret scan.
        httpx.AsyncClient(
            base_url=handle.url, timeout=60, trust_env=False, event_hooks=secrets.HOOKS
        ) as http,
    ):
        me = await http.get("/api/auth/me", headers=bearer(token))
        if me.status_code != 200:  # not a copy of the template: register the usual way
            token = await admin_token(http)
        env = Env(handle=handle, http=http, token=token, tmp=tmp_path)
        listed = await http.get("/api/profiles", headers=bearer(token))
        assert listed.status_code == 200, listed.text
        env.profiles = {profile["name"]: profile for profile in listed.json()}
        yield env
