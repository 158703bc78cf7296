"""Assemble the aiohttp application: middleware, the engine's endpoints and the plugins' ones."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from taskyard.http import (
    alerts,
    client_socket,
    dashboard,
    events,
    metrics,
    pauses,
    rate_limits,
    runs,
    schedules,
    system,
    tokens,
    worker_socket,
    workflows,
)
from taskyard.http.errors import MAX_REQUEST_BYTES, error_middleware, quiet_malformed_requests
from taskyard.http.forwarding import FORWARDER, Forwarder
from taskyard.http.keys import ENDPOINTS, ENGINE, OPENAPI, Host
from taskyard.http.routing import AUTHENTICATOR, Router, mount

CORE_ROUTERS = (
    system.router,
    tokens.router,
    runs.router,
    workflows.router,
    events.router,
    rate_limits.router,
    pauses.router,
    schedules.router,
    alerts.router,
    worker_socket.router,
    client_socket.router,
)


def build_app(engine: Host, plugin_routers: Sequence[Router] = ()) -> web.Application:
    max_bytes = engine.settings.max_request_bytes
    quiet_malformed_requests()
    app = web.Application(client_max_size=max_bytes, middlewares=[error_middleware])
    app[MAX_REQUEST_BYTES] = max_bytes
    app[ENGINE] = engine
    app[AUTHENTICATOR] = engine.authenticate
    app[FORWARDER] = Forwarder(engine.cluster)
    app.on_cleanup.append(_close_forwarder)
    endpoints = [ep for router in (*CORE_ROUTERS, *plugin_routers) for ep in router.endpoints]
    app[ENDPOINTS] = endpoints
    app[OPENAPI] = {}
    mount(app, endpoints)
    client_socket.install(app, endpoints)
    dashboard.install(app)
    metrics.install(app)
    app.on_shutdown.append(_disconnect_workers)
    return app


async def _close_forwarder(app: web.Application) -> None:
    await app[FORWARDER].close()


async def _disconnect_workers(app: web.Application) -> None:
    """Worker websockets live until closed: close them so shutdown does not wait on them."""
    await app[ENGINE].services.workers.disconnect()
