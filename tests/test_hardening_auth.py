"""Issue 11's fixes at the `/api` door: content types, the Host allowlist, registration
floods, body limits on forms. A real gateway on a real port (in-process uvicorn)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

import gateway.passwords
import gateway.store.users
from gateway.hosts import HostAllowlistMiddleware, default_allowed_hosts, host_name
from tests.conftest import bearer, make_settings, register_and_login
from tests.support.gateway import GatewayHandle, running_gateway

CREDENTIALS = b'{"email": "first@example.com", "password": "first-password"}'


# --- Content-Type --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "text/plain;charset=UTF-8", "multipart/form-data; boundary=x"],
)
async def test_a_cross_site_simple_register_is_refused_and_creates_nobody(
    client: httpx.AsyncClient, content_type: str | None
):
    """A page anywhere can POST text/plain without a preflight; it must not become admin."""
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post("/api/auth/register", content=CREDENTIALS, headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["code"] == "unsupported_media_type"
    # Nobody was registered: the real first user still becomes the admin.
    token = await register_and_login(client, "admin@example.com", "admin-password")
    me = await client.get("/api/auth/me", headers=bearer(token))
    assert me.json()["is_admin"] is True


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x"])
async def test_sign_in_takes_json_or_the_urlencoded_form_only(
    client: httpx.AsyncClient, content_type: str
):
    await register_and_login(client, "admin@example.com", "admin-password")
    body = b'{"email": "admin@example.com", "password": "admin-password"}'
    response = await client.post(
        "/api/auth/login", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 415, response.text
    form = await client.post(
        "/api/auth/login", data={"username": "admin@example.com", "password": "admin-password"}
    )
    assert form.status_code == 200, form.text
    as_json = await client.post(
        "/api/auth/login", content=body, headers={"content-type": "application/json"}
    )
    assert as_json.status_code == 200


async def test_json_writes_need_application_json(client: httpx.AsyncClient):
    token = await register_and_login(client, "admin@example.com", "admin-password")
    body = b'{"name": "k"}'
    refused = await client.post(
        "/api/keys", content=body, headers={**bearer(token), "content-type": "text/plain"}
    )
    assert refused.status_code == 415
    assert "application/json" in refused.json()["detail"]
    accepted = await client.post(
        "/api/keys",
        content=body,
        headers={**bearer(token), "content-type": "application/json; charset=utf-8"},
    )
    assert accepted.status_code == 201, accepted.text


# --- Host allowlist ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/api/auth/register", "/v1/models", "/"])
async def test_a_foreign_host_is_refused(client: httpx.AsyncClient, path: str):
    response = await client.get(path, headers={"host": "rebind.attacker.example"})
    assert response.status_code == 400
    body = response.json()
    code = body["error"]["code"] if path.startswith("/v1") else body["code"]
    assert code == "host_not_allowed"
    assert response.headers["x-request-id"]


async def test_a_cross_site_register_through_a_rebound_name_is_refused(
    client: httpx.AsyncClient,
):
    response = await client.post(
        "/api/auth/register",
        content=CREDENTIALS,
        headers={"host": "rebind.attacker.example:8080", "content-type": "application/json"},
    )
    assert response.status_code == 400
    registered = await client.post(
        "/api/auth/register",
        content=CREDENTIALS,
        headers={"content-type": "application/json"},
    )
    assert registered.json()["is_admin"] is True


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:8080", "[::1]:80", "LOCALHOST."])
async def test_loopback_names_are_served(client: httpx.AsyncClient, host: str):
    response = await client.get("/health", headers={"host": host})
    assert response.status_code == 200


async def test_allowed_hosts_setting_replaces_the_defaults(tmp_path):
    settings = make_settings(tmp_path / "home", allowed_hosts="models.example.com, *.lan")
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, trust_env=False) as http,
    ):
        ok = [
            await http.get("/health", headers={"host": h})
            for h in ("models.example.com", "Models.Example.com:443", "box.lan")
        ]
        assert [r.status_code for r in ok] == [200, 200, 200]
        refused = [
            await http.get("/health", headers={"host": h})
            for h in ("127.0.0.1", "lan", "example.com", "evil.models.example.com")
        ]
        assert [r.status_code for r in refused] == [400, 400, 400, 400]


async def test_a_star_allows_any_host(tmp_path):
    settings = make_settings(tmp_path / "home", allowed_hosts="*")
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, trust_env=False) as http,
    ):
        response = await http.get("/health", headers={"host": "anything.example"})
        assert response.status_code == 200


def test_host_names_are_parsed_without_port_or_brackets():
    assert host_name("Example.COM:8080") == "example.com"
    assert host_name("[::1]:8080") == "::1"
    assert host_name("[::1]") == "::1"
    assert host_name("::1") == "::1"
    assert host_name("localhost.") == "localhost"


def test_a_wildcard_bind_allows_this_machines_addresses_but_not_strangers():
    hosts = default_allowed_hosts("0.0.0.0")
    assert "127.0.0.1" in hosts
    middleware = HostAllowlistMiddleware(app=None, hosts=hosts)  # type: ignore[arg-type]
    assert middleware.allows("localhost:8080")
    assert not middleware.allows("rebind.attacker.example")
    assert default_allowed_hosts("192.0.2.7") == ["localhost", "127.0.0.1", "::1", "192.0.2.7"]


# --- registration floods -------------------------------------------------------------------


async def register(http: httpx.AsyncClient, email: str) -> httpx.Response:
    return await http.post("/api/auth/register", json={"email": email, "password": "long-password"})


async def test_registrations_are_throttled_per_address(tmp_path):
    settings = make_settings(tmp_path / "home", register_max_per_address=3)
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, trust_env=False) as http,
    ):
        answers = [
            await register(http, "a@example.com"),
            await register(http, "a@example.com"),  # a refused attempt counts too
            await register(http, "b@example.com"),
        ]
        assert [r.status_code for r in answers] == [201, 409, 201]
        over = await register(http, "c@example.com")
        assert over.status_code == 429, over.text
        assert over.json()["code"] == "rate_limited"
        assert 1 <= int(over.headers["retry-after"]) <= 3600
        # Nothing was created by the refused attempt.
        token = await login_token(http, "a@example.com")
        users = await http.get("/api/users", headers=bearer(token))
        assert sorted(u["email"] for u in users.json()) == ["a@example.com", "b@example.com"]


async def login_token(http: httpx.AsyncClient, email: str) -> str:
    response = await http.post(
        "/api/auth/login", json={"email": email, "password": "long-password"}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def test_a_taken_email_is_refused_before_any_hashing(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
):
    hashed: list[str] = []
    real = gateway.passwords.hash_password

    def counting(password: str) -> str:
        hashed.append(password)
        return real(password)

    monkeypatch.setattr(gateway.store.users, "hash_password", counting)
    assert (await register(client, "taken@example.com")).status_code == 201
    assert len(hashed) == 1
    again = await register(client, "TAKEN@example.com")
    assert again.status_code == 409
    assert len(hashed) == 1


async def test_pending_accounts_are_bounded(tmp_path):
    settings = make_settings(tmp_path / "home", max_pending_users=2)
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, trust_env=False) as http,
    ):
        assert (await register(http, "admin@example.com")).status_code == 201
        pending = [await register(http, f"p{i}@example.com") for i in range(2)]
        assert [r.status_code for r in pending] == [201, 201]
        over = await register(http, "p2@example.com")
        assert over.status_code == 503, over.text
        assert over.json()["code"] == "too_many_pending_users"
        assert "MLX_MANAGER_MAX_PENDING_USERS" in over.json()["detail"]
        # An admin's decision frees a place.
        token = await login_token(http, "admin@example.com")
        user_id = pending[0].json()["id"]
        approved = await http.patch(
            f"/api/users/{user_id}", json={"status": "approved"}, headers=bearer(token)
        )
        assert approved.status_code == 200
        assert (await register(http, "p2@example.com")).status_code == 201


async def test_no_pending_accounts_allowed_still_lets_the_first_admin_in(tmp_path):
    settings = make_settings(tmp_path / "home", max_pending_users=0)
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, trust_env=False) as http,
    ):
        assert (await register(http, "admin@example.com")).status_code == 201
        assert (await register(http, "other@example.com")).status_code == 503


# --- /api body limit -----------------------------------------------------------------------

BOUNDARY = b"x-hardening-boundary"


def multipart_login_head(port: int, extra: bytes) -> bytes:
    return (
        b"POST /api/auth/login HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
        b"content-type: multipart/form-data; boundary=%s\r\n%s\r\n" % (port, BOUNDARY, extra)
    )


def read_response(sock: socket.socket, data: bytes = b"") -> bytes:
    """One response (it has a Content-Length), or what came before the server closed."""
    while True:
        head, found, body = data.partition(b"\r\n\r\n")
        if found:
            length = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if length and len(body) >= length[0]:
                return data
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


async def test_a_large_multipart_sign_in_is_413_before_its_body_is_read(
    gateway: GatewayHandle,
):
    """2 MiB declared: refused from the headers alone (the body is never sent, so a gateway
    that started reading or spooling it would hang here instead of answering)."""
    port = int(gateway.url.rsplit(":", 1)[1])

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(multipart_login_head(port, b"content-length: %d\r\n" % (2 << 20)))
            sock.sendall(b"--" + BOUNDARY + b"\r\n")
            return read_response(sock)

    response = await asyncio.to_thread(exchange)
    assert response.startswith(b"HTTP/1.1 413"), response[:300]
    assert b"MLX_MANAGER_MAX_ADMIN_BODY_BYTES" in response


async def test_a_chunked_upload_to_any_api_route_stops_at_the_limit(gateway: GatewayHandle):
    """No Content-Length: counted as it arrives, refused soon after 1 MiB."""
    port = int(gateway.url.rsplit(":", 1)[1])
    chunk = b"a" * 65536
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)

    def exchange() -> tuple[bytes, int]:
        sent = 0
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(
                b"POST /api/auth/register HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            sock.settimeout(0.01)
            response = b""
            while sent < (64 << 20):
                try:
                    sock.sendall(framed)
                    sent += len(chunk)
                    response += sock.recv(65536)
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
                if response:
                    break
            sock.settimeout(60)
            return read_response(sock, response), sent

    response, sent = await asyncio.to_thread(exchange)
    assert response.startswith(b"HTTP/1.1 413"), response[:300]
    assert sent < (32 << 20)


async def test_the_api_body_limit_is_a_setting(tmp_path):
    settings = make_settings(tmp_path / "home", max_admin_body_bytes=2048)
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, trust_env=False) as http,
    ):
        padding = "p" * 3000
        big = await http.post(
            "/api/auth/login", data={"username": "a@example.com", "password": padding}
        )
        assert big.status_code == 413
        assert big.json()["code"] == "request_too_large"
        small = await http.post(
            "/api/auth/login", data={"username": "a@example.com", "password": "p" * 1000}
        )
        assert small.status_code == 401


async def test_the_trailing_slash_redirect_never_points_at_a_foreign_host(
    client: httpx.AsyncClient,
):
    """The redirect builds Location from Host: a foreign Host is refused before it."""
    foreign = await client.get("/api/profiles/", headers={"host": "evil.example"})
    assert foreign.status_code == 400
    assert "location" not in foreign.headers
    local = await client.get("/api/profiles/")
    assert local.status_code == 307
    assert local.headers["location"].startswith("http://127.0.0.1:")
