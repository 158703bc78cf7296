"""Bad requests get a clear JSON error; unexpected failures never leak a traceback."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from taskyard.config import EngineSettings
from taskyard.engine import Engine
from taskyard.plugins import Call, Role, Router, hookimpl
from taskyard_sdk.protocol import MAX_JSON_DEPTH
from tests.conftest import TenantTokens

JSON = {"Content-Type": "application/json"}


async def test_unknown_path_is_json_404(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/nope") as response:
        assert response.status == 404
        assert (await response.json())["error"] == {
            "code": "not_found",
            "message": "no endpoint at /api/v1/nope",
        }


async def test_wrong_method_is_json_405(http: aiohttp.ClientSession) -> None:
    async with http.put("/healthz") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
        assert "PUT is not allowed on /healthz" in (await response.json())["error"]["message"]


async def test_malformed_json_is_400(http: aiohttp.ClientSession, tenant: TenantTokens) -> None:
    async with http.post(
        "/api/v1/tokens", data=b'{"role": "client",', headers={**tenant.headers(), **JSON}
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["code"] == "bad_request"
        assert error["message"].startswith("request body is not valid JSON")


async def test_empty_body_is_400(http: aiohttp.ClientSession, tenant: TenantTokens) -> None:
    async with http.post("/api/v1/tokens", headers=tenant.headers()) as response:
        assert response.status == 400
        assert "empty" in (await response.json())["error"]["message"]


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"role": "root"}, "body.role"),
        ({}, "body.role"),
        ({"role": "client", "nmae": "typo"}, "body.nmae"),
        ({"role": "client", "name": "x" * 201}, "body.name"),
        ([1, 2], "body"),
    ],
)
async def test_invalid_body_is_422_naming_the_field(
    http: aiohttp.ClientSession, tenant: TenantTokens, body: object, location: str
) -> None:
    async with http.post("/api/v1/tokens", json=body, headers=tenant.headers()) as response:
        assert response.status == 422
        error = (await response.json())["error"]
        assert error["code"] == "invalid"
        assert error["message"].startswith(f"{location}:")
        assert error["details"][0]["loc"] == location


async def test_nul_characters_are_refused_at_the_edge(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    async with http.post(
        "/api/v1/tokens",
        data=b'{"role": "client", "name": "a\\u0000b"}',
        headers={**tenant.headers(), **JSON},
    ) as response:
        assert response.status == 422
        assert "body.name: contains a NUL character" in (await response.json())["error"]["message"]


def nested(depth: int) -> object:
    """A list nested `depth` levels deep (a bare list is one level)."""
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        (
            "/api/v1/runs",
            lambda deep: {"task": "t", "input": {"a": deep}},
            "body.input.a[0]…[0][0]",
        ),
        ("/api/v1/events", lambda deep: {"key": "k", "payload": deep}, "body.payload[0][0]…[0][0]"),
        (
            "/api/v1/runs/batch",
            lambda deep: {"runs": [{"task": "t", "input": deep}]},
            "body.runs[0].input…[0][0]",
        ),
    ],
)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 260])
async def test_a_body_nested_too_deep_is_422_naming_where(
    engine: Engine,
    http: aiohttp.ClientSession,
    tenant: TenantTokens,
    path: str,
    body: object,
    where: str,
    depth: int,
) -> None:
    """Deeper than the limit (the body itself is one level) is refused, naming the limit and
    where; 260 levels used to reach the JSON encoder's own limit and answer 500."""
    document = body(nested(depth))  # type: ignore[operator]
    async with http.post(path, json=document, headers=tenant.headers()) as response:
        assert response.status == 422
        error = (await response.json())["error"]
    assert error["message"] == (
        f"{where}: nested more than {MAX_JSON_DEPTH} levels deep; the limit is {MAX_JSON_DEPTH}"
    )
    assert await engine.pool.fetchval("SELECT count(*) FROM runs") == 0
    async with http.get("/healthz") as response:
        assert response.status == 200


