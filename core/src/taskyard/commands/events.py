"""`taskyard events push|list|replay`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import click

from taskyard.commands import output
from taskyard.commands.connection import engine_options, run
from taskyard.commands.output import json_option
from taskyard.commands.params import json_input, metadata_option, page_options, time_options
from taskyard_sdk import EventPage, EventView, Taskyard


@click.group()
def events() -> None:
    """Push, search and replay events on a running engine."""


@events.command("push")
@click.argument("key")
@json_input("--payload", "The event's payload")
@metadata_option("A key:value to store with the event.")
@json_option
@engine_options
def push(key: str, payload: Any, metadata: dict[str, str] | None, as_json: bool) -> None:
    """Push an event (it triggers workflows and wakes waiting steps); print its id."""
    view = run(lambda client: client.events.aio_push(key, payload, metadata=metadata))
    _created(view, as_json)


@events.command("replay")
@click.argument("event_id", type=click.UUID)
@json_option
@engine_options
def replay(event_id: uuid.UUID, as_json: bool) -> None:
    """Push a stored event again, as if it were new; print the new event's id."""
    _created(run(lambda client: client.events.aio_replay(event_id)), as_json)


@events.command("list")
@click.option("--key", "keys", multiple=True, help="An exact key. Repeatable.")
@click.option("--prefix", help="Keys that start with this.")
@time_options("Pushed")
@metadata_option("A key:value the event's metadata holds.")
@page_options
@json_option
@engine_options
def list_events(
    keys: tuple[str, ...],
    prefix: str | None,
    since: datetime | None,
    until: datetime | None,
    metadata: dict[str, str] | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Stored events, newest first, filtered as GET /api/v1/events filters them."""

    async def fetch(client: Taskyard) -> EventPage:
        return await client.events.aio_list(
            key=keys,
            prefix=prefix,
            since=since,
            until=until,
            metadata=metadata,
            limit=limit,
            cursor=cursor,
        )

    page = run(fetch)
    if as_json:
        output.print_json(page)
        return
    grid = output.table("EVENT", "KEY", "CREATED", "TRIGGERED", "METADATA", "PAYLOAD")
    for event in page.events:
        triggered = str(len(event.triggered)) if event.triggered else ""
        output.row(
            grid,
            str(event.event_id),
            event.key,
            output.when(event.created_at),
            triggered,
            output.compact(output.pairs(event.metadata)),
            output.compact(event.payload),
        )
    output.show(grid, empty="no events match")
    if page.next_cursor:
        output.note(f"more: add --cursor {page.next_cursor}")


def _created(view: EventView, as_json: bool) -> None:
    if as_json:
        output.print_json(view)
        return
    click.echo(str(view.event_id))
    # On stderr, so that `EVENT=$(taskyard events push ...)` holds the id alone.
    if view.triggered:
        output.note(
            f"triggered {len(view.triggered)} workflow run(s): "
            f"{', '.join(map(str, view.triggered))}"
        )
    else:
        output.note("triggered no workflow run")
