"""`/api/keys`: create (shown once), list, revoke; a key acts as its owner, within its allowlist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from gateway.errors import Unauthorized
from gateway.tables import ApiKey
from gateway.tokens import hash_api_key
from tests.conftest import approved_user, bearer
from tests.support.gateway import GatewayHandle

BOTH = ["inference", "admin"]  # what these tests need: the key calls /api too


async def create_key(client: httpx.AsyncClient, token: str, **body: object) -> httpx.Response:
    return await client.post("/api/keys", json={"name": "sdk", **body}, headers=bearer(token))


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/auth/me", headers=bearer(token))


@pytest.mark.both_databases
async def test_create_key_shows_it_once(client, admin_token, gateway: GatewayHandle):
    response = await create_key(client, admin_token, name="laptop")
    assert response.status_code == 201, response.text
    body = response.json()
    key = body["key"]
    assert key.startswith("sk-")
    assert len(key) >= 3 + 43  # 32 random bytes, base64url
    assert body["name"] == "laptop"
    assert body["models"] is None
    assert body["expires_at"] is None
    assert key.startswith(body["prefix"])
    assert len(body["prefix"]) < len(key) // 2
    assert "key_hash" not in body
    assert hash_api_key(key) not in response.text

    listed = await client.get("/api/keys", headers=bearer(admin_token))
    assert listed.status_code == 200, listed.text
    [entry] = listed.json()
    assert entry["id"] == body["id"]
    assert entry["prefix"] == body["prefix"]
    assert "key" not in entry
    assert "key_hash" not in entry
    assert key not in listed.text
    assert key[len(body["prefix"]) :] not in listed.text
    assert hash_api_key(key) not in listed.text

    # Stored as its SHA-256 only.
    async with gateway.core.sessions() as session:
        stored = await session.get(ApiKey, body["id"])
    assert stored is not None
    assert stored.key_hash == hash_api_key(key)
    assert key not in repr(stored.model_dump())


@pytest.mark.both_databases
async def test_key_works_as_bearer_and_acts_as_its_owner(client, admin_token):
    _, bob_token = await approved_user(client, admin_token, "bob@example.com", "bob-password")
    key = (await create_key(client, bob_token, scopes=["admin"])).json()["key"]
    response = await me(client, key)
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "bob@example.com"
    assert response.json()["is_admin"] is False
    # The owner's role, not more: bob's key is refused on admin routes.
    assert (await client.get("/api/users", headers=bearer(key))).status_code == 403
    # An admin's key carries the admin role.
    admin_key = (await create_key(client, admin_token, scopes=["admin"])).json()["key"]
    assert (await client.get("/api/users", headers=bearer(admin_key))).status_code == 200


@pytest.mark.both_databases
async def test_allowlist_is_stored_and_enforced_by_the_principal(
    client, admin_token, gateway: GatewayHandle
):
    response = await create_key(client, admin_token, models=["beta", "alpha", "beta"])
    assert response.status_code == 201, response.text
    assert response.json()["models"] == ["alpha", "beta"]
    limited = response.json()["key"]
    unlimited = (await create_key(client, admin_token)).json()["key"]

    authenticator = gateway.core.authenticator
    principal = await authenticator.authenticate(f"Bearer {limited}")
    assert principal.key_id == response.json()["id"]
    assert principal.may_use("alpha")
    assert principal.may_use("beta")
    assert not principal.may_use("other")
    assert not principal.may_use("")
    assert not principal.may_use("ALPHA")

    principal = await authenticator.authenticate(f"Bearer {unlimited}")
    assert principal.models is None
    assert principal.may_use("other")

    # A password login is never limited by a key's allowlist.
    principal = await authenticator.authenticate(f"Bearer {admin_token}")
    assert principal.key_id is None
    assert principal.may_use("other")

    listed = (await client.get("/api/keys", headers=bearer(admin_token))).json()
    assert [k["models"] for k in listed] == [["alpha", "beta"], None]


@pytest.mark.both_databases
async def test_expired_key_gets_401(client, admin_token, gateway: GatewayHandle):
    response = await create_key(client, admin_token, expires_in_days=1, scopes=BOTH)
    assert response.status_code == 201, response.text
    expires_at = datetime.fromisoformat(response.json()["expires_at"])
    remaining = expires_at - datetime.now(UTC)
    assert timedelta(hours=23) < remaining <= timedelta(days=1)
    expired_id, expired_key = response.json()["id"], response.json()["key"]
    live_key = (await create_key(client, admin_token, expires_in_days=1, scopes=BOTH)).json()["key"]

    async with gateway.core.sessions() as session:
        row = await session.get(ApiKey, expired_id)
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(minutes=1)
        session.add(row)
        await session.commit()

    response = await me(client, expired_key)
    assert response.status_code == 401, response.text
    assert "expired" in response.json()["detail"]
    with pytest.raises(Unauthorized):
        await gateway.core.authenticator.authenticate(f"Bearer {expired_key}")
    assert (await me(client, live_key)).status_code == 200


@pytest.mark.both_databases
async def test_revoked_key_gets_401_immediately(client, admin_token):
    created = (await create_key(client, admin_token, scopes=BOTH)).json()
    other = (await create_key(client, admin_token, name="other", scopes=BOTH)).json()
    assert (await me(client, created["key"])).status_code == 200  # cached by now
    response = await client.delete(f"/api/keys/{created['id']}", headers=bearer(admin_token))
    assert response.status_code == 204, response.text
    assert (await me(client, created["key"])).status_code == 401
    assert (await me(client, other["key"])).status_code == 200
    listed = (await client.get("/api/keys", headers=bearer(admin_token))).json()
    assert [k["id"] for k in listed] == [other["id"]]
    response = await client.delete(f"/api/keys/{created['id']}", headers=bearer(admin_token))
    assert response.status_code == 404


@pytest.mark.both_databases
async def test_users_see_and_delete_only_their_own_keys(client, admin_token):
    _, bob_token = await approved_user(client, admin_token, "bob@example.com", "bob-password")
    admin_key = (await create_key(client, admin_token, name="admin-key", scopes=BOTH)).json()
    bob_key = (await create_key(client, bob_token, name="bob-key", scopes=BOTH)).json()

    bob_list = (await client.get("/api/keys", headers=bearer(bob_token))).json()
    assert [k["name"] for k in bob_list] == ["bob-key"]
    admin_list = (await client.get("/api/keys", headers=bearer(admin_token))).json()
    assert sorted(k["name"] for k in admin_list) == ["admin-key", "bob-key"]

    response = await client.delete(f"/api/keys/{admin_key['id']}", headers=bearer(bob_token))
    assert response.status_code == 404, response.text
    assert (await me(client, admin_key["key"])).status_code == 200

    response = await client.delete(f"/api/keys/{bob_key['id']}", headers=bearer(admin_token))
    assert response.status_code == 204, response.text
    assert (await me(client, bob_key["key"])).status_code == 401


async def test_an_api_key_cannot_create_keys(client, admin_token):
    key = (await create_key(client, admin_token, scopes=BOTH)).json()["key"]
    response = await create_key(client, key, name="child")
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "key_scope"
    listed = (await client.get("/api/keys", headers=bearer(admin_token))).json()
    assert len(listed) == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 201},
        {"name": "k", "expires_in_days": 0},
        {"name": "k", "expires_in_days": -1},
        {"name": "k", "expires_in_days": 3651},
        {"name": "k", "models": "alpha"},
        {"name": "k", "user_id": 1},
        {"name": "k", "key": "sk-chosen-by-me"},
    ],
)
async def test_create_key_refuses_bad_bodies(client, admin_token, body):
    response = await client.post("/api/keys", json=body, headers=bearer(admin_token))
    assert response.status_code == 422, response.text


async def test_key_routes_need_a_token(client, admin_token):
    assert (await client.post("/api/keys", json={"name": "k"})).status_code == 401
    assert (await client.get("/api/keys")).status_code == 401
    assert (await client.delete("/api/keys/1")).status_code == 401
    bogus = bearer("sk-" + "A" * 43)
    assert (await client.get("/api/keys", headers=bogus)).status_code == 401


async def test_allowlist_is_enforced_on_v1(client, admin_token):
    for name in ("alpha", "other"):
        response = await client.post(
            "/api/profiles",
            json={"name": name, "command": ["/bin/true", "{port}"]},
            headers=bearer(admin_token),
        )
        assert response.status_code == 201, response.text
    limited = (await create_key(client, admin_token, models=["alpha"])).json()["key"]
    unlimited = (await create_key(client, admin_token)).json()["key"]

    response = await client.get("/v1/models", headers=bearer(limited))
    assert response.status_code == 200, response.text
    assert [m["id"] for m in response.json()["data"]] == ["alpha"]
    assert (await client.get("/v1/models/alpha", headers=bearer(limited))).status_code == 200
    response = await client.get("/v1/models/other", headers=bearer(limited))
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "model_not_allowed"
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "other", "messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(limited),
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "model_not_allowed"

    response = await client.get("/v1/models", headers=bearer(unlimited))
    assert sorted(m["id"] for m in response.json()["data"]) == ["alpha", "other"]
    assert (await client.get("/v1/models/other", headers=bearer(unlimited))).status_code == 200
