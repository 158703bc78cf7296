"""`taskyard crons list|pause|resume`."""

from __future__ import annotations

import uuid

import click
from rich.text import Text

from taskyard.commands import output
from taskyard.commands.connection import engine_options, run
from taskyard.commands.output import json_option
from taskyard_sdk import CronView
from taskyard_sdk.models import CronList


@click.group()
def crons() -> None:
    """List, pause and resume crons on a running engine."""


@crons.command("list")
@json_option
@engine_options
def list_crons(as_json: bool) -> None:
    """Every cron: what it starts, when, and whether it is paused."""
    found = run(lambda client: client.crons.aio_list())
    if as_json:
        output.print_json(CronList(crons=found))
        return
    grid = output.table(
        "CRON", "NAME", "STARTS", "EXPRESSION", "TIMEZONE", "STATE", "NEXT FIRE", "LAST TICK"
    )
    for cron in found:
        output.row(
            grid,
            str(cron.cron_id),
            cron.name,
            _target(cron),
            cron.expression,
            cron.timezone,
            _state(cron),
            output.when(cron.next_fire_at),
            output.when(cron.last_tick),
        )
    output.show(grid, empty="no crons")


@crons.command("pause")
@click.argument("cron_id", type=click.UUID)
@json_option
@engine_options
def pause(cron_id: uuid.UUID, as_json: bool) -> None:
    """Stop a cron firing until it is resumed (ticks meanwhile are skipped)."""
    _changed(run(lambda client: client.crons.aio_pause(cron_id)), as_json)


@crons.command("resume")
@click.argument("cron_id", type=click.UUID)
@json_option
@engine_options
def resume(cron_id: uuid.UUID, as_json: bool) -> None:
    """Let a paused cron fire again, from its next tick."""
    _changed(run(lambda client: client.crons.aio_resume(cron_id)), as_json)


def _changed(cron: CronView, as_json: bool) -> None:
    if as_json:
        output.print_json(cron)
        return
    line = Text(f"cron {cron.cron_id} ({cron.name}) ")
    line.append_text(_state(cron))
    if not cron.paused and cron.next_fire_at:
        line.append(f"; next fire {output.when(cron.next_fire_at)}")
    output.render(line)


def _target(cron: CronView) -> str:
    return f"workflow {cron.workflow}" if cron.workflow else f"task {cron.task}"


def _state(cron: CronView) -> Text:
    return Text("paused", style="yellow") if cron.paused else Text("active", style="green")
