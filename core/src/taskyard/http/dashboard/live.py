"""Server-sent events that make the pages live: `changed` when the tenant's runs changed."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from taskyard.domain.auth import Principal
from taskyard.http.dashboard.page import ROOT, page
from taskyard.http.keys import ENGINE

LIVE_EVERY = 0.5  # seconds: at most two refreshes a second, however busy the tenant is
KEEPALIVE = 15.0  # seconds between comments on an idle live stream (proxies close silent ones)


def add_routes(routes: web.UrlDispatcher) -> None:
    routes.add_get(f"{ROOT}/live", page(_live))


async def _live(request: web.Request, principal: Principal) -> web.StreamResponse:
    """Server-sent events: `changed` whenever the tenant's runs changed (at most every
    LIVE_EVERY seconds), for as long as the page is open."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    with (
        request.app[ENGINE].services.runs.watch(principal.tenant_id) as changed,
        contextlib.suppress(ConnectionResetError),
    ):
        # What changed between the page's rendering and this watch has sent no event: the
        # page looks again once now, and is told of every change from here on.
        await response.write(b"event: changed\ndata: runs\n\n")
        quiet = 0.0
        while request.transport is not None and not request.transport.is_closing():
            try:
                # Woken every second at least: aiohttp does not cancel a handler whose client
                # went away, and a watch nobody reads must end.
                await asyncio.wait_for(changed.wait(), 1.0)
            except TimeoutError:
                quiet += 1.0
                if quiet >= KEEPALIVE:
                    await response.write(b": still here\n\n")
                    quiet = 0.0
                continue
            changed.clear()
            await response.write(b"event: changed\ndata: runs\n\n")
            await asyncio.sleep(LIVE_EVERY)
            quiet = LIVE_EVERY
    return response
