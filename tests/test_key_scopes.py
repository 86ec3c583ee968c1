"""API key scopes: `inference` (/v1) and `admin` (/api). New keys are inference only, so a key
pasted into a notebook cannot manage the instance even when an admin made it; keys made before
scopes existed keep both (migration 0003)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from gateway.db import create_engine, downgrade, migrate
from gateway.tokens import api_key_display_prefix, hash_api_key, new_api_key
from tests.conftest import approved_user, bearer, login, make_settings, register_and_login
from tests.support.gateway import running_gateway


async def create_key(client: httpx.AsyncClient, token: str, **body: object) -> httpx.Response:
    return await client.post("/api/keys", json={"name": "sdk", **body}, headers=bearer(token))


async def test_a_new_key_is_for_inference_only(client, admin_token):
    created = await create_key(client, admin_token)
    assert created.status_code == 201, created.text
    assert created.json()["scopes"] == ["inference"]
    key = created.json()["key"]
    assert (await client.get("/v1/models", headers=bearer(key))).status_code == 200
    # Even an admin's key cannot touch the management API or the metrics without `admin`.
    for path in ("/api/auth/me", "/api/users", "/api/profiles", "/api/keys", "/metrics"):
        response = await client.get(path, headers=bearer(key))
        assert response.status_code == 403, (path, response.text)
        if path != "/metrics":
            assert response.json()["code"] == "insufficient_scope"
            assert "'admin' scope" in response.json()["detail"]
    listed = (await client.get("/api/keys", headers=bearer(admin_token))).json()
    assert listed[0]["scopes"] == ["inference"]


async def test_an_admin_only_key_is_refused_on_v1_in_openais_shape(client, admin_token):
    key = (await create_key(client, admin_token, scopes=["admin"])).json()["key"]
    assert (await client.get("/api/users", headers=bearer(key))).status_code == 200
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        response = await client.request(
            method, path, headers=bearer(key), json={"model": "x", "messages": []}
        )
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["code"] == "insufficient_scope"
        assert "'inference' scope" in error["message"]


async def test_a_key_with_both_scopes_calls_both_apis_with_its_owners_rights(client, admin_token):
    body = {"scopes": ["admin", "inference", "admin"]}
    created = (await create_key(client, admin_token, **body)).json()
    assert created["scopes"] == ["inference", "admin"]  # one of each, in a fixed order
    key = created["key"]
    assert (await client.get("/v1/models", headers=bearer(key))).status_code == 200
    assert (await client.get("/api/users", headers=bearer(key))).status_code == 200
    # The scope never raises a non-admin owner: bob's admin-scoped key is still bob.
    _, bob_token = await approved_user(client, admin_token, "bob@example.com")
    bob_key = (await create_key(client, bob_token, scopes=["admin"])).json()["key"]
    assert (await client.get("/api/auth/me", headers=bearer(bob_key))).status_code == 200
    assert (await client.get("/api/users", headers=bearer(bob_key))).status_code == 403


@pytest.mark.parametrize(
    "scopes", [[], ["root"], ["inference", "everything"], "inference", ["Admin"], [None]]
)
async def test_unknown_or_empty_scopes_are_refused(client, admin_token, scopes):
    response = await create_key(client, admin_token, scopes=scopes)
    assert response.status_code == 422, response.text
    assert response.json()["param"].startswith("scopes")


@pytest.mark.both_databases
async def test_keys_made_before_scopes_keep_both(tmp_path: Path, database_url: str | None):
    """A database at revision 0002 with a key in it: after the upgrade that key still reaches
    /v1 and /api, as it did before, while new rows default to inference only."""
    settings = make_settings(tmp_path / "home", database_url=database_url)
    async with (
        running_gateway(settings) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=60) as http,
    ):
        await register_and_login(http, "admin@example.com", "admin-password")
    engine = create_engine(settings.sqlalchemy_url)
    secret = new_api_key()
    try:
        await downgrade(engine, "0002")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO api_keys (user_id, name, prefix, key_hash, created_at) "
                    "VALUES (1, 'old', :prefix, :hash, CURRENT_TIMESTAMP)"
                ),
                {"prefix": api_key_display_prefix(secret), "hash": hash_api_key(secret)},
            )
            await conn.execute(
                text(
                    "INSERT INTO api_keys (user_id, name, prefix, key_hash, created_at) "
                    "VALUES (1, 'other', 'sk-x', 'h', CURRENT_TIMESTAMP)"
                )
            )
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO api_keys (user_id, name, prefix, key_hash, created_at) "
                    "VALUES (1, 'raw', 'sk-y', 'h2', CURRENT_TIMESTAMP)"
                )
            )
    finally:
        await engine.dispose()
    async with (
        running_gateway(settings) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=60) as http,
    ):
        assert (await http.get("/api/auth/me", headers=bearer(secret))).status_code == 200
        assert (await http.get("/v1/models", headers=bearer(secret))).status_code == 200
        admin = await login(http, "admin@example.com", "admin-password")
        listed = (await http.get("/api/keys", headers=bearer(admin))).json()
    scopes = {k["name"]: k["scopes"] for k in listed}
    assert scopes == {
        "old": ["inference", "admin"],
        "other": ["inference", "admin"],
        "raw": ["inference"],  # the column's default after the upgrade: least privilege
    }
