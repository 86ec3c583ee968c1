"""Access tokens: forged, expired, revoked and stale tokens all get 401."""

from __future__ import annotations

import base64
import json
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from gateway.tokens import (
    InvalidToken,
    hash_api_key,
    issue_access_token,
    looks_like_api_key,
    new_api_key,
    read_access_token,
)
from tests.conftest import TEST_SECRET, approved_user, bearer, login

ADMIN = ("admin@example.com", "admin-password")
OTHER_SECRET = "another-secret-that-is-long-enough-" + "y" * 20


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64_json(value: dict[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def claims(user_id: int, version: int = 0, **changes: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "sub": str(user_id),
        "ver": version,
        "iat": now,
        "exp": now + timedelta(hours=1),
        "typ": "access",
    }
    for name, value in changes.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    return values


def sign(payload: dict[str, Any], secret: str = TEST_SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        # HS512 with our 52-byte test secret is "short" for PyJWT; the forgery is the point.
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(payload, secret, algorithm=algorithm)


async def me_status(client: httpx.AsyncClient, token: str) -> int:
    return (await client.get("/api/auth/me", headers=bearer(token))).status_code


async def test_forged_tokens_all_get_401(client, admin_token):
    admin_id = (await client.get("/api/auth/me", headers=bearer(admin_token))).json()["id"]
    user_id, user_token = await approved_user(
        client, admin_token, "bob@example.com", "bob-password"
    )

    # A token we craft with the right key and claims works: the forgeries below differ only
    # in what each one gets wrong, so their 401s are about that, not about our crafting.
    assert await me_status(client, sign(claims(admin_id))) == 200

    header, payload, signature = user_token.split(".")
    user_claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert user_claims["sub"] == str(user_id)
    tampered_payload = b64_json({**user_claims, "sub": str(admin_id)})
    none_header = b64_json({"alg": "none", "typ": "JWT"})
    now = datetime.now(UTC)

    forgeries = {
        "signed with another key": sign(claims(admin_id), OTHER_SECRET),
        "alg none, no signature": f"{none_header}.{b64_json(claims_json(admin_id))}.",
        "alg none, old signature": f"{none_header}.{payload}.{signature}",
        "HS512 with the right secret": sign(claims(admin_id), algorithm="HS512"),
        "HS384 with the right secret": sign(claims(admin_id), algorithm="HS384"),
        "expired": sign(
            claims(admin_id, iat=now - timedelta(hours=2), exp=now - timedelta(hours=1))
        ),
        "not yet valid": sign(claims(admin_id, nbf=now + timedelta(hours=1))),
        "no sub": sign(claims(admin_id, sub=None)),
        "no exp": sign(claims(admin_id, exp=None)),
        "no iat": sign(claims(admin_id, iat=None)),
        "no typ": sign(claims(admin_id, typ=None)),
        "wrong typ": sign(claims(admin_id, typ="refresh")),
        "no token version": sign(claims(admin_id, ver=None)),
        "wrong token version": sign(claims(admin_id, version=7)),
        "non-numeric sub": sign(claims(admin_id, sub="admin")),
        "unknown user": sign(claims(9999)),
        "tampered payload, signature kept": f"{header}.{tampered_payload}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "garbage": "not-a-token",
        "three garbage parts": "a.b.c",
        "empty parts": "..",
        "truncated": user_token[:-10],
    }
    accepted = {}
    for name, token in forgeries.items():
        response = await client.get("/api/auth/me", headers=bearer(token))
        if response.status_code != 401:
            accepted[name] = (response.status_code, response.text)
        else:
            assert response.json()["detail"], name
    assert accepted == {}

    # The genuine tokens still work afterwards.
    assert await me_status(client, user_token) == 200
    assert await me_status(client, admin_token) == 200


def claims_json(user_id: int) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    return {"sub": str(user_id), "ver": 0, "iat": now, "exp": now + 3600, "typ": "access"}


async def test_forged_token_cannot_reach_admin_routes(client, admin_token):
    admin_id = (await client.get("/api/auth/me", headers=bearer(admin_token))).json()["id"]
    for token in (
        sign(claims(admin_id), OTHER_SECRET),
        sign(claims(admin_id), algorithm="HS512"),
        f"{b64_json({'alg': 'none', 'typ': 'JWT'})}.{b64_json(claims_json(admin_id))}.",
    ):
        response = await client.get("/api/users", headers=bearer(token))
        assert response.status_code == 401, response.text


async def test_token_of_a_deleted_user_gets_401(client, admin_token):
    user_id, user_token = await approved_user(
        client, admin_token, "bob@example.com", "bob-password"
    )
    assert await me_status(client, user_token) == 200
    response = await client.delete(f"/api/users/{user_id}", headers=bearer(admin_token))
    assert response.status_code == 204, response.text
    assert await me_status(client, user_token) == 401


async def test_token_of_a_deleted_user_does_not_revive_when_the_id_is_reused(client, admin_token):
    """SQLite reuses the highest rowid after a delete: a new user may get the old id.

    The old user's token (same `sub`, token version 0) must not start acting as the new user.
    """
    bob_id, bob_token = await approved_user(client, admin_token, "bob@example.com", "bob-password")
    response = await client.delete(f"/api/users/{bob_id}", headers=bearer(admin_token))
    assert response.status_code == 204, response.text
    carol_id, _ = await approved_user(client, admin_token, "carol@example.com", "carol-password")

    response = await client.get("/api/auth/me", headers=bearer(bob_token))
    assert response.status_code == 401, (
        f"bob's token (user {bob_id}, deleted) authenticates as {response.json().get('email')} "
        f"(user {carol_id})"
    )


async def test_password_reset_kills_tokens_with_the_old_version(client, admin_token):
    user_id, user_token = await approved_user(
        client, admin_token, "bob@example.com", "bob-password"
    )
    old_version = jwt.decode(user_token, TEST_SECRET, algorithms=["HS256"])["ver"]
    # A token we mint with the current version works, so the version is what decides below.
    assert await me_status(client, sign(claims(user_id, version=old_version))) == 200

    response = await client.post(
        f"/api/users/{user_id}/password",
        json={"password": "new-bob-password"},
        headers=bearer(admin_token),
    )
    assert response.status_code == 200, response.text
    assert await me_status(client, user_token) == 401
    assert await me_status(client, sign(claims(user_id, version=old_version))) == 401
    assert await me_status(client, sign(claims(user_id, version=old_version + 1))) == 200
    new_token = await login(client, "bob@example.com", "new-bob-password")
    assert jwt.decode(new_token, TEST_SECRET, algorithms=["HS256"])["ver"] == old_version + 1
    assert await me_status(client, new_token) == 200


async def test_token_from_another_gateway_secret_is_refused(client, admin_token):
    """A token minted by `issue_access_token` with another secret is refused; ours passes."""
    admin_id = (await client.get("/api/auth/me", headers=bearer(admin_token))).json()["id"]
    ours = issue_access_token(TEST_SECRET, admin_id, 0, timedelta(minutes=5))
    theirs = issue_access_token(OTHER_SECRET, admin_id, 0, timedelta(minutes=5))
    assert await me_status(client, ours) == 200
    assert await me_status(client, theirs) == 401


# --- gateway.tokens units ------------------------------------------------------------------


def test_issue_and_read_access_token_round_trip():
    token = issue_access_token(TEST_SECRET, 42, 3, timedelta(minutes=5))
    read = read_access_token(TEST_SECRET, token)
    assert (read.user_id, read.token_version) == (42, 3)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


@pytest.mark.parametrize(
    "token",
    [
        issue_access_token(OTHER_SECRET, 1, 0, timedelta(minutes=5)),
        issue_access_token(TEST_SECRET, 1, 0, timedelta(seconds=-5)),
        sign(claims(1), algorithm="HS512"),
        sign(claims(1, sub=None)),
        sign(claims(1, exp=None)),
        sign(claims(1, iat=None)),
        sign(claims(1, typ=None)),
        "garbage",
        "",
    ],
)
def test_read_access_token_refuses(token):
    with pytest.raises(InvalidToken):
        read_access_token(TEST_SECRET, token)


def test_api_keys_are_sk_and_32_random_bytes_hashed_with_sha256():
    keys = {new_api_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith("sk-")
        assert looks_like_api_key(key)
        raw = base64.urlsafe_b64decode(key[3:] + "=" * (-len(key[3:]) % 4))
        assert len(raw) == 32
        digest = hash_api_key(key)
        assert len(digest) == 64
        assert int(digest, 16) >= 0
        assert key[3:] not in digest
    assert not looks_like_api_key(issue_access_token(TEST_SECRET, 1, 0, timedelta(minutes=1)))
