from tests.conftest import bearer


async def test_health_and_first_admin(client):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.headers["x-request-id"]
    response = await client.post(
        "/api/auth/register", json={"email": "Root@Example.com", "password": "long-password"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["is_admin"] is True
    response = await client.post(
        "/api/auth/login", data={"username": "root@example.com", "password": "long-password"}
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    me = await client.get("/api/auth/me", headers=bearer(token))
    assert me.json()["email"] == "root@example.com"
