"""Health, identity and the API description."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from pydantic import BaseModel

from taskyard.domain.auth import Role
from taskyard.http.keys import ENDPOINTS, ENGINE, OPENAPI
from taskyard.http.openapi import build_openapi
from taskyard.http.routing import Call, Endpoint, Router

router = Router(tags=("system",))


class Health(BaseModel):
    status: str
    database: str


class WhoAmI(BaseModel):
    tenant_id: str
    tenant_name: str
    token_id: str
    role: Role


@router.get("/healthz", roles=None, response=Health)
async def healthz(call: Call[None]) -> web.StreamResponse:
    """Liveness and database reachability; needs no token."""
    engine = call.request.app[ENGINE]
    try:
        async with asyncio.timeout(2):
            await engine.pool.fetchval("SELECT 1")
    except Exception:  # any failure to answer means the database is not usable
        return web.json_response({"status": "degraded", "database": "unreachable"}, status=503)
    return web.json_response({"status": "ok", "database": "ok"})


@router.get("/api/v1/openapi.json", roles=None)
async def openapi(call: Call[None]) -> web.StreamResponse:
    """This API's OpenAPI 3.1 description."""
    cache = call.request.app[OPENAPI]
    if "document" not in cache:  # built once: it is public, and costs the loop ~100 ms
        endpoints: list[Endpoint] = call.request.app[ENDPOINTS]
        cache["document"] = orjson.dumps(build_openapi(endpoints))
    return web.Response(body=cache["document"], content_type="application/json")


@router.get("/api/v1/whoami", roles=list(Role), response=WhoAmI)
async def whoami(call: Call[None]) -> WhoAmI:
    """The tenant and role of the calling token."""
    p = call.principal
    return WhoAmI(
        tenant_id=str(p.tenant_id), tenant_name=p.tenant_name, token_id=str(p.token_id), role=p.role
    )
