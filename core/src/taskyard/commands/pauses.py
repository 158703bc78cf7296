"""`taskyard pause|resume queue|task|workflow|worker NAME` and `taskyard paused`."""

from __future__ import annotations

import click
from rich.text import Text

from taskyard.commands import output
from taskyard.commands.connection import engine_options, run
from taskyard.commands.output import json_option
from taskyard_sdk import PauseKind, PauseView
from taskyard_sdk.models import PauseList

_KIND = click.Choice([kind.value for kind in PauseKind])


@click.command()
@click.argument("kind", type=_KIND)
@click.argument("name")
@click.option("--reason", help="Why, for whoever looks later.")
@json_option
@engine_options
def pause(kind: str, name: str, reason: str | None, as_json: bool) -> None:
    """Pause a queue, a task, a workflow or a worker (by id): nothing new of it is assigned,
    running attempts finish, triggers still go in and wait. Survives engine restarts."""
    target = {kind: name}
    _changed(run(lambda client: client.pauses.aio_pause(**target, reason=reason)), as_json)


@click.command()
@click.argument("kind", type=_KIND)
@click.argument("name")
@json_option
@engine_options
def resume(kind: str, name: str, as_json: bool) -> None:
    """Resume what was paused: what waited for it starts at once."""
    target = {kind: name}
    _changed(run(lambda client: client.pauses.aio_resume(**target)), as_json)


@click.command()
@json_option
@engine_options
def paused(as_json: bool) -> None:
    """What is paused, since when and why."""
    found = run(lambda client: client.pauses.aio_list())
    if as_json:
        output.print_json(PauseList(paused=found))
        return
    grid = output.table("KIND", "NAME", "SINCE", "REASON")
    for view in found:
        output.row(grid, view.kind.value, view.name, output.when(view.paused_at), view.reason)
    output.show(grid, empty="nothing is paused")


def _changed(view: PauseView, as_json: bool) -> None:
    if as_json:
        output.print_json(view)
        return
    line = Text(f"{view.kind.value} {view.name} ")
    line.append(*(("paused", "yellow") if view.paused else ("resumed", "green")))
    output.render(line)
