"""A third-party plugin in its own package: greets callers and counts engine starts.

Enable it with `taskyard engine --plugin hello`; then `GET /api/v1/hello` answers with the caller's
tenant name.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

from taskyard.plugins import Call, PluginHost, Role, Router, hookimpl

log = logging.getLogger(__name__)
started: list[str] = []  # engine URLs this plugin saw start, for the curious (and the tests)


class Greeting(BaseModel):
    hello: str
    role: Role


@hookimpl
def taskyard_routes(router: Router) -> None:
    @router.get("/api/v1/hello", roles=list(Role), response=Greeting)
    async def hello(call: Call[None]) -> Greeting:
        """Greet the calling tenant."""
        return Greeting(hello=call.principal.tenant_name, role=call.principal.role)


@hookimpl
async def taskyard_startup(host: PluginHost) -> None:
    started.append(host.url)
    log.info("hello plugin started on %s", host.url)