async def test_a_body_at_the_depth_limit_is_accepted(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    body = {"task": "t", "input": nested(MAX_JSON_DEPTH - 1)}  # with the body: the limit
    async with http.post("/api/v1/runs", json=body, headers=tenant.headers()) as response:
        assert response.status == 201, await response.text()
        run_id = (await response.json())["run_id"]
    async with http.get(f"/api/v1/runs/{run_id}", headers=tenant.headers()) as response:
        assert (await response.json())["input"] == body["input"], "and it reads back"


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
    ],
)
async def test_a_body_that_is_not_json_by_its_content_type_is_415(
    http: aiohttp.ClientSession, tenant: TenantTokens, content_type: str
) -> None:
    async with http.post(
        "/api/v1/runs",
        data=b'{"task": "t"}',
        headers={**tenant.headers(), "Content-Type": content_type},
    ) as response:
        assert response.status == 415
        error = (await response.json())["error"]
    assert error["code"] == "unsupported_media_type"
    kind = content_type.split(";")[0]
    assert error["message"] == (
        f"request body has Content-Type {kind}; send JSON, with Content-Type: application/json"
    )


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
        None,
    ],
)
async def test_json_content_types_and_none_are_accepted(
    http: aiohttp.ClientSession, tenant: TenantTokens, content_type: str | None
) -> None:
    """No Content-Type at all is read as JSON: the endpoints take nothing else."""
    headers = tenant.headers() | ({"Content-Type": content_type} if content_type else {})
    async with http.post(
        "/api/v1/runs",
        data=b'{"task": "t"}',
        headers=headers,
        skip_auto_headers=() if content_type else ["Content-Type"],
    ) as response:
        assert response.status == 201, await response.text()


# A fixed id nobody has: parameters must be the same in every test process that collects them.
NOBODYS_RUN = uuid.UUID("6e779a7d-57b4-4ba1-af74-aa67c75f60c6")


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/api/v1/workflows/w?version=2147483648", "query.version"),  # past Postgres' integer
        (f"/api/v1/runs/{NOBODYS_RUN}/logs?after=9223372036854775808", "query.after"),  # bigint
    ],
)
async def test_integers_past_what_postgres_stores_are_422(
    http: aiohttp.ClientSession, tenant: TenantTokens, path: str, location: str
) -> None:
    async with http.get(path, headers=tenant.headers()) as response:
        assert response.status == 422
        assert (await response.json())["error"]["message"].startswith(f"{location}:")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/v1/runs/batch", "POST"),
        ("GET", "/api/v1/runs/batch", "POST"),  # not get_run with the run id "batch"
        ("GET", "/api/v1/runs/wait", "POST"),
        ("DELETE", "/api/v1/events/batch", "POST"),
        ("PUT", f"/api/v1/runs/{NOBODYS_RUN}", "GET"),
        ("DELETE", "/api/v1/runs", "GET,POST"),
    ],
)
async def test_405_allows_the_methods_really_routed(
    http: aiohttp.ClientSession, tenant: TenantTokens, method: str, path: str, allowed: str
) -> None:
    async with http.request(method, path, headers=tenant.headers()) as response:
        assert response.status == 405
        assert response.headers["Allow"] == allowed


