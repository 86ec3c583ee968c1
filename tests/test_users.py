"""`/api/users`: an admin lists, approves, disables, promotes, deletes and resets users."""

from __future__ import annotations

import httpx
import pytest
from sqlmodel import select

from gateway.tables import ApiKey
from tests.conftest import approved_user, bearer, login
from tests.support.gateway import GatewayHandle

ADMIN = ("admin@example.com", "admin-password")


async def register(client: httpx.AsyncClient, email: str, password: str) -> int:
    response = await client.post("/api/auth/register", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


async def patch(
    client: httpx.AsyncClient, token: str, user_id: int, **changes: object
) -> httpx.Response:
    return await client.patch(f"/api/users/{user_id}", json=changes, headers=bearer(token))


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/auth/me", headers=bearer(token))


async def my_id(client: httpx.AsyncClient, token: str) -> int:
    user_id: int = (await me(client, token)).json()["id"]
    return user_id


async def new_key(client: httpx.AsyncClient, token: str) -> str:
    body = {"name": "k", "scopes": ["inference", "admin"]}
    response = await client.post("/api/keys", json=body, headers=bearer(token))
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


@pytest.mark.both_databases
async def test_admin_lists_users_without_secrets(client, admin_token):
    bob = await register(client, "bob@example.com", "bob-password")
    response = await client.get("/api/users", headers=bearer(admin_token))
    assert response.status_code == 200, response.text
    users = response.json()
    assert [(u["email"], u["is_admin"], u["status"]) for u in users] == [
        ("admin@example.com", True, "approved"),
        ("bob@example.com", False, "pending"),
    ]
    assert users[1]["id"] == bob
    assert set(users[0]) == {
        "id",
        "email",
        "is_admin",
        "status",
        "created_at",
        "last_login_at",
        # limits (null: unlimited)
        "rpm",
        "tpm",
        "token_budget",
        "budget_period",
    }
    assert "argon2" not in response.text
    assert "password" not in response.text


@pytest.mark.both_databases
async def test_approve_lets_a_pending_user_log_in(client, admin_token):
    bob = await register(client, "bob@example.com", "bob-password")
    response = await client.post(
        "/api/auth/login", json={"email": "bob@example.com", "password": "bob-password"}
    )
    assert response.status_code == 403
    response = await patch(client, admin_token, bob, status="approved")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "approved"
    token = await login(client, "bob@example.com", "bob-password")
    assert (await me(client, token)).json()["status"] == "approved"
    # An approved non-admin is an ordinary user.
    assert (await client.get("/api/users", headers=bearer(token))).status_code == 403


@pytest.mark.both_databases
async def test_disabling_kills_the_token_and_key_on_the_very_next_request(client, admin_token):
    bob, token = await approved_user(client, admin_token, "bob@example.com", "bob-password")
    key = await new_key(client, token)
    # Both are in use (and so cached by the authenticator) right before the change.
    assert (await me(client, token)).status_code == 200
    assert (await me(client, key)).status_code == 200

    response = await patch(client, admin_token, bob, status="disabled")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "disabled"

    assert (await me(client, token)).status_code == 401
    assert (await me(client, key)).status_code == 401
    response = await client.post(
        "/api/auth/login", json={"email": "bob@example.com", "password": "bob-password"}
    )
    assert response.status_code == 403

    # Re-enabling does not bring the old token back; a fresh login works, and so does the key.
    response = await patch(client, admin_token, bob, status="approved")
    assert response.status_code == 200
    assert (await me(client, token)).status_code == 401
    fresh = await login(client, "bob@example.com", "bob-password")
    assert (await me(client, fresh)).status_code == 200
    assert (await me(client, key)).status_code == 200


async def test_setting_a_user_back_to_pending_locks_them_out(client, admin_token):
    bob, token = await approved_user(client, admin_token, "bob@example.com", "bob-password")
    assert (await me(client, token)).status_code == 200
    response = await patch(client, admin_token, bob, status="pending")
    assert response.status_code == 200, response.text
    assert (await me(client, token)).status_code == 401


async def test_promote_and_demote_take_effect_immediately(client, admin_token):
    bob, token = await approved_user(client, admin_token, "bob@example.com", "bob-password")
    assert (await client.get("/api/users", headers=bearer(token))).status_code == 403

    response = await patch(client, admin_token, bob, is_admin=True)
    assert response.status_code == 200, response.text
    assert response.json()["is_admin"] is True
    assert (await client.get("/api/users", headers=bearer(token))).status_code == 200

    response = await patch(client, admin_token, bob, is_admin=False)
    assert response.status_code == 200, response.text
    assert response.json()["is_admin"] is False
    assert (await client.get("/api/users", headers=bearer(token))).status_code == 403
    assert (await me(client, token)).json()["is_admin"] is False


@pytest.mark.both_databases
async def test_delete_user_removes_them_their_tokens_and_keys(
    client, admin_token, gateway: GatewayHandle
):
    bob, token = await approved_user(client, admin_token, "bob@example.com", "bob-password")
    key = await new_key(client, token)
    assert (await me(client, key)).status_code == 200

    response = await client.delete(f"/api/users/{bob}", headers=bearer(admin_token))
    assert response.status_code == 204, response.text
    assert response.content == b""

    users = (await client.get("/api/users", headers=bearer(admin_token))).json()
    assert [u["email"] for u in users] == ["admin@example.com"]
    assert (await me(client, token)).status_code == 401
    assert (await me(client, key)).status_code == 401
    async with gateway.core.sessions() as session:
        keys = (await session.exec(select(ApiKey).where(ApiKey.user_id == bob))).all()
    assert keys == []  # ON DELETE CASCADE really ran (foreign keys are on)
    response = await client.post(
        "/api/auth/login", json={"email": "bob@example.com", "password": "bob-password"}
    )
    assert response.status_code == 401
    # The email is free again.
    await register(client, "bob@example.com", "bob-password-2")


@pytest.mark.both_databases
async def test_reset_password(client, admin_token):
    bob, token = await approved_user(client, admin_token, "bob@example.com", "bob-password")
    response = await client.post(
        f"/api/users/{bob}/password",
        json={"password": "brand-new-pass"},
        headers=bearer(admin_token),
    )
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "bob@example.com"
    assert "brand-new-pass" not in response.text
    assert "argon2" not in response.text

    assert (await me(client, token)).status_code == 401
    response = await client.post(
        "/api/auth/login", json={"email": "bob@example.com", "password": "bob-password"}
    )
    assert response.status_code == 401
    fresh = await login(client, "bob@example.com", "brand-new-pass")
    assert (await me(client, fresh)).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"password": "short"}, 422),
        ({"password": "p" * 1025}, 422),
        ({}, 422),
        ({"password": "long-enough", "extra": 1}, 422),
        ({"password": 12345678}, 422),
    ],
)
async def test_reset_password_refuses_bad_bodies(client, admin_token, body, status):
    admin = await my_id(client, admin_token)
    response = await client.post(
        f"/api/users/{admin}/password", json=body, headers=bearer(admin_token)
    )
    assert response.status_code == status, response.text
    assert (await me(client, admin_token)).status_code == 200  # nothing changed


