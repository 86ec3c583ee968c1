"""`/api/auth`: register, login (JSON and OAuth2 form), me, throttling, the first-admin race."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlmodel import select

import gateway.store.users
from gateway.errors import TooManyRequests
from gateway.passwords import verify_password
from gateway.tables import User
from gateway.throttle import LoginThrottle
from tests.conftest import TEST_SECRET, bearer, login, make_settings
from tests.support.gateway import GatewayHandle, running_gateway
from tests.support.secrets import on_request, on_response

ADMIN = ("admin@example.com", "admin-password")

# Secrets these clients handle join the session-wide log scan (see tests/support/secrets.py).
SECRET_HOOKS: dict[str, list[Callable[..., Any]]] = {
    "request": [on_request],
    "response": [on_response],
}


async def register(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/auth/register", json={"email": email, "password": password})


# --- register ------------------------------------------------------------------------------


async def test_first_user_is_approved_admin_later_users_pending(client):
    first = await register(client, "Admin@Example.com", "admin-password")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["email"] == "admin@example.com"
    assert body["is_admin"] is True
    assert body["status"] == "approved"
    assert "message" not in body
    assert "password" not in first.text
    assert "hash" not in first.text

    second = await register(client, "bob@example.com", "bob-password")
    assert second.status_code == 201, second.text
    body = second.json()
    assert body["is_admin"] is False
    assert body["status"] == "pending"
    assert "approve" in body["message"]
    assert "hash" not in second.text
    assert body["id"] != first.json()["id"]


async def test_register_duplicate_email_is_409(client, admin_token):
    for email in ("admin@example.com", "  ADMIN@example.COM "):
        response = await register(client, email, "another-password")
        assert response.status_code == 409, (email, response.text)
        assert response.json()["code"] == "user_exists"
    users = await client.get("/api/users", headers=bearer(admin_token))
    assert [u["email"] for u in users.json()] == ["admin@example.com"]


@pytest.mark.parametrize(
    ("email", "password", "param"),
    [
        ("not-an-email", "long-password", "email"),
        ("two@at@example.com", "long-password", "email"),
        ("has space@example.com", "long-password", "email"),
        ("", "long-password", "email"),
        ("x" * 400 + "@example.com", "long-password", "email"),
        ("user@example.com", "short", "password"),
        ("user@example.com", "7-chars", "password"),
        ("user@example.com", "", "password"),
        ("user@example.com", "p" * 1025, "password"),
        ("user@example.com", "p" * 5000, "password"),
    ],
)
async def test_register_refuses_bad_email_or_password(client, email, password, param):
    response = await register(client, email, password)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["param"] == param
    assert body["detail"]


async def test_register_password_length_bounds_are_inclusive(client):
    assert (await register(client, "eight@example.com", "8-chars!")).status_code == 201
    assert (await register(client, "long@example.com", "p" * 1024)).status_code == 201
    response = await client.post(
        "/api/auth/login", json={"email": "eight@example.com", "password": "8-chars!"}
    )
    assert response.status_code == 200, response.text
    # The 1024-character password is accepted at login too (403: right password, pending user).
    response = await client.post(
        "/api/auth/login", json={"email": "long@example.com", "password": "p" * 1024}
    )
    assert response.status_code == 403, response.text


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b"", 400),
        (b"[1, 2]", 400),
        (b'"a string"', 400),
        (b"\xff\xfe", 400),
        (b'{"email": "a@example.com"}', 422),
        (b'{"password": "long-password"}', 422),
        (b'{"email": 5, "password": "long-password"}', 422),
    ],
)
async def test_register_bad_body(client, content, status):
    response = await client.post(
        "/api/auth/register", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["detail"]


async def test_register_refuses_extra_fields_so_nobody_self_promotes(client, admin_token):
    for extra in ({"is_admin": True}, {"status": "approved"}, {"role": "admin"}):
        response = await client.post(
            "/api/auth/register",
            json={"email": "sneaky@example.com", "password": "long-password", **extra},
        )
        assert response.status_code == 422, response.text
    users = await client.get("/api/users", headers=bearer(admin_token))
    assert len(users.json()) == 1


# --- login ---------------------------------------------------------------------------------


async def test_login_json_returns_a_valid_hs256_token(client, gateway: GatewayHandle):
    await register(client, *ADMIN)
    response = await client.post("/api/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == int(
        timedelta(days=gateway.settings.jwt_expire_days).total_seconds()
    )
    token = body["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert {"sub", "exp", "iat"} <= set(claims)
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    me = await client.get("/api/auth/me", headers=bearer(token))
    assert me.status_code == 200
    assert me.json()["email"] == ADMIN[0]
    assert me.json()["last_login_at"] is not None


async def test_login_oauth2_form_and_case_insensitive_email(client):
    await register(client, *ADMIN)
    response = await client.post(
        "/api/auth/login", data={"username": " ADMIN@example.com", "password": ADMIN[1]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "bearer"
    me = await client.get("/api/auth/me", headers=bearer(response.json()["access_token"]))
    assert me.json()["email"] == ADMIN[0]


async def test_login_form_missing_fields_is_400(client):
    response = await client.post("/api/auth/login", data={"username": ADMIN[0]})
    assert response.status_code == 400, response.text
    response = await client.post("/api/auth/login", data={"password": ADMIN[1]})
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{broken", 400),
        (b"", 400),
        (b'{"email": "admin@example.com"}', 422),
        (b'{"email": "admin@example.com", "password": "admin-password", "x": 1}', 422),
    ],
)
async def test_login_bad_body(client, content, status):
    await register(client, *ADMIN)
    response = await client.post(
        "/api/auth/login", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text


async def test_wrong_password_and_unknown_email_get_the_same_answer(client):
    await register(client, *ADMIN)
    attempts = [
        {"email": ADMIN[0], "password": "wrong-password"},
        {"email": "nobody@example.com", "password": "wrong-password"},
        {"email": "nobody@example.com", "password": ADMIN[1]},
        {"email": "not-even-an-email", "password": ADMIN[1]},
    ]
    answers = []
    for attempt in attempts:
        response = await client.post("/api/auth/login", json=attempt)
        answers.append((response.status_code, response.json()))
    assert answers[0][0] == 401
    assert answers[0][1]["code"] == "invalid_credentials"
    assert all(answer == answers[0] for answer in answers), answers


async def test_pending_and_disabled_users_get_403(client, admin_token):
    response = await register(client, "pending@example.com", "pending-password")
    pending_id = response.json()["id"]
    response = await client.post(
        "/api/auth/login", json={"email": "pending@example.com", "password": "pending-password"}
    )
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "pending_approval"
    assert "access_token" not in response.text

    response = await client.patch(
        f"/api/users/{pending_id}", json={"status": "disabled"}, headers=bearer(admin_token)
    )
    assert response.status_code == 200, response.text
    response = await client.post(
        "/api/auth/login", json={"email": "pending@example.com", "password": "pending-password"}
    )
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "account_disabled"
    assert "access_token" not in response.text

    # Without the right password a disabled account looks like any other failure.
    response = await client.post(
        "/api/auth/login", json={"email": "pending@example.com", "password": "wrong-password"}
    )
    assert response.status_code == 401


async def test_login_rehashes_outdated_argon2_parameters(client, gateway: GatewayHandle):
    await register(client, *ADMIN)
    weak = Argon2Hasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(ADMIN[1])
    async with gateway.core.sessions() as session:
        user = (await session.exec(select(User).where(User.email == ADMIN[0]))).one()
        user.password_hash = weak
        session.add(user)
        await session.commit()

    await login(client, *ADMIN)

    async with gateway.core.sessions() as session:
        user = (await session.exec(select(User).where(User.email == ADMIN[0]))).one()
    assert user.password_hash != weak
    assert user.password_hash.startswith("$argon2id$")
    assert verify_password(ADMIN[1], user.password_hash) == (True, None)
    await login(client, *ADMIN)


# --- me --------------------------------------------------------------------------------------


async def test_me_with_jwt_and_with_api_key(client, admin_token):
    me = await client.get("/api/auth/me", headers=bearer(admin_token))
    assert me.status_code == 200, me.text
    assert me.json()["email"] == ADMIN[0]
    assert me.json()["is_admin"] is True
    assert me.json()["api_key_id"] is None
    assert "hash" not in me.text
    assert "token_version" not in me.text

    body = {"name": "sdk", "scopes": ["admin"]}
    created = await client.post("/api/keys", json=body, headers=bearer(admin_token))
    assert created.status_code == 201, created.text
    me = await client.get("/api/auth/me", headers=bearer(created.json()["key"]))
    assert me.status_code == 200, me.text
    assert me.json()["email"] == ADMIN[0]
    assert me.json()["api_key_id"] == created.json()["id"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer two words"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Token abc"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer sk-not-a-real-key"},
    ],
)
async def test_me_without_a_valid_token_is_401(client, headers):
    response = await client.get("/api/auth/me", headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["detail"]


async def test_me_missing_token_code(client):
    response = await client.get("/api/auth/me")
    assert response.status_code == 401
    assert response.json()["code"] == "missing_token"


# --- throttling ------------------------------------------------------------------------------


async def _attempt(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


async def test_login_throttled_per_email_even_with_the_right_password(tmp_path: Path):
    settings = make_settings(tmp_path / "home", login_max_failures=3, login_window_seconds=300)
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, event_hooks=SECRET_HOOKS) as client,
    ):
        await register(client, *ADMIN)
        for _ in range(3):
            assert (await _attempt(client, ADMIN[0], "wrong-password")).status_code == 401
        response = await _attempt(client, ADMIN[0], ADMIN[1])
        assert response.status_code == 429, response.text
        retry_after = int(response.headers["retry-after"])
        assert 1 <= retry_after <= 300
        assert response.json()["code"] == "rate_limited"
        # Another email from the same client is not affected by this email's counter.
        response = await _attempt(client, "other@example.com", "wrong-password")
        assert response.status_code == 401, response.text


async def test_login_throttled_per_client_address(tmp_path: Path):
    settings = make_settings(
        tmp_path / "home", login_max_failures=100, login_max_failures_per_address=3
    )
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, event_hooks=SECRET_HOOKS) as client,
    ):
        await register(client, *ADMIN)
        for n in range(3):
            response = await _attempt(client, f"guess{n}@example.com", "wrong-password")
            assert response.status_code == 401
        response = await _attempt(client, ADMIN[0], ADMIN[1])
        assert response.status_code == 429, response.text
        assert int(response.headers["retry-after"]) >= 1


async def test_throttle_answers_before_any_password_hashing(tmp_path: Path, monkeypatch):
    verifications: list[str] = []

    def counting_verify(password: str, password_hash: str | None) -> tuple[bool, str | None]:
        verifications.append(password)
        return verify_password(password, password_hash)

    monkeypatch.setattr(gateway.store.users, "verify_password", counting_verify)
    settings = make_settings(tmp_path / "home", login_max_failures=3)
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, event_hooks=SECRET_HOOKS) as client,
    ):
        for _ in range(3):
            response = await _attempt(client, "ghost@example.com", "wrong-password")
            assert response.status_code == 401
        assert len(verifications) == 3  # unknown emails cost a (dummy) hash too
        for _ in range(5):
            response = await _attempt(client, "ghost@example.com", "wrong-password")
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"]
        assert len(verifications) == 3


async def test_successful_login_resets_the_email_counter(tmp_path: Path):
    settings = make_settings(tmp_path / "home", login_max_failures=3)
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, event_hooks=SECRET_HOOKS) as client,
    ):
        await register(client, *ADMIN)
        for _ in range(2):
            assert (await _attempt(client, ADMIN[0], "wrong-password")).status_code == 401
        assert (await _attempt(client, ADMIN[0], ADMIN[1])).status_code == 200
        for _ in range(2):
            assert (await _attempt(client, ADMIN[0], "wrong-password")).status_code == 401
        assert (await _attempt(client, ADMIN[0], ADMIN[1])).status_code == 200


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_window_expiry_and_retry_after():
    clock = FakeClock()
    throttle = LoginThrottle(max_per_email=3, max_per_address=100, window_seconds=60, clock=clock)
    for step in range(3):
        throttle.check("a@x.io", "1.2.3.4")
        throttle.record_failure("a@x.io", "1.2.3.4")
        clock.now += 10 if step < 2 else 0
    # failures at t=1000, 1010, 1020; now t=1020
    with pytest.raises(TooManyRequests) as caught:
        throttle.check("a@x.io", "1.2.3.4")
    assert caught.value.status_code == 429
    assert caught.value.headers["Retry-After"] == "40"
    clock.now = 1059.5
    with pytest.raises(TooManyRequests) as caught:
        throttle.check("a@x.io", "1.2.3.4")
    assert caught.value.headers["Retry-After"] == "1"
    clock.now = 1060.0  # the first failure leaves the window
    throttle.check("a@x.io", "1.2.3.4")
    # other emails were never limited by a@x.io's failures
    clock.now = 1020.0
    throttle.check("b@x.io", "1.2.3.4")


def test_throttle_success_resets_the_email_but_not_the_address():
    clock = FakeClock()
    throttle = LoginThrottle(max_per_email=3, max_per_address=5, window_seconds=60, clock=clock)
    for _ in range(2):
        throttle.record_failure("a@x.io", "1.2.3.4")
    throttle.record_success("a@x.io")
    for _ in range(2):
        throttle.record_failure("a@x.io", "1.2.3.4")
    throttle.check("a@x.io", "1.2.3.4")  # 2 in the window after the reset, limit 3
    throttle.record_failure("b@x.io", "1.2.3.4")  # the address now has 5
    with pytest.raises(TooManyRequests):
        throttle.check("c@x.io", "1.2.3.4")
    throttle.check("c@x.io", "5.6.7.8")
    clock.now += 60
    throttle.check("c@x.io", "1.2.3.4")


def test_throttle_limits_are_independent_per_address():
    clock = FakeClock()
    throttle = LoginThrottle(max_per_email=100, max_per_address=2, window_seconds=60, clock=clock)
    throttle.record_failure("a@x.io", "10.0.0.1")
    throttle.record_failure("b@x.io", "10.0.0.1")
    with pytest.raises(TooManyRequests) as caught:
        throttle.check("new@x.io", "10.0.0.1")
    assert caught.value.headers["Retry-After"] == "60"
    throttle.check("a@x.io", "10.0.0.2")


# --- the first-registration race -------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 10])
async def test_concurrent_first_registrations_make_exactly_one_admin(client, count):
    responses = await asyncio.gather(
        *(register(client, f"racer{n}@example.com", f"password-{n}") for n in range(count))
    )
    assert [r.status_code for r in responses] == [201] * count, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    admins = [b for b in bodies if b["is_admin"]]
    assert len(admins) == 1, bodies
    assert admins[0]["status"] == "approved"
    others = [b for b in bodies if not b["is_admin"]]
    assert all(b["status"] == "pending" for b in others), bodies

    number = int(admins[0]["email"].removeprefix("racer").split("@")[0])
    token = await login(client, admins[0]["email"], f"password-{number}")
    users = (await client.get("/api/users", headers=bearer(token))).json()
    assert len(users) == count
    assert sum(u["is_admin"] for u in users) == 1
    assert sum(u["status"] == "approved" for u in users) == 1


async def test_concurrent_registrations_of_one_email_make_one_user(client):
    responses = await asyncio.gather(
        *(register(client, "same@example.com", "same-password") for _ in range(4))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201, 409, 409, 409], [r.text for r in responses]
    token = await login(client, "same@example.com", "same-password")
    users = (await client.get("/api/users", headers=bearer(token))).json()
    assert [u["email"] for u in users] == ["same@example.com"]
    assert users[0]["is_admin"] is True
