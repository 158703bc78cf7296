"""Typed keys for what the engine stores on the aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from taskyard.http.routing import Endpoint

if TYPE_CHECKING:
    from taskyard.engine import Engine

ENGINE: web.AppKey[Engine] = web.AppKey("engine")
ENDPOINTS: web.AppKey[list[Endpoint]] = web.AppKey("endpoints")