@pytest.mark.parametrize(
    "body",
    [
        {"status": "banned"},
        {"is_admin": "maybe"},
        {"is_admin": [True]},
        {"role": "admin"},
        {"email": "new@example.com"},
    ],
)
async def test_patch_refuses_bad_bodies(client, admin_token, body):
    bob = await register(client, "bob@example.com", "bob-password")
    response = await patch(client, admin_token, bob, **body)
    assert response.status_code == 422, response.text


async def test_non_admins_get_403_everywhere(client, admin_token):
    admin = await my_id(client, admin_token)
    bob, token = await approved_user(client, admin_token, "bob@example.com", "bob-password")
    key = await new_key(client, token)
    for credential in (token, key):
        headers = bearer(credential)
        calls = [
            client.get("/api/users", headers=headers),
            client.patch(f"/api/users/{bob}", json={"is_admin": True}, headers=headers),
            client.patch(f"/api/users/{admin}", json={"status": "disabled"}, headers=headers),
            client.delete(f"/api/users/{admin}", headers=headers),
            client.post(
                f"/api/users/{admin}/password", json={"password": "hijacked-pass"}, headers=headers
            ),
        ]
        for call in calls:
            response = await call
            assert response.status_code == 403, response.text
            assert response.json()["code"] == "admin_required"
    # Nothing happened.
    assert (await me(client, token)).json()["is_admin"] is False
    assert (await me(client, admin_token)).status_code == 200
    await login(client, *ADMIN)


