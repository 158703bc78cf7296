"""Taskyard plugin `http`: the `http:request` integration action.

    taskyard engine --plugin http

Parameters: `url` (required), `method` (default GET), `headers`, `json` (a body sent as JSON),
`timeout` (seconds, default 30). The result is `{"status", "headers", "body"}`, the body decoded
from JSON when the response is JSON. A response that is not 2xx fails the step (and is retried by
its `retries`), naming the status and the start of the body.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from pydantic import BaseModel, Field, ValidationError

from taskyard.plugins import hookimpl


class RequestParams(BaseModel):
    url: str = Field(pattern=r"^https?://")
    method: str = Field(default="GET", pattern=r"^(GET|POST|PUT|PATCH|DELETE|HEAD)$")
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    timeout: float = Field(default=30.0, gt=0, le=3600)


class HttpStatusError(Exception):
    """The server answered, but not with 2xx."""


class HttpRequest:
    """The `http:request` action."""

    name = "http:request"

    def check(self, params: dict[str, Any]) -> None:
        try:
            RequestParams.model_validate(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(
                f"http:request: {'.'.join(map(str, first['loc']))}: {first['msg']}"
            ) from None

    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        self.check(params)
        request = RequestParams.model_validate(params)
        timeout = aiohttp.ClientTimeout(total=request.timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(
                request.method, request.url, headers=request.headers, json=request.json_body
            ) as response,
        ):
            if response.content_type == "application/json":
                body: Any = await response.json()
            else:
                body = await response.text()
            if not 200 <= response.status < 300:
                raise HttpStatusError(
                    f"{request.method} {request.url} answered {response.status}: {str(body)[:500]}"
                )
            return {"status": response.status, "headers": dict(response.headers), "body": body}


@hookimpl
def taskyard_actions() -> list[HttpRequest]:
    return [HttpRequest()]