async def test_a_path_name_that_no_workflow_can_have_is_422(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    async with http.get("/api/v1/workflows/a%00b", headers=tenant.headers()) as response:
        assert response.status == 422
        assert (await response.json())["error"]["message"].startswith("path.name: ")


@pytest.mark.parametrize("query", ["task=a%00", "metadata=k:%00", "status=queued&task=x%00y"])
async def test_nul_characters_in_query_parameters_are_422(
    http: aiohttp.ClientSession, tenant: TenantTokens, query: str
) -> None:
    async with http.get(f"/api/v1/runs?{query}", headers=tenant.headers()) as response:
        assert response.status == 422
        assert "contains a NUL character" in (await response.json())["error"]["message"]


async def test_a_request_http_cannot_parse_is_logged_in_one_line(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp answers it 400 and would log a traceback, which any client could repeat."""
    url = URL(engine.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Probe: \x00\r\n\r\n")
        await writer.drain()
        assert b" 400 " in await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    [record] = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert record.levelname == "WARNING"
    assert record.exc_info is None
    assert record.getMessage().startswith("malformed request refused (400): Invalid header")


async def test_bad_path_parameter_is_422(http: aiohttp.ClientSession, tenant: TenantTokens) -> None:
    async with http.delete("/api/v1/tokens/not-a-uuid", headers=tenant.headers()) as response:
        assert response.status == 422
        assert "path.token_id" in (await response.json())["error"]["message"]


async def test_oversized_body_is_413(db_url: str, tmp_path: Path) -> None:
    settings = EngineSettings(
        database_url=db_url, port=0, data_dir=tmp_path, migrate=False, max_request_bytes=2048
    )
    async with Engine(settings) as engine, aiohttp.ClientSession(base_url=engine.url) as http:
        token = (tmp_path / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(
            "/api/v1/tokens", json={"role": "client", "name": "x" * 4000}, headers=headers
        ) as response:
            assert response.status == 413
            error = (await response.json())["error"]
            assert error == {
                "code": "payload_too_large",
                "message": "request body is larger than the limit of 2048 bytes",
            }
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
    exploding_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = (tmp_path / "token").read_text().strip()
    async with aiohttp.ClientSession(base_url=exploding_engine.url) as http:
        async with http.get(
            "/api/v1/explode", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 500
            request_id = response.headers["X-Request-Id"]
            text = await response.text()
        assert "secret internal detail" not in text
        assert "Traceback" not in text
        assert request_id in text
        assert any(
            request_id in record.getMessage() and record.exc_info for record in caplog.records
        )
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
    body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body_schema = document["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    role_ref = body_schema["properties"]["role"]["$ref"].rsplit("/", 1)[1]
    roles = document["components"]["schemas"][role_ref]["enum"]
    assert roles == ["admin", "client", "worker", "viewer"]
    assert "security" not in document["paths"]["/healthz"]["get"]
    assert "token_id" in [
        p["name"] for p in document["paths"]["/api/v1/tokens/{token_id}"]["delete"]["parameters"]
    ]


async def test_openapi_names_every_status_and_types_ids_as_uuids(
    http: aiohttp.ClientSession,
) -> None:
    async with http.get("/api/v1/openapi.json") as response:
        paths = (await response.json())["paths"]
    for path, status in (
        ("/api/v1/workflows", "200"),
        ("/api/v1/runs", "200"),
        ("/api/v1/workflows/{name}/runs", "200"),
    ):
        responses = paths[path]["post"]["responses"]
        assert {status, "201", "default"} <= responses.keys(), path
        assert responses[status]["content"] == responses["201"]["content"]
    [run_id] = paths["/api/v1/runs/{run_id}"]["get"]["parameters"]
    assert run_id["schema"] == {"type": "string", "format": "uuid"}
    [name, _version] = paths["/api/v1/workflows/{name}"]["get"]["parameters"]
    assert name["schema"]["pattern"].startswith("^[A-Za-z0-9")


async def test_openapi_has_a_schema_for_each_way_a_model_is_read_and_written(
    http: aiohttp.ClientSession,
) -> None:
    """TaskOptions takes a label as a bare value and always writes it whole: each direction
    refers to its own component, not to whichever was generated last."""
    async with http.get("/api/v1/openapi.json") as response:
        document = await response.json()
    schemas = document["components"]["schemas"]
    labels_in = schemas["TaskOptions-Input"]["properties"]["desired_worker_labels"]
    labels_out = schemas["TaskOptions-Output"]["properties"]["desired_worker_labels"]
    assert {"type": "string"} in labels_in["additionalProperties"]["anyOf"]
    assert labels_out["additionalProperties"] == {"$ref": "#/components/schemas/Label"}
    trigger = document["paths"]["/api/v1/runs"]["post"]["requestBody"]["content"]
    assert trigger["application/json"]["schema"] == {"$ref": "#/components/schemas/TriggerRequest"}
    assert schemas["TriggerRequest"]["properties"]["options"]["anyOf"][0] == {
        "$ref": "#/components/schemas/TaskOptions-Input"
    }