async def test_no_token_gets_401_on_admin_routes(client, admin_token):
    admin = await my_id(client, admin_token)
    for response in (
        await client.get("/api/users"),
        await client.patch(f"/api/users/{admin}", json={"status": "disabled"}),
        await client.delete(f"/api/users/{admin}"),
        await client.post(f"/api/users/{admin}/password", json={"password": "hijacked-pass"}),
    ):
        assert response.status_code == 401, response.text


async def test_unknown_user_is_404(client, admin_token):
    headers = bearer(admin_token)
    for response in (
        await client.patch("/api/users/9999", json={"status": "approved"}, headers=headers),
        await client.delete("/api/users/9999", headers=headers),
        await client.post(
            "/api/users/9999/password", json={"password": "long-enough"}, headers=headers
        ),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "user_not_found"


@pytest.mark.both_databases
async def test_the_last_admin_cannot_be_demoted_disabled_or_deleted(client, admin_token):
    admin = await my_id(client, admin_token)
    refusals = [
        await patch(client, admin_token, admin, is_admin=False),
        await patch(client, admin_token, admin, status="disabled"),
        await patch(client, admin_token, admin, status="pending"),
        await client.delete(f"/api/users/{admin}", headers=bearer(admin_token)),
    ]
    for response in refusals:
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "last_admin"
    body = (await me(client, admin_token)).json()
    assert (body["is_admin"], body["status"]) == (True, "approved")


async def test_a_second_admin_makes_demote_disable_delete_possible(client, admin_token):
    admin = await my_id(client, admin_token)
    bob, bob_token = await approved_user(client, admin_token, "bob@example.com", "bob-password")
    assert (await patch(client, admin_token, bob, is_admin=True)).status_code == 200

    # The first admin can now step down...
    response = await patch(client, admin_token, admin, is_admin=False)
    assert response.status_code == 200, response.text
    # ... which makes bob the last admin: he cannot remove himself.
    response = await patch(client, bob_token, bob, is_admin=False)
    assert response.status_code == 409
    response = await client.delete(f"/api/users/{bob}", headers=bearer(bob_token))
    assert response.status_code == 409

    # Promote the first admin back; then bob can disable and delete him.
    assert (await patch(client, bob_token, admin, is_admin=True)).status_code == 200
    assert (await patch(client, bob_token, admin, status="disabled")).status_code == 200
    assert (await me(client, admin_token)).status_code == 401
    response = await client.delete(f"/api/users/{admin}", headers=bearer(bob_token))
    assert response.status_code == 204, response.text
    users = (await client.get("/api/users", headers=bearer(bob_token))).json()
    assert [(u["email"], u["is_admin"]) for u in users] == [("bob@example.com", True)]


async def test_a_disabled_admin_does_not_count_as_an_active_admin(client, admin_token):
    admin = await my_id(client, admin_token)
    bob, _ = await approved_user(client, admin_token, "bob@example.com", "bob-password")
    assert (await patch(client, admin_token, bob, is_admin=True)).status_code == 200
    assert (await patch(client, admin_token, bob, status="disabled")).status_code == 200
    response = await patch(client, admin_token, admin, is_admin=False)
    assert response.status_code == 409, response.text
    response = await client.delete(f"/api/users/{admin}", headers=bearer(admin_token))
    assert response.status_code == 409, response.text
    # A disabled admin can be deleted freely: it was not active.
    response = await client.delete(f"/api/users/{bob}", headers=bearer(admin_token))
    assert response.status_code == 204, response.text
