"""The events pages: stored events by key prefix, an event's payload and the runs it
triggered, and replaying it."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from taskyard.domain.auth import Principal
from taskyard.http.dashboard.page import PAGE_SIZE, ROOT, page, path_id, render
from taskyard.http.keys import ENGINE
from taskyard.http.routing import page_cursor


def add_routes(routes: web.UrlDispatcher) -> None:
    routes.add_get(f"{ROOT}/events", page(_events))
    routes.add_get(f"{ROOT}/events/{{event_id}}", page(_event))
    routes.add_post(f"{ROOT}/events/{{event_id}}/replay", page(_replay_event, changes=True))


async def _events(request: web.Request, principal: Principal) -> web.StreamResponse:
    """Stored events, newest first, by key prefix, keyset-paged."""
    prefix = request.query.get("prefix", "").strip()
    cursor = request.query.get("cursor") or None
    rows = await request.app[ENGINE].services.history.search_events(
        principal.tenant_id,
        keys=[],
        prefix=prefix or None,
        metadata={},
        since=None,
        until=None,
        before=page_cursor(cursor),
        limit=PAGE_SIZE,
    )
    older = None
    if len(rows) == PAGE_SIZE:
        older = urlencode({"prefix": prefix, "cursor": str(rows[-1]["event_id"])})
    return render(request, "events.html", events=rows, prefix=prefix, older=older, cursor=cursor)


async def _event(request: web.Request, principal: Principal) -> web.StreamResponse:
    event_id = path_id(request, "event_id")
    event = await request.app[ENGINE].services.history.event(principal.tenant_id, event_id)
    return render(request, "event.html", event=event)


async def _replay_event(request: web.Request, principal: Principal) -> web.StreamResponse:
    event_id = path_id(request, "event_id")
    pushed = await request.app[ENGINE].services.events.replay(principal.tenant_id, event_id)
    raise web.HTTPSeeOther(f"{ROOT}/events/{pushed.event_id}")
