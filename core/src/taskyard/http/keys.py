"""Typed keys for what the engine stores on the aiohttp application, and `Host`: what the HTTP
layer needs of the engine that serves it. The engine implements it; no module here imports the
engine, which imports this layer to serve it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from taskyard.http.routing import Endpoint
from taskyard.plugins import PluginHost

if TYPE_CHECKING:
    import asyncpg

    from taskyard.domain.auth import Principal
    from taskyard.integrations.worker import Integrations
    from taskyard.services import Services
    from taskyard.services.cluster import Cluster
    from taskyard.services.metrics import Metrics


class Host(PluginHost, Protocol):
    @property
    def services(self) -> Services: ...

    @property
    def pool(self) -> asyncpg.Pool:
        """For the health check only."""
        ...

    @property
    def integrations(self) -> Integrations: ...

    @property
    def cluster(self) -> Cluster:
        """This node's leases: which tenants it serves, and where the others are owned."""
        ...

    @property
    def metrics(self) -> Metrics:
        """What /metrics reports of the engine."""
        ...

    async def authenticate(self, header: str | None) -> Principal: ...


ENGINE: web.AppKey[Host] = web.AppKey("engine")
ENDPOINTS: web.AppKey[list[Endpoint]] = web.AppKey("endpoints")
# The OpenAPI document, encoded when first asked for (building it takes ~100 ms of the loop).
OPENAPI: web.AppKey[dict[str, bytes]] = web.AppKey("openapi")
