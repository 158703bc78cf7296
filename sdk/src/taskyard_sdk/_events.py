"""Events: push them (they trigger workflows and wake waiting steps), list, read and replay."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic_core import to_jsonable_python

from taskyard_sdk import outbox
from taskyard_sdk._transport import run_sync
from taskyard_sdk.models import BatchEventResponse, EventPage, EventRequest, EventView

if TYPE_CHECKING:
    from taskyard_sdk._client import Taskyard


class Events:
    """`ty.events.push("user:create", {"user_id": 7})`, and `aio_` variants of everything."""

    def __init__(self, client: Taskyard) -> None:
        self._client = client

    async def aio_push(
        self, key: str, payload: Any = None, *, metadata: dict[str, str] | None = None
    ) -> EventView:
        """Store an event; returns it with the workflow runs it triggered (`triggered`)."""
        data = await self._client.transport.request(
            "POST", "/api/v1/events", json_body=_request(key, payload, metadata)
        )
        return EventView.model_validate(data)

    async def aio_push_many(
        self, events: Sequence[EventRequest | dict[str, Any]]
    ) -> list[EventView]:
        """Many events in one request: `EventRequest`s or dicts with key, payload, metadata."""
        body = [
            _request(e.key, e.payload, e.metadata)
            if isinstance(e, EventRequest)
            else _request(e["key"], e.get("payload"), e.get("metadata"))
            for e in events
        ]
        data = await self._client.transport.request(
            "POST", "/api/v1/events/batch", json_body={"events": body}
        )
        return BatchEventResponse.model_validate(data).events

    async def aio_push_in(
        self, conn: Any, key: str, payload: Any = None, *, metadata: dict[str, str] | None = None
    ) -> UUID:
        """Push an event in the transaction open on `conn` (asyncpg, psycopg AsyncConnection,
        SQLAlchemy AsyncSession or AsyncConnection): it exists, and triggers and wakes what it
        matches, if and only if that transaction commits. Returns the event's id."""
        row = outbox.new_row("event", key, EventRequest, _request(key, payload, metadata))
        await outbox.aio_write(conn, [row])
        return row.id

    def push_in(
        self, conn: Any, key: str, payload: Any = None, *, metadata: dict[str, str] | None = None
    ) -> UUID:
        """`aio_push_in` through a sync connection (psycopg, SQLAlchemy Session or Connection)."""
        row = outbox.new_row("event", key, EventRequest, _request(key, payload, metadata))
        outbox.write(conn, [row])
        return row.id

    async def aio_get(self, event_id: UUID | str) -> EventView:
        data = await self._client.transport.request("GET", f"/api/v1/events/{event_id}")
        return EventView.model_validate(data)

    async def aio_replay(self, event_id: UUID | str) -> EventView:
        """Push a stored event again: it triggers and wakes as if it were new."""
        data = await self._client.transport.request("POST", f"/api/v1/events/{event_id}/replay")
        return EventView.model_validate(data)

    async def aio_list(
        self,
        *,
        key: Sequence[str] = (),
        prefix: str | None = None,
        metadata: dict[str, str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> EventPage:
        params: list[tuple[str, str]] = [("limit", str(limit))]
        params += [("key", k) for k in key]
        params += [("metadata", f"{k}:{v}") for k, v in (metadata or {}).items()]
        if prefix is not None:
            params.append(("prefix", prefix))
        if since is not None:
            params.append(("since", since.isoformat()))
        if until is not None:
            params.append(("until", until.isoformat()))
        if cursor is not None:
            params.append(("cursor", cursor))
        data = await self._client.transport.request("GET", "/api/v1/events", params=params)
        return EventPage.model_validate(data)

    def push(
        self, key: str, payload: Any = None, *, metadata: dict[str, str] | None = None
    ) -> EventView:
        return run_sync(self.aio_push(key, payload, metadata=metadata))

    def push_many(self, events: Sequence[EventRequest | dict[str, Any]]) -> list[EventView]:
        return run_sync(self.aio_push_many(events))

    def get(self, event_id: UUID | str) -> EventView:
        return run_sync(self.aio_get(event_id))

    def replay(self, event_id: UUID | str) -> EventView:
        return run_sync(self.aio_replay(event_id))

    def list(self, **filters: Any) -> EventPage:
        return run_sync(self.aio_list(**filters))


def _request(key: str, payload: Any, metadata: dict[str, str] | None) -> dict[str, Any]:
    request: dict[str, Any] = {"key": key, "payload": to_jsonable_python(payload)}
    if metadata:
        request["metadata"] = metadata
    return request
