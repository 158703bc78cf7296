"""Bad requests get a clear JSON error; unexpected failures never leak a traceback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from taskyard.config import EngineSettings
from taskyard.engine import Engine
from taskyard.plugins import Call, Role, Router, hookimpl
from tests.conftest import TenantTokens


async def test_unknown_path_is_json_404(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/nope") as response:
        assert response.status == 404
        assert (await response.json())["error"] == {
            "code": "not_found", "message": "no endpoint at /api/v1/nope"}


async def test_wrong_method_is_json_405(http: aiohttp.ClientSession) -> None:
    async with http.put("/healthz") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
        assert "PUT is not allowed on /healthz" in (await response.json())["error"]["message"]


async def test_malformed_json_is_400(http: aiohttp.ClientSession, tenant: TenantTokens) -> None:
    async with http.post("/api/v1/tokens", data=b'{"role": "client",',
                         headers=tenant.headers()) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["code"] == "bad_request"
        assert error["message"].startswith("request body is not valid JSON")


async def test_empty_body_is_400(http: aiohttp.ClientSession, tenant: TenantTokens) -> None:
    async with http.post("/api/v1/tokens", headers=tenant.headers()) as response:
        assert response.status == 400
        assert "empty" in (await response.json())["error"]["message"]


@pytest.mark.parametrize(("body", "location"), [
    ({"role": "root"}, "body.role"),
    ({}, "body.role"),
    ({"role": "client", "nmae": "typo"}, "body.nmae"),
    ({"role": "client", "name": "x" * 201}, "body.name"),
    ([1, 2], "body"),
])
async def test_invalid_body_is_422_naming_the_field(http: aiohttp.ClientSession,
                                                    tenant: TenantTokens, body: object,
                                                    location: str) -> None:
    async with http.post("/api/v1/tokens", json=body, headers=tenant.headers()) as response:
        assert response.status == 422
        error = (await response.json())["error"]
        assert error["code"] == "invalid"
        assert error["message"].startswith(f"{location}:")
        assert error["details"][0]["loc"] == location


async def test_nul_characters_are_refused_at_the_edge(http: aiohttp.ClientSession,
                                                      tenant: TenantTokens) -> None:
    async with http.post("/api/v1/tokens", data=b'{"role": "client", "name": "a\\u0000b"}',
                         headers=tenant.headers()) as response:
        assert response.status == 422
        assert "body.name: contains a NUL character" in (await response.json())["error"]["message"]


async def test_bad_path_parameter_is_422(http: aiohttp.ClientSession,
                                         tenant: TenantTokens) -> None:
    async with http.delete("/api/v1/tokens/not-a-uuid", headers=tenant.headers()) as response:
        assert response.status == 422
        assert "path.token_id" in (await response.json())["error"]["message"]


async def test_oversized_body_is_413(db_url: str, tmp_path: Path) -> None:
    settings = EngineSettings(database_url=db_url, port=0, data_dir=tmp_path, migrate=False,
                              max_request_bytes=2048)
    async with Engine(settings) as engine, aiohttp.ClientSession(base_url=engine.url) as http:
        token = (tmp_path / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post("/api/v1/tokens", json={"role": "client", "name": "x" * 4000},
                             headers=headers) as response:
            assert response.status == 413
            error = (await response.json())["error"]
            assert error == {"code": "payload_too_large",
                             "message": "request body is larger than the limit of 2048 bytes"}
        async with http.get("/healthz") as response:
            assert response.status == 200


class Exploding:
    """A plugin whose endpoint fails with an unexpected exception."""

    @hookimpl
    def taskyard_routes(self, router: Router) -> None:
        @router.get("/api/v1/explode", roles=list(Role))
        async def explode(call: Call[None]) -> None:
            raise RuntimeError("secret internal detail")


@pytest.fixture
async def exploding_engine(db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = EngineSettings(database_url=db_url, port=0, data_dir=tmp_path, migrate=False)
    async with Engine(settings, plugins=[Exploding()]) as engine:
        yield engine


async def test_unexpected_errors_are_500_without_traceback(
        exploding_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = (tmp_path / "token").read_text().strip()
    async with aiohttp.ClientSession(base_url=exploding_engine.url) as http:
        async with http.get("/api/v1/explode",
                            headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 500
            request_id = response.headers["X-Request-Id"]
            text = await response.text()
        assert "secret internal detail" not in text
        assert "Traceback" not in text
        assert request_id in text
        assert any(request_id in record.getMessage() and record.exc_info
                   for record in caplog.records)
        async with http.get("/healthz") as response:
            assert response.status == 200


async def test_openapi_describes_the_api(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    assert document["openapi"].startswith("3.1")
    create = document["paths"]["/api/v1/tokens"]["post"]
    assert create["security"] == [{"bearer": []}]
    assert create["x-roles"] == ["admin"]
    body_schema = create["requestBody"]["content"]["application/json"]["schema"]
    role_ref = body_schema["properties"]["role"]["$ref"].rsplit("/", 1)[1]
    assert document["components"]["schemas"][role_ref]["enum"] == ["admin", "client", "worker"]
    assert "security" not in document["paths"]["/healthz"]["get"]
    assert "token_id" in [p["name"] for p in
                          document["paths"]["/api/v1/tokens/{token_id}"]["delete"]["parameters"]]
