"""Every way a request can fail authentication or authorisation, and what it gets back."""

from __future__ import annotations

import aiohttp
import pytest

from taskyard.domain.auth import Role
from taskyard.engine import Engine
from tests.conftest import TenantTokens


async def error_of(response: aiohttp.ClientResponse) -> dict[str, str]:
    body = await response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"]
    assert body["error"]["message"]
    return body["error"]


async def test_healthz_needs_no_token(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok", "database": "ok"}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing Authorization header"),
        ("", "missing Authorization header"),
        ("Basic dXNlcjpwYXNz", "must be 'Bearer <token>'"),
        ("Bearer", "must be 'Bearer <token>'"),
        ("Bearer not-a-taskyard-token", "token is malformed"),
        ("Bearer ty_" + "x" * 43, "invalid or has been revoked"),
    ],
)
async def test_bad_credentials_get_401(
    http: aiohttp.ClientSession, header: str | None, message: str
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    async with http.get("/api/v1/whoami", headers=headers) as response:
        assert response.status == 401
        error = await error_of(response)
        assert error["code"] == "unauthorized"
        assert message in error["message"]


async def test_each_role_is_recognised(http: aiohttp.ClientSession, tenant: TenantTokens) -> None:
    for role in ("admin", "client", "worker"):
        async with http.get("/api/v1/whoami", headers=tenant.headers(role)) as response:
            assert response.status == 200
            body = await response.json()
            assert body["role"] == role
            assert body["tenant_id"] == str(tenant.tenant_id)


@pytest.mark.parametrize("role", ["client", "worker"])
async def test_wrong_role_gets_403(
    http: aiohttp.ClientSession, tenant: TenantTokens, role: str
) -> None:
    async with http.post(
        "/api/v1/tokens", json={"role": "client"}, headers=tenant.headers(role)
    ) as response:
        assert response.status == 403
        error = await error_of(response)
        assert error["code"] == "forbidden"
        assert "needs a token with role admin" in error["message"]
        assert f"has role {role}" in error["message"]


async def test_created_token_works_and_revoked_token_is_refused(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    async with http.post(
        "/api/v1/tokens", json={"role": "client", "name": "ci"}, headers=tenant.headers()
    ) as response:
        assert response.status == 201
        created = await response.json()
    assert created["token"].startswith("ty_")
    assert len(created["token"]) >= 3 + 43  # 32 random bytes, url-safe base64
    client = {"Authorization": f"Bearer {created['token']}"}
    async with http.get("/api/v1/whoami", headers=client) as response:
        assert (await response.json())["role"] == "client"

    async with http.get("/api/v1/tokens", headers=tenant.headers()) as response:
        listed = await response.json()
    assert created["token_id"] in [t["token_id"] for t in listed]
    assert all("token" not in t for t in listed), "secrets are never listed"

    async with http.delete(
        f"/api/v1/tokens/{created['token_id']}", headers=tenant.headers()
    ) as response:
        assert response.status == 200
        assert (await response.json())["revoked_at"] is not None
    async with http.get("/api/v1/whoami", headers=client) as response:
        assert response.status == 401
        assert "revoked" in (await error_of(response))["message"]


async def test_tokens_are_stored_only_as_hashes(engine: Engine, tenant: TenantTokens) -> None:
    rows = await engine.pool.fetch(
        "SELECT token_hash FROM api_tokens WHERE tenant_id = $1", tenant.tenant_id
    )
    stored = [bytes(row["token_hash"]) for row in rows]
    assert len(stored) == len(Role)
    for secret in (tenant.admin, tenant.client, tenant.worker, tenant.viewer):
        assert all(secret.encode() not in value for value in stored)


async def test_a_token_cannot_reach_another_tenant(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    other = await engine.repository.create_tenant("other-tenant")
    other_token, _ = await engine.repository.create_token(other.tenant_id, Role.CLIENT)
    async with http.delete(
        f"/api/v1/tokens/{other_token.token_id}", headers=tenant.headers()
    ) as response:
        assert response.status == 404
    async with http.get("/api/v1/tokens", headers=tenant.headers()) as response:
        ids = {t["token_id"] for t in await response.json()}
    assert str(other_token.token_id) not in ids
    still = await engine.repository.list_tokens(other.tenant_id)
    assert still[0].revoked_at is None


async def test_the_last_admin_token_of_a_tenant_cannot_be_revoked_over_rest(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    async with http.get("/api/v1/tokens", headers=tenant.headers()) as response:
        [admin] = [t for t in await response.json() if t["role"] == "admin"]
    async with http.delete(
        f"/api/v1/tokens/{admin['token_id']}", headers=tenant.headers()
    ) as response:
        assert response.status == 409
        assert "last admin token" in (await error_of(response))["message"]
    async with http.post(
        "/api/v1/tokens", json={"role": "admin", "name": "second"}, headers=tenant.headers()
    ) as response:
        second = await response.json()
    async with http.delete(
        f"/api/v1/tokens/{admin['token_id']}", headers=tenant.headers()
    ) as response:
        assert response.status == 200  # another admin token remains
    headers = {"Authorization": f"Bearer {second['token']}"}
    async with http.delete(f"/api/v1/tokens/{second['token_id']}", headers=headers) as response:
        assert response.status == 409
    async with http.get("/api/v1/whoami", headers=headers) as response:
        assert response.status == 200
