"""Events: push (one or a batch), list and search, read, replay."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from taskyard.domain.auth import READERS, WRITERS
from taskyard.http.keys import ENGINE
from taskyard.http.routing import (
    METADATA_PAIRS,
    Call,
    Document,
    Router,
    metadata_filter,
    page_cursor,
)
from taskyard_sdk.models import (
    BatchEventRequest,
    BatchEventResponse,
    EventPage,
    EventRequest,
    EventView,
)

router = Router(tags=("events",))


class ListEventsQuery(BaseModel):
    key: list[str] = Field(default_factory=list, description="Exact keys, repeatable.")
    prefix: str | None = Field(default=None, description="Keys starting with this.")
    metadata: list[str] = Field(
        default_factory=list, description="key:value, repeatable", json_schema_extra=METADATA_PAIRS
    )
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = None


@router.post("/api/v1/events", roles=WRITERS, body=EventRequest, response=EventView, status=201)
async def push_event(call: Call[EventRequest]) -> EventView:
    """Push an event: stored, it triggers every workflow whose `on_events` matches its key (and
    whose `event_filter` holds) and wakes the steps waiting for it. `triggered` lists the
    workflow runs it started; an event that triggers nothing is still stored."""
    engine = call.request.app[ENGINE]
    [view] = await engine.services.events.push(call.principal.tenant_id, [call.body])
    return view


@router.post(
    "/api/v1/events/batch",
    roles=WRITERS,
    body=BatchEventRequest,
    response=BatchEventResponse,
    status=201,
)
async def push_events(call: Call[BatchEventRequest]) -> BatchEventResponse:
    """Push many events in one request (and one transaction)."""
    engine = call.request.app[ENGINE]
    views = await engine.services.events.push(call.principal.tenant_id, call.body.events)
    return BatchEventResponse(events=views)


@router.get("/api/v1/events", roles=READERS, query=ListEventsQuery, response=EventPage)
async def list_events(call: Call[None]) -> Document:
    """Stored events, newest first, by key, key prefix, metadata and time."""
    query: ListEventsQuery = call.query
    engine = call.request.app[ENGINE]
    rows = await engine.services.history.search_events(
        call.principal.tenant_id,
        keys=query.key,
        prefix=query.prefix,
        metadata=metadata_filter(query.metadata),
        since=query.since,
        until=query.until,
        before=page_cursor(query.cursor),
        limit=query.limit,
    )
    cursor = str(rows[-1]["event_id"]) if len(rows) == query.limit else None
    return Document({"events": rows, "next_cursor": cursor})


@router.get("/api/v1/events/{event_id}", roles=READERS, response=EventView)
async def get_event(call: Call[None]) -> EventView:
    history = call.request.app[ENGINE].services.history
    return await history.event(call.principal.tenant_id, call.path_uuid("event_id"))


@router.post("/api/v1/events/{event_id}/replay", roles=WRITERS, response=EventView, status=201)
async def replay_event(call: Call[None]) -> EventView:
    """Push a stored event again (a new event with `replay_of` set): it triggers and wakes as
    if it were new."""
    engine = call.request.app[ENGINE]
    return await engine.services.events.replay(call.principal.tenant_id, call.path_uuid("event_id"))
