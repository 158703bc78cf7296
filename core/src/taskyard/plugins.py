"""The plugin API: hook specifications and the types plugins may use.

A plugin is a Python package that registers an object or module under the entry-point group
`taskyard.plugins` and implements some of the hooks below, marked with `@hookimpl`:

    # pyproject.toml of the plugin
    [project.entry-points."taskyard.plugins"]
    hello = "taskyard_hello"

    # taskyard_hello/__init__.py
    from taskyard.plugins import Call, Router, hookimpl

    @hookimpl
    def taskyard_routes(router: Router) -> None:
        @router.get("/api/v1/hello", summary="Say hello")
        async def hello(call: Call[None]) -> dict[str, str]:
            return {"hello": call.principal.tenant_name}

The engine loads only the plugins it is told to (`taskyard engine --plugin hello`). Hooks may be
plain functions or coroutines; the engine awaits what is awaitable. A hook that raises is logged and
counted, and the engine carries on without it. Plugins use only what this module exports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from taskyard.auth import Principal, Role
from taskyard.errors import ApiError
from taskyard.http.routing import Call, Router

if TYPE_CHECKING:
    from taskyard.config import EngineSettings

PROJECT = "taskyard"
ENTRY_POINT_GROUP = "taskyard.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class PluginHost(Protocol):
    """What a plugin sees of the engine."""

    @property
    def settings(self) -> EngineSettings: ...

    @property
    def url(self) -> str:
        """The base URL the engine serves on, e.g. `http://127.0.0.1:7077`."""
        ...


@hookspec
def taskyard_startup(host: PluginHost) -> Any:
    """Called once the engine is connected to its database and serving on `host.url`.

    Open clients, start background work. May be a coroutine.
    """


@hookspec
def taskyard_shutdown(host: PluginHost) -> Any:
    """Called when the engine stops, after it stopped accepting requests. May be a coroutine."""


@hookspec
def taskyard_routes(router: Router) -> None:
    """Add HTTP endpoints with `router.get/post/put/delete(path, roles=..., ...)`.

    Endpoints are authenticated like the engine's own (`roles=` lists who may call, `roles=None`
    makes an endpoint public) and appear in `/api/v1/openapi.json`.
    """


__all__ = [
    "ENTRY_POINT_GROUP",
    "ApiError",
    "Call",
    "PluginHost",
    "Principal",
    "Role",
    "Router",
    "hookimpl",
    "hookspec",
]
