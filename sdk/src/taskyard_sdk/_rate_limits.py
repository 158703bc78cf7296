"""Rate limits shared by tasks: `ty.rate_limits.put("openai", limit=100, duration="minute")`."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from taskyard_sdk._transport import run_sync
from taskyard_sdk.models import RateDuration, RateLimitList, RateLimitView

if TYPE_CHECKING:
    from taskyard_sdk._client import Taskyard


class RateLimits:
    """Set, read and remove the tenant's named rate limits (tasks refer to them with
    `RateLimit(key=...)`); `aio_` variants of everything."""

    def __init__(self, client: Taskyard) -> None:
        self._client = client

    async def aio_put(
        self, key: str, *, limit: int, duration: RateDuration | str = RateDuration.MINUTE
    ) -> RateLimitView:
        """At most `limit` units per `duration` ("second", "minute", "hour" or "day"). Changing
        the limit keeps what was taken in the current window; changing the duration starts a new
        window."""
        data = await self._client.transport.request(
            "PUT",
            f"/api/v1/rate-limits/{quote(key, safe='')}",
            json_body={"limit": limit, "duration": RateDuration(duration).value},
        )
        return RateLimitView.model_validate(data)

    async def aio_list(self) -> list[RateLimitView]:
        """Every limit and dynamic-key bucket with units taken, with what is left now."""
        data = await self._client.transport.request("GET", "/api/v1/rate-limits")
        return RateLimitList.model_validate(data).rate_limits

    async def aio_get(self, key: str) -> RateLimitView:
        data = await self._client.transport.request(
            "GET", f"/api/v1/rate-limits/{quote(key, safe='')}"
        )
        return RateLimitView.model_validate(data)

    async def aio_delete(self, key: str) -> None:
        await self._client.transport.request("DELETE", f"/api/v1/rate-limits/{quote(key, safe='')}")

    def put(
        self, key: str, *, limit: int, duration: RateDuration | str = RateDuration.MINUTE
    ) -> RateLimitView:
        return run_sync(self.aio_put(key, limit=limit, duration=duration))

    def list(self) -> list[RateLimitView]:
        return run_sync(self.aio_list())

    def get(self, key: str) -> RateLimitView:
        return run_sync(self.aio_get(key))

    def delete(self, key: str) -> None:
        run_sync(self.aio_delete(key))
