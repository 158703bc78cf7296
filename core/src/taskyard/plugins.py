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

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from taskyard.domain.auth import Principal, Role
from taskyard.domain.notices import Alert, AlertChannel, RunChanged, RunEnded
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

    async def push_event(
        self, tenant: str, key: str, payload: Any, metadata: dict[str, str] | None = None
    ) -> PushedEvent:
        """Push an event into a tenant (by name), as `POST /api/v1/events` does: stored,
        triggering workflows, waking waits; returns once committed. Raises NotFound for an
        unknown tenant and Unprocessable for a bad key or payload."""
        ...


@dataclass(frozen=True, slots=True)
class PushedEvent:
    event_id: uuid.UUID
    triggered: list[uuid.UUID]  # the workflow runs it started


def host_of(call: Call[Any]) -> PluginHost:
    """The engine serving a request, for plugins' route handlers."""
    from taskyard.http.keys import ENGINE

    host: PluginHost = call.request.app[ENGINE]
    return host


class Action(Protocol):
    """An integration action (`"http:request"`, `"email:send"`): what declarative workflows'
    steps call. `run` receives the step's rendered `with` parameters and returns a JSON-able
    result (the step's output); raising fails the attempt, which is retried by the step's
    `retries`. `check(params)` may refuse parameters up front (raise ValueError)."""

    name: str

    async def run(self, params: dict[str, Any]) -> Any: ...


class TriggerSource(Protocol):
    """Something outside that becomes events: a poller, a queue consumer, Postgres LISTEN.
    `run` runs for as long as the engine does, pushing events with `host.push_event`; the
    engine cancels it at shutdown, and restarts it (after a pause) if it raises."""

    name: str

    async def run(self, host: PluginHost) -> None: ...


@hookspec
def taskyard_trigger_sources() -> Any:
    """Trigger sources this plugin provides: a list of `TriggerSource`s. (A source that
    receives requests, like the webhooks plugin, is a route instead: `taskyard_routes` and
    `host_of(call).push_event(...)`.)"""


@hookspec
def taskyard_actions() -> Any:
    """Integration actions this plugin provides: a list of `Action`s. They run in the engine's
    integration worker as ordinary tasks (named after the action, or after the declarative
    workflow's step), so retries, timeouts, concurrency and rate limits apply to them."""


@hookspec
def taskyard_alert_channels() -> Any:
    """Alert channels this plugin provides: a list of `AlertChannel`s."""


@hookspec
def taskyard_runs_changed(changes: list[RunChanged]) -> Any:
    """Lifecycle observer: every state change of task runs and steps, in batches, once
    committed. Called only when some plugin implements it; keep it quick."""


@hookspec
def taskyard_runs_ended(runs: list[RunEnded]) -> Any:
    """Lifecycle observer: runs that reached their final state, in batches, once committed.
    Called only when some plugin implements it; keep it quick (it may be a coroutine)."""


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
    "Action",
    "Alert",
    "AlertChannel",
    "ApiError",
    "Call",
    "PluginHost",
    "Principal",
    "PushedEvent",
    "Role",
    "Router",
    "RunChanged",
    "RunEnded",
    "TriggerSource",
    "hookimpl",
    "hookspec",
    "host_of",
]
