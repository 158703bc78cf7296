"""Typed keys for what the engine stores on the aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from taskyard.http.routing import Endpoint

if TYPE_CHECKING:
    from taskyard.engine import Engine

ENGINE: web.AppKey[Engine] = web.AppKey("engine")
ENDPOINTS: web.AppKey[list[Endpoint]] = web.AppKey("endpoints")
# The OpenAPI document, encoded when first asked for (building it takes ~100 ms of the loop).
OPENAPI: web.AppKey[dict[str, bytes]] = web.AppKey("openapi")
