"""Rate limits: set, read and remove the tenant's named limits; read dynamic keys' buckets."""

from __future__ import annotations

from typing import Any

from taskyard.domain.auth import READERS, WRITERS
from taskyard.domain.rate_limits import Usage
from taskyard.errors import NotFound
from taskyard.http.keys import ENGINE
from taskyard.http.routing import Call, Router
from taskyard_sdk.models import (
    RATE_KEY_PATTERN,
    RateLimitList,
    RateLimitRequest,
    RateLimitView,
)

router = Router(tags=("rate limits",))
KEY = {"key": RATE_KEY_PATTERN}  # the router refuses other keys (422)


def rate_limit_view(usage: Usage) -> RateLimitView:
    """What a limit's usage is answered as (the REST API's and the dashboard's)."""
    used = int(sum(units for _, units in usage.slots))
    return RateLimitView(
        key=usage.key,
        limit=usage.limit,
        duration=usage.duration,
        configured=usage.configured,
        used=used,
        available=max(0, usage.limit - used),
    )


@router.put(
    "/api/v1/rate-limits/{key}",
    roles=WRITERS,
    body=RateLimitRequest,
    response=RateLimitView,
    params=KEY,
)
async def put_rate_limit(call: Call[RateLimitRequest]) -> RateLimitView:
    """Set a named limit: at most `limit` units per `duration` for the tasks that name it with
    `RateLimit(key=...)`. Runs waiting for it are decided again at once."""
    key = call.path["key"]
    engine = call.request.app[ENGINE]
    await engine.services.rate_limits.put(
        call.principal.tenant_id, key, call.body.limit, call.body.duration
    )
    return await _get(call, key)


@router.get("/api/v1/rate-limits", roles=READERS, response=RateLimitList)
async def list_rate_limits(call: Call[None]) -> RateLimitList:
    """Named limits, and the buckets of dynamic keys that have units taken, with what is left
    in their current window."""
    engine = call.request.app[ENGINE]
    usage = await engine.services.rate_limits.usage(call.principal.tenant_id)
    return RateLimitList(rate_limits=[rate_limit_view(u) for u in usage])


@router.get("/api/v1/rate-limits/{key}", roles=READERS, response=RateLimitView, params=KEY)
async def get_rate_limit(call: Call[None]) -> RateLimitView:
    return await _get(call, call.path["key"])


@router.delete("/api/v1/rate-limits/{key}", roles=WRITERS, status=204, params=KEY)
async def delete_rate_limit(call: Call[None]) -> None:
    """Remove a named limit: runs that still wait for it fail, as new ones naming it do."""
    engine = call.request.app[ENGINE]
    await engine.services.rate_limits.delete(call.principal.tenant_id, call.path["key"])


async def _get(call: Call[Any], key: str) -> RateLimitView:
    engine = call.request.app[ENGINE]
    usage = await engine.services.rate_limits.usage(call.principal.tenant_id)
    for bucket in usage:
        if bucket.key == key:
            return rate_limit_view(bucket)
    raise NotFound(f"no rate limit {key!r} in this tenant")
